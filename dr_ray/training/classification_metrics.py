"""Image-level classification metrics (binary referable DR and 5-grade ICDR), calibration, fold summaries.

All functions are pure: arrays in, floats / arrays / dicts out. The ratios come from scikit-learn, the
intervals from SciPy (bootstrap intervals and paired tests of two runs: :mod:`dr_ray.training.stats`); only the expected calibration error and the per-class specificity, which
neither library has, are computed here.

An undefined value is ``nan``, never a made-up number: AUC with one class present, precision with no
predicted positive, sensitivity with no positive label, specificity with no negative label, F1 when
``tp + fp + fn == 0``, quadratic kappa when both raters use one and the same grade. Macro averages
(multi-class) leave undefined classes out of the mean (scikit-learn's ``zero_division=np.nan``) and are
``nan`` only when no class defines them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

__all__ = [
    "check_labels",
    "check_probs",
    "classification_metrics",
    "cv_summary",
    "expected_calibration_error",
    "predictive_entropy",
    "reliability_bins",
]

_ROW_SUM_TOL = 1e-3


def check_probs(probs: object, name: str = "probs") -> np.ndarray:
    """``probs`` as a float64 (N, C) array with N >= 1, C >= 2, finite entries in [0, 1], rows summing to 1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {p.shape}")
    n, c = p.shape
    if n < 1:
        raise ValueError(f"{name} must hold at least one row, got shape {p.shape}")
    if c < 2:
        raise ValueError(f"{name} must hold at least 2 classes (columns), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite, got {int(np.count_nonzero(~np.isfinite(p)))} non-finite entries")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got range [{p.min()!r}, {p.max()!r}]")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_TOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} rows must sum to 1 (within {_ROW_SUM_TOL}), row {i} sums to {sums[i]!r}")
    return p


def check_labels(labels: object, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as an int64 (N,) array of class indices in 0..n_classes-1."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match probs, got {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name} must lie in 0..{n_classes - 1}, got range [{y.min()}, {y.max()}]")
    return y


