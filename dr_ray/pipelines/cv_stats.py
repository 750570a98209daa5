"""Statistics of a cross-validated train run: out-of-fold predictions, pooled metrics with patient-level bootstrap
intervals, per-fold means with clipped t intervals, and the paired comparison with a baseline run.

Used by ``dr-ray train`` (written into ``cv.json``) and ``dr-ray evaluate`` (the report). Every number says which
split it comes from (``SPLIT_*``). The math lives in :mod:`dr_ray.training.stats`; this module only joins the
run's files onto it.

Files of a run ``<output.dir>/<name>/``:
    oof_predictions.parquet   one row per outer-test-fold image: image_id, patient_id, fold, label, probs (C,)
                              -- each image scored once, by the model of the fold that held it out
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dr_ray.io import columns as C

log = logging.getLogger(__name__)

CV_FILE = "cv.json"
OOF_FILE = "oof_predictions.parquet"
SPLIT_FOLD = "outer test fold {k}"
SPLIT_POOLED = "pooled out-of-fold"
SPLIT_FOLD_MEAN = "mean over outer test folds"


def outer_fold_predictions(cfg, model_dir: str, fold: int, out_dir: Path) -> tuple[pa.Table, dict]:
    """Predictions of the saved fold model on its own (outer test) fold: one deterministic pass (no MC dropout) of
    :func:`dr_ray.pipelines.evaluate.predict_fold`. Returns (ok rows: image_id, fold, label, probs; counts)."""
    from dr_ray.pipelines.evaluate import read_fold_predictions, predict_fold

    one_pass = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, mc_samples=1))
    counts = predict_fold(one_pass, model_dir, fold, str(out_dir))
    t = read_fold_predictions(str(out_dir))
    ok = t.filter(pc.equal(t.column(C.STATUS), C.STATUS_OK)).select([C.IMAGE_ID, C.FOLD, "label", "probs"])
    return ok, counts


def oof_table(parts: Sequence[pa.Table], index: pa.Table) -> pa.Table:
    """The folds' prediction rows joined with their patient ids (from the run's index) in one table."""
    t = pa.concat_tables([p.select([C.IMAGE_ID, C.FOLD, "label", "probs"]) for p in parts])
    patients = dict(zip(index.column(C.IMAGE_ID).to_pylist(), index.column(C.PATIENT_ID).to_pylist()))
    missing = [i for i in t.column(C.IMAGE_ID).to_pylist() if i not in patients]
    if missing:
        raise ValueError(f"{len(missing)} predicted image(s) are not in the run's index, e.g. {missing[:3]}")
    return t.append_column(C.PATIENT_ID, pa.array([patients[i] for i in t.column(C.IMAGE_ID).to_pylist()],
                                                   pa.string()))


def _arrays(t: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids = t.column(C.IMAGE_ID).to_pylist()
    labels = np.asarray(t.column("label").to_pylist(), np.int64)
    probs = np.asarray(t.column("probs").to_pylist(), np.float64)
    folds = np.asarray(t.column(C.FOLD).to_pylist(), np.int64)
    patients = np.asarray(t.column(C.PATIENT_ID).to_pylist(), dtype=object)
    return ids, labels, probs, folds, patients


def referable_score(labels: np.ndarray, probs: np.ndarray, referable_from: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 labels, P(positive)) of the binary question the AUC comparison asks: the task itself when binary,
    referable DR (grade >= ``referable_from``) for the 5 ICDR grades."""
    if probs.shape[1] == 2:
        return labels, probs[:, 1]
    return (labels >= referable_from).astype(np.int64), np.clip(probs[:, referable_from:].sum(axis=1), 0.0, 1.0)


def pooled_summary(oof: pa.Table, *, n_boot: int, seed: int, confidence: float = 0.95) -> dict:
    """Pooled out-of-fold metrics with patient-level percentile bootstrap intervals (see
    :func:`dr_ray.training.stats_bootstrap.bootstrap_metrics`) of an :func:`oof_table`."""
    from dr_ray.training.stats_bootstrap import bootstrap_metrics

    ids, labels, probs, folds, patients = _arrays(oof)
    if not len(ids):
        return {"split": SPLIT_POOLED, "n_images": 0, "reason": "no out-of-fold prediction", "metrics": {}}
    return {"split": SPLIT_POOLED, "n_images": len(ids), "n_patients": int(len(set(patients.tolist()))),
            "folds": sorted(set(folds.tolist())), "bootstrap": {"n_boot": n_boot, "seed": seed,
                                                                "unit": "patient", "method": "percentile"},
            "metrics": bootstrap_metrics(labels, probs, patients, n_boot=n_boot, seed=seed, confidence=confidence)}


def fold_metrics(oof: pa.Table) -> list[dict]:
    """Per outer test fold: :func:`classification_metrics` of its images, undefined values as None, labelled."""
    from dr_ray.training.classification_metrics import classification_metrics
    from dr_ray.training.fit import finite_or_none

    _, labels, probs, folds, _ = _arrays(oof)
    out = []
    for k in sorted(set(folds.tolist())):
        m = folds == k
        out.append({"fold": int(k), "split": SPLIT_FOLD.format(k=k),
                    **finite_or_none(classification_metrics(labels[m], probs[m]))})
    return out


def read_oof(run_dir: str | Path) -> pa.Table | None:
    path = Path(run_dir) / OOF_FILE
    return pq.read_table(path) if path.is_file() else None


