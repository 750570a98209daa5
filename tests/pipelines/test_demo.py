"""The README's main command (`make demo` = `dr-ray demo --config configs/demo.yaml`) in its smoke form: the whole
chain preprocess -> train-vessels -> vessels -> train-lesions -> pseudo-labels -> train -> tune -> evaluate from
the command line, on one Ray for the whole chain (the session's cluster through RAY_ADDRESS when the suite has
started it, else a fresh local one); every stage's outputs checked once it has run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    exe = Path(sys.executable).with_name("dr-ray")
    cmd = [str(exe), "demo", "--config", str(REPO / "configs" / "demo.yaml"), "--smoke-test",
           "--set", f"output.dir={out}", "--set", "ray.num_cpus=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1500,
                         env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out, res.stdout, res.stderr


@pytest.mark.slow
def test_demo_prints_every_stage_and_the_report(demo):
    out, stdout, stderr = demo
    for stage in ("preprocess:", "train-vessels:", "vessels:", "train-lesions:", "pseudo-labels:", "train:",
                  "tune:", "evaluate:", "stage times:"):
        assert stage in stdout, stage
    assert f"report: {out}/train_smoke/evaluation/report.html" in stdout
    assert "[reconciles]" in stdout
    # not a terminal: a quiet console (stage lines and warnings, no Ray Data progress log); the rest in demo.log
    full = (out / "demo.log").read_text()
    assert "demo: train ..." in stderr and "demo: evaluate done" in full


@pytest.mark.slow
def test_demo_stage_outputs_reconcile(demo):
    out = demo[0]
    pre = json.loads((out / "preprocess" / "summary.json").read_text())
    # smoke: 4 synthetic patients (8 images) + 3 broken files, limit 11 -> 11 rows in
    assert pre["catalog_rows"] == 11 and pre["reconciles"] and pre["label_problems"] == 1
    for stage in ("vessels", "pseudo_labels"):
        s = json.loads((out / stage / "summary.json").read_text())
        assert s["reconciles"] and s["catalog_rows"] == pre["written"], stage
    (data,) = [p for p in (out / "fusion_data").iterdir() if p.is_dir()]
    joined = json.loads((data / "_SUCCESS.json").read_text())
    assert joined["rows_in"] == pre["written"] == joined["written"] + joined["quarantined"]


@pytest.mark.slow
def test_demo_train_tune_evaluate_outputs(demo, assert_in_browser):
    from dr_ray.config import load_config
    from dr_ray.models import load_model_dir

    out = demo[0]
    cv = json.loads((out / "train_smoke" / "cv.json").read_text())
    assert cv["model"] == "graph_fusion" and [f["fold"] for f in cv["folds"]] == [0]
    model, meta = load_model_dir(out / "train_smoke" / "fold_0" / "model")
    assert meta["extra"]["fold"] == 0 and meta["spec"]["kwargs"]["modalities"] == ["image", "graph", "stats"]

    import pandas as pd

    res = pd.read_csv(out / "tune_smoke" / "results.csv")
    assert len(res) == 2 and set(res["status"]) == {"OK"}
    assert {"config/lr", "config/dropout", "val_loss", "val_auc", "epochs"} <= set(res.columns)
    assert res["val_loss"].is_monotonic_increasing  # best (lowest val_loss: tune.metric in the smoke) first
    best = load_config(out / "tune_smoke" / "best_train.yaml")  # ready to run: a complete, valid config
    # nested: the campaign used tune.folds (0) only; best_train.yaml scores the untouched folds
    assert best.train.name == "tune_smoke_best" and best.train.folds and 0 not in best.train.folds
    top = res.iloc[0]
    assert best.train.lr == pytest.approx(top["config/lr"]) and best.train.dropout == pytest.approx(
        top["config/dropout"])
    raw = yaml.safe_load((out / "tune_smoke" / "best_train.yaml").read_text())
    assert raw["output"]["dir"] == str(out)

    report = (out / "train_smoke" / "evaluation" / "report.html").read_text()
    assert "Cross-validation (out-of-fold)" in report and "Grad-CAM" in report
    # the demo's vessel and lesion stages ran: the sample panels show the graph, the disc zone and the lesion maps
    assert "Vessels, optic disc and lesions of sample images" in report and "crae_parr_hubbard_um" in report
    if assert_in_browser is not None:  # as a user sees it (CI installs Chromium; see tests/conftest.py)
        assert_in_browser(out / "train_smoke" / "evaluation" / "report.html")
    metrics = json.loads((out / "train_smoke" / "evaluation" / "metrics.json").read_text())
    assert metrics["counts"][0]["rows_in"] == metrics["counts"][0]["predicted"] + metrics["counts"][0]["quarantined"]
