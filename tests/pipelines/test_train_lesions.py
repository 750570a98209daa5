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
        assert f"val_iou_{kind}" in last and f"val_precision_{kind}" in last
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


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_training_resumes(tmp_path):
    """The Ray Train worker dies (os._exit) when it starts epoch 3, once: FailureConfig replaces it, the new worker
    resumes from the latest registered checkpoint, and the job finishes all epochs."""
    import os
    import subprocess
    import sys

    from dr_ray.faults import FAULT_ENV, FAULT_ONCE_ENV

    repo = Path(__file__).resolve().parents[2]
    once = tmp_path / "fault_fired"
    env = {**os.environ, FAULT_ENV: "train_lesions:epoch_3:exit", FAULT_ONCE_ENV: str(once),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, str(repo / "jobs" / "train_lesions.py"), "--smoke-test", "--set", f"output.dir={tmp_path}",
           "--set", "train_lesions.epochs=4", "--set", "ray.num_cpus=2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert once.exists(), "the fault never fired"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "train_lesions_smoke" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]  # every epoch once, in order
    # The replacement resumed from a checkpoint, not from scratch. Ray Train V2 registers a reported checkpoint
    # asynchronously, so the one reported just before the crash (epoch 2) may not be registered yet: measured,
    # the replacement restarts after epoch 1 and redoes epoch 2 (its entry is then the replacement's).
    assert metrics["history"][0]["start_epoch"] == 0
    assert metrics["history"][-1]["start_epoch"] in (1, 2)