def compare_with_baseline(ours: list[dict], baseline_dir: Path, metrics: Sequence[str], *,
                          oof: pa.Table | None = None, confidence: float = 0.95, n_boot: int = 2000,
                          seed: int = 0) -> dict:
    """Our run against the baseline run ``baseline_dir`` (its ``cv.json`` and, when both runs have one, its
    ``oof_predictions.parquet``).

    Per metric over the common folds: the Nadeau-Bengio corrected resampled t (the plain paired t ignores that
    folds share training data) and the Wilcoxon signed-rank only where the number of folds lets it reach 0.05.
    On the pooled out-of-fold predictions of the images both runs scored (paired by image_id): DeLong's test of
    the two AUCs (referable DR for the 5-grade task) and, since DeLong treats the two eyes of a patient as
    independent, the paired patient-level bootstrap of the AUC difference (``n_boot`` resamples, ``seed``).
    ``ours``: our per-fold rows (metric values and ``train_images`` / ``test_images`` or ``val_images``).
    """
    from dr_ray.training.stats_paired import compare_folds

    path = baseline_dir / CV_FILE
    if not path.is_file():
        raise FileNotFoundError(f"train.baseline: {path} not found (train the baseline run first)")
    base = json.loads(path.read_text())
    theirs = {f["fold"]: f for f in base["folds"]}
    common = [f for f in ours if f["fold"] in theirs]
    if not common:
        raise ValueError(f"train.baseline: {baseline_dir} has folds {sorted(theirs)}, this run "
                         f"{[f['fold'] for f in ours]}: none in common")
    same_val = all(theirs[f["fold"]].get("val_ids_hash") == f.get("val_ids_hash") for f in common)
    out: dict = {"baseline": str(baseline_dir), "folds": [f["fold"] for f in common],
                 "same_validation_images": same_val,
                 "split": "per outer test fold (paired by fold)",
                 "metrics": compare_folds(common, [theirs[f["fold"]] for f in common], metrics,
                                          confidence=confidence)}
    if not same_val:
        out["note"] = ("the validation images of some folds differ (the runs joined different stages, which "
                       "quarantined different images): the pairing is by fold, not by image")
    base_oof = read_oof(baseline_dir)
    if oof is None or base_oof is None:
        out["delong"] = {"reason": f"no {OOF_FILE} in {'this run' if oof is None else baseline_dir}: "
                                   "no per-image pairing for DeLong's test"}
        return out
    out["delong"] = delong_on_oof(oof, base_oof, confidence=confidence, n_boot=n_boot, seed=seed) | {
        "baseline": str(baseline_dir)}
    return out


def delong_on_oof(ours: pa.Table, theirs: pa.Table, *, confidence: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> dict:
    """DeLong's test of our pooled out-of-fold AUC against the baseline's, on the images both scored, with the
    paired patient-level bootstrap of the difference under ``patient_bootstrap`` (n_boot 0: not run)."""
    from dr_ray.training.stats_bootstrap import bootstrap_auc_difference
    from dr_ray.training.stats_paired import delong_test

    ids_a, la, pa_, _, patients = _arrays(ours)
    ids_b, lb, pb, _, _ = _arrays(theirs)
    pos_b = {i: j for j, i in enumerate(ids_b)}
    both = [(j, pos_b[i]) for j, i in enumerate(ids_a) if i in pos_b]
    info = {"split": SPLIT_POOLED, "paired_images": len(both), "only_ours": len(ids_a) - len(both),
            "only_baseline": len(ids_b) - len(both)}
    if not both:
        return info | {"reason": "the two runs scored no image in common"}
    ia, ib = (np.array(x) for x in zip(*both))
    if pa_.shape[1] != pb.shape[1] or not np.array_equal(la[ia], lb[ib]):
        return info | {"reason": "the runs disagree on the labels or the number of classes: not the same task"}
    ya, sa = referable_score(la[ia], pa_[ia])
    _, sb = referable_score(lb[ib], pb[ib])
    metric = "auc" if pa_.shape[1] == 2 else "referable_auc"
    out = info | {"metric": metric} | delong_test(ya, sa, sb, confidence=confidence)
    if n_boot:
        out["patient_bootstrap"] = bootstrap_auc_difference(ya, sa, sb, patients[ia], n_boot=n_boot, seed=seed,
                                                            confidence=confidence)
    return out


def write_oof(t: pa.Table, run_dir: Path) -> Path:
    path = run_dir / OOF_FILE
    pq.write_table(t, path)
    return path


def fold_summary(per_fold: Sequence[Mapping], metrics: Sequence[str], *, confidence: float = 0.95) -> dict:
    """:func:`cv_summary` (clipped t over folds) of ``metrics`` in per-fold rows; None = undefined on that fold."""
    from dr_ray.training.classification_metrics import cv_summary

    rows = [{m: f.get(m) for m in metrics if m in f} for f in per_fold]
    rows = [r for r in rows if r]
    if not rows:
        return {}
    return {"split": SPLIT_FOLD_MEAN, "metrics": cv_summary(rows, confidence=confidence)}


__all__ = ["CV_FILE", "OOF_FILE", "SPLIT_FOLD", "SPLIT_FOLD_MEAN", "SPLIT_POOLED", "compare_with_baseline",
           "delong_on_oof", "fold_metrics", "fold_summary", "oof_table", "outer_fold_predictions",
           "pooled_summary", "read_oof", "referable_score", "write_oof"]
