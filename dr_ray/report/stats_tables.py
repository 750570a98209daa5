"""Report tables of the statistics in :mod:`dr_ray.training.stats`: every row names the split its number comes
from and how its interval was made, undefined values show their reason, and every interval printed lies in the
metric's range (the bootstrap's by construction, the t interval's by clipping, which the row says).

Pure functions: stats dicts in, lists of row mappings out (for :meth:`dr_ray.report.html.Report.add_table`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dr_ray.report.html import format_value

__all__ = ["comparison_rows", "delong_rows", "fold_mean_rows", "format_ci", "patient_level_line", "pooled_rows",
           "selection_rows"]


def format_ci(low: object, high: object, floatfmt: str = ".3f") -> str:
    """``"low..high"``; "n/a" when either end is None or nan."""
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "n/a"
    return f"{format_value(low, floatfmt)}..{format_value(high, floatfmt)}"


def patient_level_line(cv: Mapping) -> str:
    """The report header line: "patient-level folds: yes" / "no" from cv.json's ``patient_level`` flag."""
    flag = cv.get("patient_level")
    if flag is None:
        return "patient-level folds: not recorded (cv.json has no patient_level flag)"
    if flag:
        return "patient-level folds: yes"
    return ("patient-level folds: no -- the grading data has no patient ids, so both eyes of a patient may sit in "
            "different folds and every number below may be optimistic")


def pooled_rows(metrics: Mapping[str, Mapping], keys: Sequence[str], floatfmt: str = ".3f", *,
                split: str = "pooled out-of-fold") -> list[dict]:
    """One row per metric of :func:`~dr_ray.training.stats_bootstrap.bootstrap_metrics` output: estimate, CI and how;
    ``split`` names the predictions the metrics come from."""
    rows = []
    for k in keys:
        r = metrics.get(k)
        if r is None:
            continue
        ci = format_ci(r.get("ci_low"), r.get("ci_high"), floatfmt)
        how = (f"{r['method']} over {r['n_groups']} {r['unit']}s, {r['n_boot']} resamples"
               if r.get("n_boot") else "no bootstrap")
        if r.get("n_undefined"):
            how += f", {r['n_undefined']} undefined"
        rows.append({"metric": k, "split": split, "estimate": r.get("estimate"),
                     f"{r.get('confidence', 0.95):.0%} CI": ci, "interval": how,
                     "note": r.get("reason") or r.get("note") or ""})
    return rows


def fold_mean_rows(summary: Mapping[str, Mapping], keys: Sequence[str], floatfmt: str = ".3f") -> list[dict]:
    """One row per metric of :func:`~dr_ray.training.classification_metrics.cv_summary` output."""
    rows = []
    for k in keys:
        r = summary.get(k)
        if r is None:
            continue
        note = r.get("reason", "")
        if r.get("undefined_folds"):
            note = (note + "; " if note else "") + f"undefined on fold position(s) {r['undefined_folds']}"
        rows.append({"metric": k, "split": "mean over outer test folds", "mean": r.get("mean"),
                     "95% CI": format_ci(r.get("ci_low"), r.get("ci_high"), floatfmt),
                     "interval": r.get("interval", "Student t over folds (unclipped)")
                     + (" -- clipped" if r.get("clipped") else ""),
                     "folds": r.get("n"), "note": note})
    return rows


def comparison_rows(metrics: Mapping[str, Mapping], floatfmt: str = ".3f") -> list[dict]:
    """One row per metric of :func:`~dr_ray.training.stats_paired.compare_folds` output (corrected t, Wilcoxon)."""
    rows = []
    for m, r in metrics.items():
        w = r.get("wilcoxon") or {}
        rows.append({"metric": m, "folds": r.get("n"), "mean difference": r.get("mean_diff"),
                     "95% CI": format_ci(r.get("ci_low"), r.get("ci_high"), floatfmt),
                     "corrected t": r.get("t"), "df": r.get("df"), "p (corrected t)": r.get("p"),
                     "n_test/n_train": r.get("correction"),
                     "Wilcoxon p": w.get("p") if w.get("p") is not None else "not informative",
                     "note": "; ".join(x for x in (r.get("reason"), w.get("reason")) if x)})
    return rows


def delong_rows(delong: Mapping, floatfmt: str = ".3f") -> list[dict]:
    """The DeLong test of the pooled out-of-fold AUCs as one row (or its reason), and the paired patient-level
    bootstrap of the same difference as a second row when present."""
    if delong.get("p") is None and delong.get("z") is None:
        return [{"test": "DeLong (pooled out-of-fold AUC)", "note": delong.get("reason", "not computed")}]
    rows = [{"test": "DeLong (pooled out-of-fold AUC)", "metric": delong.get("metric"),
             "images": delong.get("paired_images", delong.get("n")), "AUC (this run)": delong.get("auc_a"),
             "AUC (baseline)": delong.get("auc_b"), "difference": delong.get("diff"),
             "95% CI": format_ci(delong.get("ci_low"), delong.get("ci_high"), floatfmt), "z": delong.get("z"),
             "p": delong.get("p"),
             "note": delong.get("reason") or "images treated as independent (two eyes of a patient are not)"}]
    b = delong.get("patient_bootstrap")
    if b:
        rows.append({"test": "paired patient bootstrap (same AUCs)", "metric": delong.get("metric"),
                     "images": delong.get("paired_images"), "difference": b.get("diff"),
                     "95% CI": format_ci(b.get("ci_low"), b.get("ci_high"), floatfmt), "z": b.get("z"),
                     "p": b.get("p"),
                     "note": b.get("reason") or (f"{b['n_boot']} resamples of {b['n_groups']} patients"
                                                 + (f", {b['n_undefined']} undefined" if b.get("n_undefined") else ""))})
    return rows


def selection_rows(folds: Sequence[Mapping], keys: Sequence[str]) -> list[dict]:
    """The per-fold numbers that selected something (epoch choice, inner validation): every dict-valued entry of
    a fold row that names its ``split``, one row each, so a reader never takes them for test numbers."""
    rows = []
    for f in folds:
        for name, v in f.items():
            if isinstance(v, Mapping) and "split" in v:
                rows.append({"fold": f.get("fold"), "numbers": name, "split": v["split"],
                             **{k: v.get(k) for k in keys if k in v}})
    return rows
