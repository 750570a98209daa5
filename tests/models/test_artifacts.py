"""Saved model directories: round trip, tamper detection, metadata contents, weights_only loading."""

from __future__ import annotations

import json

import pytest
import torch

from dr_ray.models import artifact_hash, create_model, load_model_dir, save_model_dir
from dr_ray.models import artifacts

TINY = dict(encoder="resnet18", classes=2, decoder_channels=(16, 8, 8, 8, 8), input_size=64)
CALLS: list[str] = []


def _record(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this runs ``_record`` - what a malicious model.pt would do."""

    def __reduce__(self):
        return (_record, ("payload executed",))


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    m = create_model("unet", **TINY)
    # move BN running stats and weights away from their init so that a failed load would show
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(2, 3, 64, 64))
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.eval()
    d = save_model_dir(m, tmp_path / "model", config={"train": {"lr": 0.01}, "seed": 0},
                       train_data_hash="abc123", extra={"val_dice": 0.5})
    return m, d


def test_round_trip_identical_outputs(trained):
    m, d = trained
    loaded, meta = load_model_dir(d)
    assert not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    assert loaded.spec == m.spec


def test_metadata_contents(trained):
    m, d = trained
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["spec"] == m.spec.to_dict()
    assert meta["spec"]["input_size"] == 64 and len(meta["spec"]["mean"]) == 3
    assert meta["config"] == {"train": {"lr": 0.01}, "seed": 0}
    assert "git_sha" in meta and (meta["git_sha"] is None or len(meta["git_sha"]) == 40)
    assert meta["versions"]["torch"] == torch.__version__ and "timm" in meta["versions"]
    assert meta["train_data_hash"] == "abc123"
    assert meta["extra"] == {"val_dice": 0.5}
    assert meta["created_utc"].endswith("+00:00")
    assert meta["model_sha256"].startswith(artifact_hash(d)) and len(artifact_hash(d)) == 12


def test_git_sha_none_outside_checkout(trained, tmp_path, monkeypatch):
    m, _ = trained
    monkeypatch.setattr(artifacts, "_REPO_DIR", tmp_path)  # not a git checkout
    d = save_model_dir(m, tmp_path / "nogit", config={}, train_data_hash=None)
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["git_sha"] is None and meta["train_data_hash"] is None


def test_existing_directory_not_overwritten(trained):
    m, d = trained
    with pytest.raises(FileExistsError):
        save_model_dir(m, d, config={}, train_data_hash=None)
    save_model_dir(m, d, config={"v": 2}, train_data_hash=None, overwrite=True)
    assert json.loads((d / "metadata.json").read_text())["config"] == {"v": 2}


def test_tampered_weights_refused(trained):
    _, d = trained
    before = artifact_hash(d)
    state = torch.load(d / "model.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1
    torch.save(state, d / "model.pt")
    assert artifact_hash(d) != before
    with pytest.raises(ValueError, match="model.pt.*sha256"):
        load_model_dir(d)


def _replace_weights(d, obj):
    torch.save(obj, d / "model.pt")
    meta = json.loads((d / "metadata.json").read_text())
    meta["model_sha256"] = artifacts.file_sha256(d / "model.pt")  # hash matches: only weights_only can refuse it
    (d / "metadata.json").write_text(json.dumps(meta))


def test_pickled_object_refused_by_weights_only(trained):
    _, d = trained
    state = torch.load(d / "model.pt", weights_only=True)
    state["evil"] = Payload()
    _replace_weights(d, state)
    CALLS.clear()
    with pytest.raises(ValueError, match="weights_only"):
        load_model_dir(d)
    assert CALLS == []  # the payload never ran
    # the same file loads (and runs the payload) without weights_only: the refusal came from weights_only
    torch.load(d / "model.pt", weights_only=False)
    assert CALLS == ["payload executed"]


def test_missing_and_unexpected_keys_reported(trained):
    _, d = trained
    state = torch.load(d / "model.pt", weights_only=True)
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    _replace_weights(d, state)
    with pytest.raises(ValueError, match="missing keys \\['head.weight'\\].*unexpected keys \\['extra.weight'\\]"):
        load_model_dir(d)


def test_save_requires_spec_and_json_config(tmp_path):
    with pytest.raises(ValueError, match="ModelSpec"):
        save_model_dir(torch.nn.Linear(2, 2), tmp_path / "a", config={}, train_data_hash=None)
    m = create_model("unet", **TINY)
    with pytest.raises(TypeError):
        save_model_dir(m, tmp_path / "b", config={"x": object()}, train_data_hash=None)
    assert not (tmp_path / "b" / "model.pt").exists()
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_model_dir(tmp_path)
