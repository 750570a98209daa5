"""train-vessels on the shared local Ray cluster: Ray Train V2 run, model directory, metrics, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dr_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(out: Path, epochs: int):
    return load_config(None, [
        f"output.dir={out}",
        "train_vessels.synthetic_images=4",
        "train_vessels.synthetic_size=128",
        "train_vessels.patch_size=64",
        "train_vessels.patches_per_image=4",
        "train_vessels.batch_size=4",
        "train_vessels.decoder_channels=[64, 32, 16, 16, 8]",
        f"train_vessels.epochs={epochs}",
        "train_vessels.num_workers=1",
        "train_vessels.use_gpu=false",
        "train_vessels.val_fraction=0.25",
    ])


@pytest.mark.ray
@pytest.mark.slow
def test_run_train_vessels_writes_model_metrics_checkpoints_and_resumes(ray_cluster, tmp_path):
    from dr_ray.models import load_model_dir
    from dr_ray.pipelines.train_vessels import run_train_vessels, vessel_records
    from dr_ray.training import evaluate_vessels, load_vessel_images, predict_image, split_by_patient

    cfg = _cfg(tmp_path, epochs=2)
    first = run_train_vessels(cfg)
    stage = tmp_path / "train_vessels"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert [h["start_epoch"] for h in metrics["history"]] == [0, 0]
    assert all(h["train_steps"] == 3 for h in metrics["history"])  # 3 training images x 4 patches / 4
    assert len(metrics["train_images"]) == 3 and len(metrics["val_images"]) == 1
    assert metrics == {k: v for k, v in first.items() if k != "metrics_path"}
    run_dir = stage / "ray" / "run"
    checkpoints = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert checkpoints == ["epoch_0001", "epoch_0002"]  # one per epoch

    # the model directory holds the last epoch: its validation Dice recomputes from the reloaded model
    model, meta = load_model_dir(stage / "model")
    assert meta["train_data_hash"] == metrics["train_data_hash"] and meta["extra"]["epoch"] == 2
    assert meta["config"]["train_vessels"]["epochs"] == 2
    records, _ = vessel_records(cfg)
    _, val = split_by_patient(records, val_fraction=0.25, seed=0)
    val_images = load_vessel_images(val)
    got = evaluate_vessels(model, val_images, mean=model.spec.mean, std=model.spec.std)
    # the worker ran torch on 1 thread, this process on 2: summation order moves probabilities by ~1e-7, which can
    # flip a pixel or two at the threshold (1e-6 of Dice each); a different model would be off by far more
    assert got["dice"] == pytest.approx(metrics["final"]["val_dice"], abs=2e-5)
    assert got["auc"] == pytest.approx(metrics["final"]["val_auc"], abs=2e-5)
    for k in ("iou", "precision"):  # paper Table 5 metrics (None in metrics.json = nan: nothing predicted)
        ref = metrics["final"][f"val_{k}"]
        assert (ref is None and got[k] != got[k]) or got[k] == pytest.approx(ref, abs=2e-5), (k, got[k], ref)
    again, _ = load_model_dir(stage / "model")
    img = val_images[0].image
    np.testing.assert_array_equal(predict_image(model, img, mean=model.spec.mean, std=model.spec.std),
                                  predict_image(again, img, mean=again.spec.mean, std=again.spec.std))

    # same storage path and run name, one more epoch: epochs 1-2 come from the checkpoint, only 3 runs
    second = run_train_vessels(_cfg(tmp_path, epochs=3))
    hist = second["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert [h["start_epoch"] for h in hist] == [0, 0, 2]
    assert hist[:2] == metrics["history"]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["epoch_0002", "epoch_0003"]  # keeps 2
    model3, meta3 = load_model_dir(stage / "model")
    assert meta3["extra"]["epoch"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), model3.state_dict().values()))


def test_smoke_overrides_are_per_stage_and_make_the_drive_config_a_cpu_run():
    from dr_ray.cli import SMOKE_OVERRIDES, build_parser

    assert SMOKE_OVERRIDES["preprocess"] == ("data.limit=11", "data.folds=2", "data.synthetic.n_patients=4",
                                             "data.synthetic.width=768", "data.synthetic.height=512",
                                             "preprocess.size=256")
    assert not any(o.startswith("train_vessels.") for o in SMOKE_OVERRIDES["preprocess"])
    cfg = load_config(REPO / "configs" / "train_vessels_drive.yaml", SMOKE_OVERRIDES["train-vessels"])
    tv = cfg.train_vessels
    assert tv.datasets == ("drive",) and not tv.use_gpu and tv.epochs == 2 and tv.patch_size == 64
    assert tv.name != "train_vessels"  # never resumes the full run's checkpoints
    full = load_config(REPO / "configs" / "train_vessels_drive.yaml").train_vessels
    assert full.use_gpu and full.epochs == 100 and full.patch_size == 256 and full.batch_size == 16
    assert build_parser().parse_args(["train-vessels", "--smoke-test"]).stage == "train-vessels"


@pytest.mark.ray
@pytest.mark.slow
def test_train_vessels_job_smoke_test_runs(ray_cluster, tmp_path, capsys):
    from dr_ray.cli import job_main

    rc = job_main("train-vessels", ["--smoke-test", "--set", f"output.dir={tmp_path}"])
    assert rc == 0
    out = tmp_path / "train_vessels_smoke"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert (out / "model" / "model.pt").is_file() and (out / "config.yaml").is_file()
    assert "train-vessels: 3 training / 1 validation images, 2 epochs" in capsys.readouterr().out
