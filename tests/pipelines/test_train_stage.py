"""The classifier stages on the shared local Ray cluster, from small stage outputs written here directly (no
segmentation models needed): the Ray Data join and its quarantine reasons, K-fold training on Ray Train with the
best epoch exported, resume, a baseline comparison, a worker killed mid-run, and the evaluation report."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dr_ray.config import load_config
from dr_ray.io import columns as C
from dr_ray.testing.stages import write_stage_outputs

REPO = Path(__file__).resolve().parents[2]


TRAIN = ("train.image_size=32", "train.lesion_size=16", "train.hidden_dim=16", "train.heads=2",
         "train.fusion_layers=1", "train.gnn_layers=1", "train.batch_size=4", "train.decode_batch_size=4",
         "train.shuffle_buffer=8", "train.backbone=mobilenetv3_small_050", "train.early_stop_patience=0",
         "ray.rows_per_file=4")


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"output.dir={root}", "data.folds=2", *TRAIN, *extra])


@pytest.fixture(scope="module")
def stages(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    write_stage_outputs(root)
    return root


@pytest.mark.ray
def test_join_reconciles_names_reasons_and_is_reused(stages):
    from dr_ray.pipelines.fusion_join import build_fusion_data
    from dr_ray.pipelines.fusion_read import read_index

    cfg = _cfg(stages)
    data = build_fusion_data(cfg, ["pseudo_labels", "vessels"])
    assert (data.rows_in, data.written, data.quarantined) == (16, 13, 3)
    assert data.lesion_kinds == ("ma", "he", "ex", "se") and not data.reused
    import csv

    with open(Path(data.path) / "quarantine.csv") as f:
        reasons = {r[C.IMAGE_ID]: r[C.ERROR] for r in csv.DictReader(f)}
    assert reasons["synthetic/0_left"].endswith("no grade label (cannot train or evaluate a classifier on it)")
    assert reasons["synthetic/1_right"] == ("synthetic/1_right: quarantined by pseudo_labels: synthetic/1_right: "
                                            "model exploded")
    assert "not in the vessels output" in reasons["synthetic/2_right"]
    idx = read_index(data, ["avr_knudtson"])
    assert idx.num_rows == 13 and len(set(idx.column(C.IMAGE_ID).to_pylist())) == 13
    summary = json.loads((Path(data.path) / "summary.json").read_text())
    assert summary["reconciles"] and summary["written"] + summary["quarantined"] == summary["catalog_rows"] == 16
    # the same inputs: reused without Ray; a build that died before its marker is redone
    assert build_fusion_data(cfg, ["vessels", "pseudo_labels"]).reused
    (Path(data.path) / "_SUCCESS.json").unlink()
    again = build_fusion_data(cfg, ["pseudo_labels", "vessels"])
    assert not again.reused and again.path == data.path and again.written == 13


@pytest.mark.ray
def test_missing_stage_is_a_clear_error(ray_cluster, tmp_path):
    from dr_ray.pipelines.fusion_join import build_fusion_data

    write_stage_outputs(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "vessels")
    with pytest.raises(FileNotFoundError, match="run `dr-ray vessels` first"):
        build_fusion_data(_cfg(tmp_path), ["vessels"])


@pytest.fixture(scope="module")
def baseline_run(stages):
    from dr_ray.pipelines.train import run_train

    # joined with the stages graph_fusion's run joins, so both are scored on the same images (and the joined data
    # of the join test is reused)
    return run_train(_cfg(stages, "train.model=timm_classifier", "train.backbone=resnet18", "train.epochs=1",
                          "train.name=base", "train.join=[pseudo_labels, vessels]"))


@pytest.fixture(scope="module")
def fusion_run(stages, baseline_run):
    from dr_ray.pipelines.train import run_train

    return run_train(_cfg(stages, "train.model=graph_fusion", "train.epochs=2", "train.name=gf",
                          "train.baseline=base", "train.join=[pseudo_labels]", f"train.mlflow_uri=file://{stages}/mlruns",
                          "train.mlflow_experiment=bench"))


@pytest.mark.ray
@pytest.mark.slow
def test_kfold_training_exports_the_best_epoch_with_cv_and_paired_test(stages, fusion_run):
    from dr_ray.models import load_model_dir
    from dr_ray.training.classify import predict, weighted_nll
    from dr_ray.training.fusion_data import InputSpec, batches_from_rows

    s = fusion_run
    assert s["modalities"] == ["image", "graph", "stats"] and [f["fold"] for f in s["folds"]] == [0, 1]
    assert sum(f["val_images"] for f in s["folds"]) == 13  # 16 images - no grade - lesion-quarantined - no vessels
    for m in ("auc", "accuracy", "qwk", "ece"):
        c = s["cv"][m]
        assert c["n"] == 2 and c["ci_low"] <= c["mean"] <= c["ci_high"]
    comp = s["comparison"]
    assert comp["folds"] == [0, 1] and comp["same_validation_images"] is True
    # vessels (needed) + pseudo_labels (train.join): the join test's data (reused when that test ran first)
    assert s["data"]["stages"] == ["pseudo_labels", "vessels"]
    assert (s["data"]["written"], s["data"]["quarantined"]) == (13, 3)
    assert comp["metrics"]["auc"]["n"] == 2 and "mean_diff" in comp["metrics"]["auc"]
    on_disk = json.loads((stages / "gf" / "cv.json").read_text())
    assert on_disk["folds"] == json.loads(json.dumps(s["folds"]))
    assert (stages / "gf" / "cv_folds.csv").read_text().startswith("fold,")
    assert list((stages / "gf" / "tensorboard" / "fold_0").glob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the test reads the file store the run wrote

    client = MlflowClient(tracking_uri=f"file://{stages}/mlruns")
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["gf/fold_0", "gf/fold_1"]
    assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 2 for r in runs)
    assert runs[0].data.params["train.model"] == "graph_fusion"

    # the exported model is the best epoch's: its loss on the inner validation split (nested CV: drawn from the
    # outer training fold 0 only) reproduces the one recorded for that epoch
    model, meta = load_model_dir(stages / "gf" / "fold_1" / "model")
    spec = InputSpec.from_dict(meta["extra"]["inputs"])
    assert spec.stats_features == ("avr_parr_hubbard", "fractal_dimension", "glcm_contrast", "glcm_entropy")
    from dr_ray.pipelines.fusion_read import read_rows

    data_dir = Path(meta["extra"]["fusion_data"]) / "status=ok"
    from dr_ray.pipelines.train import nested_split

    index = pq.read_table(data_dir, columns=[C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.FOLD])
    split = nested_split(index, [0], fraction=0.15, seed=0)  # train.inner_val_fraction, train.seed defaults
    inner_val = set(np.asarray(index.column(C.IMAGE_ID).to_pylist(), dtype=object)[split.val])
    assert inner_val and all(f == 0 for i, f in zip(index.column(C.IMAGE_ID).to_pylist(),
                                                     index.column(C.FOLD).to_pylist()) if i in inner_val)
    rows = read_rows(meta["extra"]["fusion_data"], spec.columns()).to_pydict()
    keep = [i for i, iid in enumerate(rows[C.IMAGE_ID]) if iid in inner_val]
    rows = {k: [v[i] for i in keep] for k, v in rows.items()}
    ids, labels, probs = predict(model, batches_from_rows(rows, spec, 4), "cpu", mean=model.spec.mean,
                                 std=model.spec.std)
    hist = json.loads((stages / "gf" / "cv.json").read_text())
    best = meta["extra"]["metrics"]
    from dr_ray.training.fusion_data import class_weights, labels_for_task

    train_labels = labels_for_task(np.asarray(index.column(C.GRADE).to_pylist(), dtype=object)[split.train].tolist(),
                                   "referable")
    w = class_weights(train_labels, 2)
    assert weighted_nll(labels, probs, w) == pytest.approx(best["val_loss"], rel=1e-4)
    assert best["epoch"] == meta["extra"]["best_epoch"] and hist["train_data_hash"] == meta["train_data_hash"]


@pytest.mark.ray
@pytest.mark.slow
def test_evaluation_report(stages, fusion_run, assert_in_browser):
    from dr_ray.pipelines.evaluate import run_evaluate

    s = run_evaluate(_cfg(stages, "train.name=gf", "evaluate.mc_samples=3", "evaluate.gradcam_images=2",
                          "evaluate.uncertain_cases=3", "evaluate.batch_size=4"))
    assert sum(c["rows_in"] for c in s["counts"]) == 13
    assert all(c["rows_in"] == c["predicted"] + c["quarantined"] for c in s["counts"])
    html = Path(s["report"]).read_text()
    for section in ("Cross-validation (out-of-fold)", "ROC", "Calibration", "Predictive entropy",
                    "Most uncertain cases", "Grad-CAM", "Paired test against",
                    "Vessels, optic disc and lesions of sample images", "fractal_dimension"):
        assert section in html, section
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) >= 6 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "http://" not in html and "https://" not in html
    if assert_in_browser is not None:  # as a user sees it (CI installs Chromium; see tests/conftest.py)
        assert_in_browser(s["report"])
    m = s["pooled"]
    assert m["n"] == 13 and 0.0 <= m["accuracy"] <= 1.0
    ent = pq.read_table(Path(s["predictions"])).column("entropy").to_numpy()
    assert np.all((ent >= 0) & (ent <= np.log(2) + 1e-6))


@pytest.mark.ray
@pytest.mark.slow
def test_predict_a_second_cohort_with_the_fold_ensemble_then_evaluate_it_externally(stages, fusion_run,
                                                                                     tmp_path, assert_in_browser):
    """Train on one synthetic cohort (the module's), predict another (other seed, other ids) with the run's two
    fold models, resume, refuse other settings, and score it with the external-validation report."""
    from dr_ray.models import artifact_hash, load_model_dir
    from dr_ray.pipelines.evaluate import run_evaluate
    from dr_ray.pipelines.fusion_read import read_rows
    from dr_ray.pipelines.predict import run_predict
    from dr_ray.testing.stages import read_stage
    from dr_ray.training.classify import predict
    from dr_ray.training.fusion_data import InputSpec, batches_from_rows

    cohort = tmp_path / "cohort_b"
    ids = write_stage_outputs(cohort, seed=1, dataset="cohortb")  # 16 images, its first one has no grade
    run_dir = stages / "gf"
    cfg = _cfg(cohort, f"predict.run_dir={run_dir}", "predict.mc_samples=2", "predict.batch_size=4")
    s = run_predict(cfg)
    # graph_fusion reads the vessel stage: the image it never processed is quarantined with the join's reason;
    # the ungraded image is predicted (predictions need no label)
    assert (s.catalog_rows, s.written, s.quarantined, s.duplicates) == (16, 15, 1, 0) and s.reconciles
    rows = read_stage(cohort / "predictions")
    assert sorted(rows.column(C.IMAGE_ID).to_pylist()) == sorted(ids)
    by_id = {r[C.IMAGE_ID]: r for r in rows.to_pylist()}
    assert by_id["cohortb/2_right"][C.STATUS] == "quarantined"
    assert "not in the vessels output" in by_id["cohortb/2_right"][C.ERROR]
    ungraded = by_id["cohortb/0_left"]
    assert ungraded[C.STATUS] == "ok" and ungraded[C.GRADE] is None and ungraded[C.PROBS] is not None
    hashes = [artifact_hash(run_dir / f"fold_{k}" / "model") for k in (0, 1)]
    ok = [r for r in by_id.values() if r[C.STATUS] == "ok"]
    for r in ok:
        assert r[C.MODEL_FOLDS] == [0, 1] and r[C.MODEL_HASHES] == hashes
        assert sum(r[C.PROBS]) == pytest.approx(1.0, abs=1e-5) and 0.0 <= r[C.P_REFERABLE] <= 1.0
        assert r[C.PREDICTED_REFERABLE] == (r[C.P_REFERABLE] >= 0.5) and r[C.PREDICTED_GRADE] is None
        assert r[C.P_REFERABLE] == pytest.approx(np.mean(r[C.FOLD_P_REFERABLE]), abs=1e-5)
        assert r[C.FOLD_SPREAD] == pytest.approx(np.std(r[C.FOLD_P_REFERABLE]), abs=1e-5)
        assert 0.0 <= r[C.ENTROPY] <= np.log(2) + 1e-6
    # each fold's vote is that fold model's own prediction, computed here without Ray
    info = json.loads((cohort / "predictions" / "predict.json").read_text())
    for j, k in enumerate((0, 1)):
        model, meta = load_model_dir(run_dir / f"fold_{k}" / "model")
        spec = InputSpec.from_dict(meta["extra"]["inputs"])
        graded = [r[C.IMAGE_ID] for r in ok if r[C.GRADE] is not None]
        got = read_rows(info["data"]["path"], spec.columns(), ids=graded).to_pydict()
        pid, _, p = predict(model, batches_from_rows(got, spec, 4), "cpu", mean=model.spec.mean, std=model.spec.std)
        for iid, pk in zip(pid, p):
            assert by_id[iid][C.FOLD_P_REFERABLE][j] == pytest.approx(float(pk[1]), abs=1e-4)
    # a rerun finds everything done; other settings are refused before anything is written
    again = run_predict(cfg)
    assert (again.already_done, again.written, again.quarantined, again.duplicates) == (16, 15, 1, 0)
    with pytest.raises(ValueError, match="other models or predict settings"):
        run_predict(_cfg(cohort, f"predict.run_dir={run_dir}", "predict.mc_samples=3"))
    with pytest.raises(FileNotFoundError, match="cv.json not found"):
        run_predict(_cfg(cohort, f"predict.run_dir={tmp_path}"))

    ev = run_evaluate(_cfg(stages, f"evaluate.dataset={cohort}", "evaluate.bootstrap=200",
                           "evaluate.gradcam_images=2", "evaluate.uncertain_cases=3"))
    assert (ev["scored"], ev["ungraded"], ev["quarantined"]) == (14, 1, 1)
    assert ev["pooled"]["n"] == 14
    auc = ev["pooled_ci"]["auc"]
    assert 0.0 <= auc["ci_low"] <= auc["estimate"] <= auc["ci_high"] <= 1.0
    html = Path(ev["report"]).read_text()
    for text in ("external validation", "trained on", "tested on", str(run_dir), "Grad-CAM", "Most uncertain cases",
                 "ROC", "Calibration", "fold-0 model", "Vessels, optic disc and lesions of sample images"):
        assert text in html, text
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) >= 6 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    if assert_in_browser is not None:
        assert_in_browser(ev["report"])
    # a GPU the (CPU-only) cluster does not have fails after ray.actor_start_timeout_s, naming it; never waits
    import time

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not start within ray.actor_start_timeout_s=5 s.*gpus_per_actor"):
        run_predict(_cfg(cohort, f"predict.run_dir={run_dir}", "predict.name=on_gpu", "predict.gpus_per_actor=1",
                         "ray.actor_start_timeout_s=5"))
    assert time.monotonic() - t0 < 90


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_with_more_epochs_resumes_each_fold(stages, fusion_run):
    # after the evaluation test: this rerun rewrites gf/cv.json with fold 1 only
    from dr_ray.pipelines.train import run_train

    s = run_train(_cfg(stages, "train.model=graph_fusion", "train.epochs=3", "train.name=gf", "train.folds=[1]"))
    (fold,) = s["folds"]
    assert fold["epochs_run"] == 3
    hist_dir = sorted((stages / "gf" / "ray" / "fold_1").glob("epoch_*"))
    assert [p.name for p in hist_dir][-1] == "epoch_0003"
    history = json.loads((hist_dir[-1] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["start_epoch"] == 2  # only epoch 3 ran in this call


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_completes(stages, tmp_path):
    from dr_ray.faults import FAULT_ENV, FAULT_ONCE_ENV

    write_stage_outputs(tmp_path)
    once = tmp_path / "fault_fired"
    env = {**os.environ, FAULT_ENV: "train:fold_0_epoch_3:exit", FAULT_ONCE_ENV: str(once),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--set", f"output.dir={tmp_path}", "--set",
           "data.folds=2", *[a for s in TRAIN for a in ("--set", s)], "--set", "train.model=timm_classifier",
           "--set", "train.backbone=resnet18", "--set", "train.epochs=3", "--set", "train.folds=[0]",
           "--set", "train.name=killed", "--set", "ray.num_cpus=2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert once.exists(), "the fault never fired"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "fold 0: best epoch" in res.stdout
    last = sorted((tmp_path / "killed" / "ray" / "fold_0").glob("epoch_*"))[-1]
    history = json.loads((last / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]  # every epoch once, none twice
    # the replacement resumed from a checkpoint (epoch 1's or 2's: Ray Train V2 registers a reported checkpoint
    # asynchronously, so the one reported just before the crash may not be there yet)
    assert history[-1]["start_epoch"] in (1, 2)
