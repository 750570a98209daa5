"""Shared ground of the statistics of every reported number, and the per-fold interval: the range each metric can
take (:data:`METRIC_RANGES`, :func:`metric_range`; intervals are clipped to it or lie in it by construction), the
argument checks the interval and test modules share, and :func:`t_interval`, the mean over folds with a Student-t
interval clipped to the metric's range and labelled as such (an unclipped t over 5 folds printed sensitivity
0.300..1.256). The patient-level bootstrap lives in :mod:`dr_ray.training.stats_bootstrap`, the paired tests of
two runs in :mod:`dr_ray.training.stats_paired`. All functions are pure (arrays in, dicts out) and Ray-free;
undefined values are ``None`` (JSON null) with a ``reason``, never 0.5, 0 or a silently dropped row.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "METRIC_RANGES",
    "metric_range",
    "t_interval",
]

log = logging.getLogger(__name__)

_UNIT = (0.0, 1.0)
_KAPPA = (-1.0, 1.0)
# The range each metric can take; intervals are clipped to it (t) or lie in it by construction (bootstrap).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "auc": _UNIT, "accuracy": _UNIT, "sensitivity": _UNIT, "specificity": _UNIT, "precision": _UNIT,
    "f1": _UNIT, "ece": _UNIT, "qwk": _KAPPA, "loss": (0.0, math.inf),
}


def metric_range(name: str) -> tuple[float, float]:
    """(low, high) a metric named ``name`` can take (``referable_`` prefix ignored); (-inf, inf) if unknown."""
    base = name[len("referable_"):] if name.startswith("referable_") else name
    return METRIC_RANGES.get(base, (-math.inf, math.inf))


def check_paired_scores(labels, score_a, score_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two models' scores on the same images: (labels, score_a, score_b) as 1-D arrays of one length, labels 0/1,
    scores float64; a clear ValueError otherwise (the checks the paired AUC tests share)."""
    y = np.asarray(labels)
    sa = np.asarray(score_a, np.float64)
    sb = np.asarray(score_b, np.float64)
    if y.ndim != 1 or sa.shape != y.shape or sb.shape != y.shape:
        raise ValueError(f"labels, score_a and score_b must be 1-D of one length, got {y.shape}, {sa.shape}, "
                         f"{sb.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    return y, sa, sb


def check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def none_if_nan(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# ---- per-fold mean with a clipped t interval ----------------------------------------------------------------

def t_interval(values: Sequence[float | None], *, confidence: float = 0.95,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Mean of per-fold ``values`` with the Student-t interval mean -/+ t_{(1+c)/2, n-1} s / sqrt(n), clipped.

    values: (K,) one value per fold; None / nan (metric undefined on that fold) are left out and their
    positions listed in ``undefined_folds``. bounds: the metric's range (:func:`metric_range`); the interval is
    clipped to it, ``clipped`` says whether clipping changed it, ``interval`` labels the method.
    Returns {mean, std (ddof=1), ci_low, ci_high, n, clipped, interval, undefined_folds} (+ ``reason`` when
    n < 2: no interval). Floats only (nan where undefined), so the dict works with ``cv_summary``'s callers.
    """
    c = check_confidence(confidence)
    lo_b, hi_b = float(bounds[0]), float(bounds[1])
    if not lo_b < hi_b:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    raw = [math.nan if v is None else float(v) for v in values]
    undefined = [i for i, v in enumerate(raw) if not math.isfinite(v)]
    v = np.array([x for x in raw if math.isfinite(x)])
    n = len(v)
    label = (f"Student t over folds, clipped to [{lo_b:g}, {hi_b:g}]" if math.isfinite(lo_b) or math.isfinite(hi_b)
             else "Student t over folds (no range to clip to)")
    out = {"mean": float(v.mean()) if n else math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "n": n, "clipped": False, "interval": label, "undefined_folds": undefined}
    if n < 2:
        out["reason"] = f"{n} fold(s) with a defined value: no interval"
        return out
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf((1.0 + c) / 2.0, n - 1)) * std / math.sqrt(n)
    lo, hi = out["mean"] - half, out["mean"] + half
    clo, chi = max(lo, lo_b), min(hi, hi_b)
    out.update(std=std, ci_low=clo, ci_high=chi, clipped=bool(clo != lo or chi != hi))
    return out

