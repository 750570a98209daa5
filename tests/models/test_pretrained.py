"""Backbone weights from files (dr_ray.models.pretrained): weight files are built here from tiny timm models (no
network), loaded through ``create_model(..., pretrained_file=...)`` and compared tensor by tensor."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import timm
import torch
from safetensors.torch import save_file

from dr_ray.config import ConfigError
from dr_ray.config.schema import TrainConfig, TrainLesionsConfig, TrainVesselsConfig
from dr_ray.models import create_model, load_model_dir, read_metadata, save_model_dir
from dr_ray.models import pretrained as P

# a 2-stage Swin small enough to build in ~0.1 s; same key layout as swin_tiny (layers.N. / layers_N.)
TINY_SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clone(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def vit_state() -> dict:
    """State dict of a headless timm vit_tiny_patch16_224 (random init, seeded)."""
    torch.manual_seed(0)
    return _clone(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict())


def _mae_file(tmp_path: Path, vit_state: dict, *, final_norm: str = "norm") -> Path:
    """The RETFound / MAE checkpoint layout: {"model": encoder + decoder_* + mask_token, "epoch": ...}."""
    state = dict(vit_state)
    if final_norm == "fc_norm":
        state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    state["mask_token"] = torch.zeros(1, 1, 128)
    state["decoder_embed.weight"] = torch.randn(128, 192)
    state["decoder_pos_embed"] = torch.randn(1, 197, 128)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.randn(384, 128)
    state["decoder_norm.weight"] = torch.ones(128)
    state["decoder_pred.weight"] = torch.randn(768, 128)
    path = tmp_path / "RETFound_tiny.pth"
    torch.save({"model": state, "epoch": 799}, path)
    return path


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> tuple[Path, dict]:
    """A timm resnet18 as a safetensors file (with its 1000-class fc head, as on the hub)."""
    torch.manual_seed(1)
    sd = _clone(timm.create_model("resnet18", pretrained=False).state_dict())
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(sd, str(path))
    return path, sd


@pytest.mark.parametrize("final_norm", ["norm", "fc_norm"])
def test_retfound_mae_layout_loads_into_timm_vit(tmp_path, vit_state, final_norm):
    path = _mae_file(tmp_path, vit_state, final_norm=final_norm)
    model = create_model("timm_classifier", backbone="vit_tiny_patch16_224", input_size=224, pretrained_file=str(path))
    loaded = model.image_encoder.state_dict()
    assert set(loaded) == set(vit_state)
    for k, v in vit_state.items():
        assert torch.equal(loaded[k], v), k
    info = model.pretrained_file_info
    assert info["sha256"] == _sha256(path) and info["file"] == str(path)
    assert info["architecture"] == "vit_tiny_patch16_224" and info["module"] == "image_encoder"
    assert info["loaded_tensors"] == len(vit_state) and info["file_tensors"] == len(vit_state) + 6
    assert any("MAE layout: dropped 6" in n for n in info["notes"])


def test_mae_encoder_at_another_input_size_resamples_position_table(tmp_path, vit_state):
    path = _mae_file(tmp_path, vit_state)
    model = create_model("vit_b", backbone="vit_tiny_patch16_224", input_size=256, pretrained_file=str(path))
    enc = model.image_encoder.state_dict()
    assert enc["pos_embed"].shape == (1, 1 + 16 * 16, 192)  # 14x14 grid resampled by timm's filter to 16x16
    assert torch.equal(enc["pos_embed"][:, 0], vit_state["pos_embed"][:, 0])  # class-token position kept
    for k in ("cls_token", "patch_embed.proj.weight", "blocks.11.mlp.fc2.weight", "norm.weight"):
        assert torch.equal(enc[k], vit_state[k]), k


def test_safetensors_into_unet_encoder_and_metadata_sha256(tmp_path, resnet_file):
    path, sd = resnet_file
    model = create_model("vessel_unet", input_size=64, pretrained_file=str(path))
    enc = model.encoder.state_dict()
    assert len(enc) == len(sd) - 2  # all but fc.weight / fc.bias
    for k, v in enc.items():
        assert torch.equal(v, sd[k]), k
    assert "dropped classifier ['fc.bias', 'fc.weight']" in model.pretrained_file_info["notes"]
    out = save_model_dir(model, tmp_path / "m", config={}, train_data_hash=None)
    meta = read_metadata(out)
    assert meta["pretrained_file"]["sha256"] == _sha256(path)
    assert meta["pretrained_file"]["format"] == "safetensors"
    again, _ = load_model_dir(out)  # the artifact rebuilds without the file (weights come from model.pt)
    assert torch.equal(again.encoder.state_dict()["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert "pretrained_file" not in meta["spec"]["kwargs"]


def test_one_channel_encoder_gets_timm_adapted_stem(resnet_file):
    path, sd = resnet_file
    model = create_model("unet", encoder="resnet18", in_chans=1, input_size=64, pretrained_file=str(path))
    # timm.models.adapt_input_conv for 1 channel sums the RGB filters
    assert torch.allclose(model.encoder.state_dict()["conv1.weight"], sd["conv1.weight"].sum(dim=1, keepdim=True))


def test_swin_feature_net_keys_are_renamed(tmp_path):
    torch.manual_seed(2)
    plain = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=224, **TINY_SWIN)
    sd = _clone(plain.state_dict())
    path = tmp_path / "swin.safetensors"
    save_file(sd, str(path))
    model = create_model("swin_unet", input_size=224, encoder_kwargs=dict(TINY_SWIN), pretrained_file=str(path))
    enc = model.encoder.state_dict()
    assert any(k.startswith("layers_0.") for k in enc)  # timm's feature net naming differs from the file's
    for k, v in enc.items():
        assert torch.equal(v, sd[k.replace("layers_", "layers.", 1)]), k


def test_wrong_shapes_name_the_file_and_the_first_keys(tmp_path):
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, embed_dim=96, num_heads=3)
    path = tmp_path / "other_vit.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(ValueError) as e:
        create_model("timm_classifier", backbone="vit_tiny_patch16_224", input_size=224, pretrained_file=str(path))
    msg = str(e.value)
    assert str(path) in msg and "differ in shape" in msg and "vit_tiny_patch16_224" in msg
    assert "blocks.0.attn.proj.bias: (96,) vs (192,)" in msg


def test_missing_and_foreign_keys_name_the_file_and_the_keys(tmp_path, resnet_file):
    _, sd = resnet_file
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    partial["projector.0.weight"] = torch.zeros(4, 4)  # e.g. a self-supervised projection head
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": partial}, path)
    with pytest.raises(ValueError) as e:
        create_model("vessel_unet", input_size=64, pretrained_file=str(path))
    msg = str(e.value)
    assert str(path) in msg and "TimmUNet.encoder (resnet18)" in msg
    assert "missing from the file: ['layer4.0.bn1.bias'" in msg
    assert "do not belong to the model: ['projector.0.weight']" in msg


def test_missing_file_is_one_clear_error(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=f"pretrained_file {path}: file not found"):
        create_model("vessel_unet", input_size=64, pretrained_file=str(path))
    with pytest.raises(IsADirectoryError, match="not a file"):
        P.read_weight_file(str(tmp_path))


def test_corrupt_files_are_one_clear_error(tmp_path, resnet_file):
    src, sd = resnet_file
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(src.read_bytes()[: 5000])
    torn = tmp_path / "torn.pth"
    torch.save(sd, torn)
    torn.write_bytes(torn.read_bytes()[: 3000])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(2048))
    for path in (truncated, torn, noise):
        with pytest.raises(ValueError, match=f"pretrained_file {path}: cannot read it as a"):
            P.read_weight_file(str(path))


class _Payload:  # anything weights_only=True must refuse to unpickle
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_and_non_tensor_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f)
    with pytest.raises(ValueError, match=f"pretrained_file {evil}: cannot read it as a torch weight file"):
        P.read_weight_file(str(evil))
    odd = tmp_path / "odd.pth"
    torch.save({"weights": [1, 2, 3], "conv1.weight": torch.zeros(1)}, odd)
    with pytest.raises(ValueError, match=r"entries \['weights'\] are not tensors"):
        P.read_weight_file(str(odd))


def test_uri_is_streamed_to_a_temporary_file(tmp_path, resnet_file, monkeypatch):
    src, sd = resnet_file
    real_resolve = P.fs.resolve

    def fake_resolve(path):  # s3://bucket/... served by the local filesystem
        if path.startswith("s3://bucket/"):
            return pafs.LocalFileSystem(), str(src.parent / path[len("s3://bucket/"):])
        return real_resolve(path)

    monkeypatch.setattr(P.fs, "resolve", fake_resolve)
    made: list[str] = []
    real_mkstemp = P.tempfile.mkstemp

    def spy_mkstemp(**kw):
        fd, name = real_mkstemp(**kw)
        made.append(name)
        return fd, name

    monkeypatch.setattr(P.tempfile, "mkstemp", spy_mkstemp)
    state, wf = P.read_weight_file(f"s3://bucket/{src.name}")
    assert wf.sha256 == _sha256(src) and wf.size_bytes == src.stat().st_size and wf.format == "safetensors"
    assert torch.equal(state["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert made and made[0].endswith(".safetensors") and not os.path.exists(made[0])  # removed after reading


def test_mark_records_the_file_without_loading_it(tmp_path, resnet_file):
    path, sd = resnet_file
    wf = P.check_weight_file(str(path))
    model = P.mark_pretrained_file(create_model("vessel_unet", input_size=64), wf)
    assert not torch.equal(model.encoder.state_dict()["conv1.weight"], sd["conv1.weight"])
    meta = read_metadata(save_model_dir(model, tmp_path / "m", config={}, train_data_hash=None))
    assert meta["pretrained_file"]["sha256"] == _sha256(path) and meta["pretrained_file"]["module"] == "encoder"
    assert json.loads(json.dumps(meta))["pretrained_file"]["file"] == str(path)


def test_model_without_backbone_and_conflicting_options():
    with pytest.raises(ValueError, match="no timm backbone"):
        P.backbone_of(create_model("graph_fusion", modalities=["graph", "stats"]))
    with pytest.raises(ValueError, match="pretrained=True .* or pretrained_file="):
        create_model("vessel_unet", pretrained=True, pretrained_file="x.safetensors")
    for cfg in (TrainConfig, TrainVesselsConfig, TrainLesionsConfig):
        with pytest.raises(ConfigError, match=r"pretrained_file='w.pth': set either .*pretrained \(hub download\)"):
            cfg(pretrained=True, pretrained_file="w.pth")
    with pytest.raises(ConfigError, match="image_encoder_init"):
        TrainConfig(pretrained_file="w.pth", image_encoder_init="enc.pt")
