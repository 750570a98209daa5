"""cv_stats joins a run's files onto the statistics: labelled splits, pooled bootstrap, DeLong between two runs'
out-of-fold predictions paired by image, corrected t over folds (no Ray: tiny tables in a temp folder)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest

from dr_ray.io import columns as C
from dr_ray.pipelines.cv_stats import (CV_FILE, SPLIT_POOLED, compare_with_baseline, fold_metrics, oof_table,
                                       pooled_summary, write_oof)


def _preds(rng, n: int, signal: float) -> tuple[pa.Table, pa.Table]:
    ids = [f"img{i}" for i in range(n)]
    y = (np.arange(n) // 2) % 2  # both eyes of a patient share a label
    s = np.clip(y * signal + rng.uniform(0, 1 - signal, n), 0, 1)
    preds = pa.table({C.IMAGE_ID: ids, C.FOLD: pa.array(np.arange(n) // 4 % 4, pa.int64()), "label": y,
                      "probs": pa.array(np.stack([1 - s, s], 1).tolist(), pa.list_(pa.float32()))})
    index = pa.table({C.IMAGE_ID: ids, C.PATIENT_ID: [f"p{i // 2}" for i in range(n)]})
    return preds, index


def test_run_statistics_from_oof_tables(tmp_path):
    rng = np.random.default_rng(0)
    preds, index = _preds(rng, 40, 0.5)
    oof = oof_table([preds.slice(0, 20), preds.slice(20)], index)
    folds = fold_metrics(oof)
    assert [f["split"] for f in folds] == [f"outer test fold {k}" for k in range(4)]
    pooled = pooled_summary(oof, n_boot=200, seed=0)
    assert pooled["split"] == SPLIT_POOLED and pooled["n_images"] == 40 and pooled["n_patients"] == 20
    auc = pooled["metrics"]["auc"]
    assert 0 <= auc["ci_low"] <= auc["estimate"] <= auc["ci_high"] <= 1 and auc["n_groups"] == 20
    json.dumps(pooled, allow_nan=False)  # strict JSON: undefined values are None, not NaN

    base_dir = tmp_path / "base"
    base_dir.mkdir()
    base_preds, _ = _preds(np.random.default_rng(1), 40, 0.0)
    base_oof = oof_table([base_preds], index)
    base_rows = [{"fold": f["fold"], **{k: f[k] for k in ("auc", "accuracy")}, "val_ids_hash": "h"}
                 for f in fold_metrics(base_oof)]
    (base_dir / CV_FILE).write_text(json.dumps({"folds": base_rows}))
    ours = [{**f, "train_images": 30, "test_images": 10, "val_ids_hash": "h"} for f in folds]
    no_oof = compare_with_baseline(ours, base_dir, ["auc", "accuracy"], oof=oof)
    assert "no oof_predictions.parquet" in no_oof["delong"]["reason"]
    write_oof(base_oof, base_dir)
    comp = compare_with_baseline(ours, base_dir, ["auc", "accuracy"], oof=oof, n_boot=200)
    assert comp["folds"] == [0, 1, 2, 3] and comp["same_validation_images"] is True
    assert comp["metrics"]["auc"]["correction"] == pytest.approx(1 / 3)
    assert comp["metrics"]["auc"]["wilcoxon"]["p"] is None  # 4 folds: smallest p 0.125
    d = comp["delong"]
    assert d["paired_images"] == 40 and d["metric"] == "auc" and d["split"] == SPLIT_POOLED
    assert d["auc_a"] == pytest.approx(pooled["metrics"]["auc"]["estimate"]) and d["p"] < 0.05
    assert d["patient_bootstrap"]["n_groups"] == 20 and d["patient_bootstrap"]["diff"] == pytest.approx(d["diff"])
    json.dumps(comp, allow_nan=False)
    # a fold holding one class only: its AUC is None with the split named -- not 0.5, not a crash
    one_class = oof.filter(pa.compute.equal(oof.column("label"), 0))
    degenerate = fold_metrics(one_class)
    assert all(f["auc"] is None and f["sensitivity"] is None for f in degenerate)
    assert pooled_summary(one_class, n_boot=50, seed=0)["metrics"]["auc"]["reason"].startswith("undefined")
    with pytest.raises(ValueError, match="not in the run's index"):
        oof_table([preds], index.slice(0, 10))
