"""train-lesions on the shared local Ray cluster: Ray Train V2 run on synthetic lesions, model directory with
its lesion kinds, exported encoder that loads into a fresh encoder, per-lesion validation metrics, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dr_ray.config import load_config


def _cfg(out: Path, epochs: int):
    return load_config(None, [
        f"output.dir={out}",
        "train_lesions.synthetic_images=4",
        "train_lesions.synthetic_size=128",
        "train_lesions.image_size=128",
        "train_lesions.patch_size=64",
        "train_lesions.patches_per_image=4",
        "train_lesions.val_patches_per_image=4",
        "train_lesions.batch_size=4",
        "train_lesions.encoder=resnet18",
        f"train_lesions.epochs={epochs}",
        "train_lesions.val_fraction=0.25",
    ])


@pytest.mark.ray
@pytest.mark.slow
def test_run_train_lesions_writes_model_encoder_metrics_and_resumes(ray_cluster, tmp_path):
    from dr_ray.models import load_model_dir
    from dr_ray.models.transfer import build_encoder, encoder_state_dict, load_encoder, load_encoder_file
    from dr_ray.pipelines.train_lesions import run_train_lesions

    first = run_train_lesions(_cfg(tmp_path, epochs=2))
    stage = tmp_path / "train_lesions"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(h["train_steps"] == 3 for h in metrics["history"])  # 3 training images x 4 patches / 4
    assert len(metrics["train_images"]) == 3 and len(metrics["val_images"]) == 1
    last = metrics["history"][-1]
    for kind in ("ma", "he", "ex", "se"):
        assert f"val_aupr_{kind}" in last and f"val_dice_{kind}" in last
    assert last["val_aupr_mean"] is None or 0.0 <= last["val_aupr_mean"] <= 1.0
    assert metrics == {k: v for k, v in first.items() if k != "metrics_path"}

    model, meta = load_model_dir(stage / "model")
    assert meta["spec"]["kwargs"]["lesion_kinds"] == ["ma", "he", "ex", "se"]
    assert meta["spec"]["output"] == "sigmoid" and meta["extra"]["epoch"] == 2
    # the exported encoder loads into a fresh encoder with the segmentation model's weights
    state, info = load_encoder_file(stage / "encoder.pt")
    fresh = build_encoder(info)
    load_encoder(fresh, state)
    ref = encoder_state_dict(model)
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
    x = torch.randn(1, 3, 64, 64)
    fresh.eval()
    with torch.inference_mode():
        for a, b in zip(fresh(x), model.encoder(x)):
            assert torch.equal(a, b)

    # resume: the same name with more epochs continues after epoch 2
    again = run_train_lesions(_cfg(tmp_path, epochs=3))
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    assert again["history"][-1]["start_epoch"] == 2
