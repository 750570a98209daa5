"""Encoder transfer: the exported segmentation encoder reproduces its features in a fresh timm model, the file
round-trips with its sidecar, and mismatched targets fail with a clear message."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from dr_ray.models import (
    build_encoder,
    create_model,
    encoder_info,
    encoder_state_dict,
    load_encoder,
    load_encoder_file,
    save_encoder,
)
from dr_ray.models.transfer import state_dict_sha256

SWIN_SMALL = dict(input_size=64, window_size=4, decoder_channels=(32, 16, 16, 8, 8), stem_channels=(8, 8))
UNET_SMALL = dict(input_size=64, decoder_channels=(32, 16, 16, 8, 8))


def _trained_like(name: str, kw: dict) -> torch.nn.Module:
    """A model whose encoder differs from any fresh init (weights perturbed, BN statistics updated)."""
    torch.manual_seed(0)
    m = create_model(name, **kw)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        m.train()
        m(torch.randn(4, 3, 64, 64) * 2 + 1)
    return m.eval()


@pytest.mark.parametrize("name,kw,timm_kw", [
    ("swin_unet", SWIN_SMALL, {"img_size": 64, "window_size": 4}),
    ("lesion_unet", UNET_SMALL, {}),
])
def test_exported_encoder_reproduces_features_in_fresh_timm_model(name, kw, timm_kw):
    m = _trained_like(name, kw)
    info = encoder_info(m)
    assert info["encoder"] == m.spec.kwargs["encoder"] and info["input_size"] == 64
    assert info["timm_kwargs"] == {"in_chans": 3, **timm_kw}
    fresh = timm.create_model(info["encoder"], features_only=True, pretrained=False, **info["timm_kwargs"]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.encoder(x)
        before = fresh(x)
        assert not torch.allclose(before[-1], ref[-1])
        report = load_encoder(fresh, encoder_state_dict(m))
        after = fresh(x)
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.renaming == "none"
    assert len(after) == len(ref) == len(info["feature_reductions"])
    for a, r in zip(after, ref):
        assert torch.equal(a, r)


def test_save_and_load_encoder_file_round_trip(tmp_path):
    m = _trained_like("swin_unet", SWIN_SMALL)
    path = save_encoder(m, tmp_path / "enc.pt")
    side = json.loads((tmp_path / "enc.json").read_text())
    assert side["encoder"] == "swin_tiny_patch4_window7_224" and side["input_size"] == 64
    assert side["source_model"] == "swin_unet" and side["source_model_hash"] == state_dict_sha256(m)
    assert side["feature_reductions"] == [4, 8, 16, 32] and side["mean"] == list(m.spec.mean)
    state, meta = load_encoder_file(path)
    assert meta == side
    fresh = build_encoder(meta).eval()
    load_encoder(fresh, state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x)[-1], m.encoder(x)[-1])
    with pytest.raises(FileExistsError):
        save_encoder(m, path)
    assert save_encoder(m, path, source_model_hash="abc", overwrite=True) == path
    assert load_encoder_file(path)[1]["source_model_hash"] == "abc"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        load_encoder_file(path)
    with pytest.raises(ValueError, match=r"\.pt file"):
        save_encoder(m, tmp_path / "enc.bin")


def test_mismatched_architecture_raises_clearly():
    state = encoder_state_dict(create_model("swin_unet", **SWIN_SMALL))
    resnet = timm.create_model("resnet34", features_only=True, pretrained=False)
    with pytest.raises(ValueError, match=r"resnet34\): no key in common"):
        load_encoder(resnet, state)
    # same Swin-T at another window / input size: relative-position tables differ in shape
    swin224 = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, pretrained=False)
    with pytest.raises(ValueError, match=r"differ in shape .*relative_position_bias_table"):
        load_encoder(swin224, state)
    # a resnet34 encoder into a resnet18 one: missing/unexpected keys listed
    r34 = encoder_state_dict(create_model("lesion_unet", **UNET_SMALL))
    r18 = timm.create_model("resnet18", features_only=True, pretrained=False)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1\.2\."):
        load_encoder(r18, r34)


def test_load_into_plain_timm_classifier_reports_its_own_keys():
    """The classifier branch may be the plain timm model: timm's layers_0 -> layers.0 renaming is undone,
    strict=True names the head/norm it lacks, strict=False loads the rest."""
    m = _trained_like("swin_unet", SWIN_SMALL)
    state = encoder_state_dict(m)
    clf = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                            num_classes=2)
    with pytest.raises(ValueError, match=r"strict=True.*missing keys \['head\.fc\.bias', 'head\.fc\.weight', "
                                         r"'norm\.bias', 'norm\.weight'\]"):
        load_encoder(clf, state)
    report = load_encoder(clf, state, strict=False)
    assert report.renaming == "feature_net_to_model" and report.unexpected_keys == []
    assert report.missing_keys == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    clf.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # the plain model's stage outputs equal the segmentation encoder's features
        y = clf.patch_embed(x)
        for layer, ref in zip(clf.layers, m.encoder(x)):
            y = layer(y)
            assert torch.equal(y, ref)


def test_model_without_encoder_is_refused():
    with pytest.raises(ValueError, match="no timm features_only .encoder"):
        encoder_state_dict(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dict of tensors"):
        load_encoder(torch.nn.Linear(2, 2), {"weight": [1.0]})