def _check_bins(bins: object, name: str) -> int:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"{name} must be a positive integer, got {bins!r}")
    return int(bins)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _qwk(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    with warnings.catch_warnings():
        # undefined (one shared grade) -> nan, documented in the module docstring
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(cohen_kappa_score(labels, preds, weights="quadratic", labels=np.arange(n_classes)))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability-diagram bins of the top-class confidence (Guo et al. 2017, "On calibration of modern NNs").

    labels: (N,) int class indices; probs: (N, C) float rows summing to 1; bins: number of equal-width
    confidence bins on [0, 1], bin m covering ((m-1)/bins, m/bins] (the first also holds 0).
    Returns (bin_confidence (bins,) float mean max-prob, bin_accuracy (bins,) float fraction of argmax
    predictions that are correct, bin_count (bins,) int64); empty bins have nan confidence and accuracy.
    """
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    m = _check_bins(bins, "bins")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, m + 1)
    idx = np.digitize(conf, edges[1:-1], right=True)  # right-closed bins, 0..m-1
    count = np.bincount(idx, minlength=m).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.bincount(idx, weights=conf, minlength=m) / count
        bin_acc = np.bincount(idx, weights=correct, minlength=m) / count
    bin_conf[count == 0] = np.nan
    bin_acc[count == 0] = np.nan
    return bin_conf, bin_acc, count


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over ``bins`` equal-width confidence bins (Guo et al. 2017, eq. 3).

    labels: (N,) int; probs: (N, C) rows summing to 1. Returns a fraction in [0, 1] (not percent).
    """
    conf, acc, count = reliability_bins(labels, probs, bins)
    full = count > 0
    return float(np.sum(count[full] / count.sum() * np.abs(acc[full] - conf[full])))


def _binary_metrics(y: np.ndarray, score: np.ndarray, probs2: np.ndarray, threshold: float,
                    ece_bins: int) -> dict[str, float]:
    """y (N,) in {0, 1}; score (N,) P(class 1); probs2 (N, 2) for the ECE."""
    pred = (score >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1])
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=[0, 1], average=None, zero_division=np.nan)
    n_pos = int(np.count_nonzero(y))
    auc = float(roc_auc_score(y, score)) if 0 < n_pos < len(y) else math.nan
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "auc": auc,
        "sensitivity": float(rec[1]),
        "specificity": float(rec[0]),
        "precision": float(prec[1]),
        "f1": float(f1[1]),
        "qwk": _qwk(y, pred, 2),
        "ece": expected_calibration_error(y, probs2, ece_bins),
        "n": len(y),
        "n_positive": n_pos,
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def _multiclass_metrics(y: np.ndarray, p: np.ndarray, ece_bins: int) -> dict[str, float]:
    n, c = p.shape
    pred = p.argmax(axis=1)
    classes = np.arange(c)
    cm = confusion_matrix(y, pred, labels=classes)
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=classes, average="macro", zero_division=np.nan)
    # per-class specificity TN / (TN + FP) = (non-c samples not predicted c) / (non-c samples)
    negatives = n - cm.sum(axis=1)
    fp = cm.sum(axis=0) - np.diag(cm)
    spec_c = np.array([_ratio(neg - f, neg) for neg, f in zip(negatives, fp)])
    spec = float(np.mean(spec_c[np.isfinite(spec_c)])) if np.isfinite(spec_c).any() else math.nan
    if np.all(np.bincount(y, minlength=c) > 0):
        # sklearn re-checks the row sums with np.allclose; we accept 1e-3, so hand it exactly normalised rows
        auc = float(roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr", average="macro", labels=classes))
    else:
        auc = math.nan  # a class without samples has no one-vs-rest AUC, so the macro mean is undefined
    return {
        "accuracy": float(np.mean(pred == y)),
        "auc": auc,
        "sensitivity": float(rec),
        "specificity": spec,
        "precision": float(prec),
        "f1": float(f1),
        "qwk": _qwk(y, pred, c),
        "ece": expected_calibration_error(y, p, ece_bins),
        "n": n,
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5, ece_bins: int = 15,
                           referable_from: int = 2) -> dict[str, float]:
    """Metrics of class probabilities against integer labels.

    labels: (N,) int in 0..C-1; probs: (N, C) float in [0, 1], rows summing to 1 (within 1e-3), N >= 1, C >= 2.

    Binary (C == 2): the positive class is 1, score = probs[:, 1], prediction = score >= ``threshold``.
    Keys: accuracy, auc (ROC, nan with one class present), sensitivity (recall of 1), specificity (recall
    of 0), precision, f1, qwk (quadratic weighted kappa of the thresholded predictions), ece, n,
    n_positive, tp, fp, tn, fn.

    Multi-class (C > 2): prediction = argmax. Keys: accuracy, auc (one-vs-rest macro; nan unless every
    class has a sample), sensitivity (macro recall), specificity (macro of per-class TN / (TN + FP)),
    precision (macro), f1 (macro), qwk (labels 0..C-1), ece, n. Undefined classes are left out of the
    macro means. With C == 5 (ICDR grades 0-4) the referable-DR metrics are added: score =
    probs[:, referable_from:].sum(1), label = labels >= referable_from (``referable_from`` = 2, moderate
    NPDR or worse, by default; it is ignored for other C), with every binary key above prefixed
    ``referable_`` (referable_auc, referable_sensitivity, ...), thresholded at ``threshold``.

    ece: expected calibration error of the argmax prediction with ``ece_bins`` equal-width bins (a
    fraction, see :func:`expected_calibration_error`). Ratios are fractions in [0, 1]; n and counts are ints.
    """
    p = check_probs(probs)
    n, c = p.shape
    y = check_labels(labels, n, c)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    bins = _check_bins(ece_bins, "ece_bins")
    if c == 2:
        return _binary_metrics(y, p[:, 1], p, float(threshold), bins)
    out = _multiclass_metrics(y, p, bins)
    if c == 5:
        r = referable_from
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 1 <= r <= 4:
            raise ValueError(f"referable_from must be an integer grade in 1..4, got {referable_from!r}")
        score = np.clip(p[:, referable_from:].sum(axis=1), 0.0, 1.0)
        ref = _binary_metrics((y >= referable_from).astype(np.int64), score, np.stack([1.0 - score, score], axis=1),
                              float(threshold), bins)
        out.update({f"referable_{k}": v for k, v in ref.items()})
    return out


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy -sum_c p_c ln p_c of each row, in nats: (N, C) rows summing to 1 -> (N,) float64.

    0 for a one-hot row (0 ln 0 = 0), ln C for the uniform row.
    """
    p = check_probs(probs)
    return special.entr(p).sum(axis=1)


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def cv_summary(per_fold: Sequence[Mapping[str, float]], confidence: float = 0.95,
               bounds: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict]:
    """Mean, sample std and Student-t interval, clipped to the metric's range, of each metric over CV folds.

    per_fold: one metrics mapping per fold (e.g. from :func:`classification_metrics`). Only keys present
    in every fold with a real-number value (or None: undefined there) in every fold are summarised (strings,
    bools skipped), in the first fold's key order. Per key: :func:`dr_ray.training.stats.t_interval` over the
    finite values -- {"mean", "std" (ddof=1), "ci_low", "ci_high", "n", "clipped", "interval",
    "undefined_folds"} -- plus "values" (every fold's value in fold order, nan kept). The interval
    mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n) is clipped to ``bounds[key]`` (default
    :func:`dr_ray.training.stats.metric_range`: [0, 1] for proportions and AUC, [-1, 1] for kappa, none for
    counts); "clipped" says whether that changed it and "interval" names the method, so a reader sees that a
    t interval over few folds is only a rough guide. n == 0 gives a nan mean; n < 2 nan std and interval.
    """
    from dr_ray.training.stats import metric_range, t_interval

    if isinstance(per_fold, Mapping) or not isinstance(per_fold, Sequence) or len(per_fold) == 0:
        raise ValueError(f"per_fold must be a non-empty sequence of mappings, got {per_fold!r}")
    for i, fold in enumerate(per_fold):
        if not isinstance(fold, Mapping):
            raise ValueError(f"per_fold[{i}] must be a mapping of metric name to value, got {type(fold).__name__}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    keys = [k for k in per_fold[0]
            if all(k in f and (f[k] is None or _is_number(f[k])) for f in per_fold)
            and any(f[k] is not None for f in per_fold)]
    out: dict[str, dict] = {}
    for k in keys:
        values = [math.nan if f[k] is None else float(f[k]) for f in per_fold]
        lim = (bounds or {}).get(k, metric_range(k))
        out[k] = {**t_interval(values, confidence=confidence, bounds=lim), "values": values}
    return out
