"""Pooled out-of-fold metrics with a **patient-level** (cluster) percentile bootstrap interval
(:func:`bootstrap_metrics`), and the paired patient-level bootstrap of an AUC difference
(:func:`bootstrap_auc_difference`). Patients are resampled with replacement, every image of a drawn patient (both
eyes) comes along with it. Each resample is a weight vector over images, so every metric of every resample comes
from weighted confusion matrices and a weighted Mann-Whitney AUC, vectorised over resamples
(:func:`weighted_metrics`). A percentile interval of a statistic bounded to [lo, hi] lies in [lo, hi]
(proportions, AUC: [0, 1]; kappa: [-1, 1]). A resample on which a metric is undefined (one class drawn only, no
predicted positive, ...) is counted in ``n_undefined``; the interval is then conditional on the metric being
defined, which is said in ``note``, and is withheld (``None`` with ``reason``) when more than ``max_undefined`` of
the resamples are undefined. Pure and Ray-free, as :mod:`dr_ray.training.stats`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from scipy import stats

from dr_ray.training.stats import check_confidence, check_paired_scores, none_if_nan

__all__ = [
    "bootstrap_auc_difference",
    "bootstrap_metrics",
    "weighted_metrics",
]

# Metrics the bootstrap reports (binary task; the 5-grade task adds the referable_* versions).
BOOTSTRAP_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk")
# Bootstrap resamples x images held in memory at once (float64): ~32 MB.
_CHUNK_CELLS = 4_000_000


# ---- weighted metrics (the bootstrap engine) ----------------------------------------------------------------

def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(den > 0, out, np.nan)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    cnt = ok.sum(axis=1)
    return _div(np.where(ok, a, 0.0).sum(axis=1), cnt.astype(np.float64))


def _weighted_confusion(w: np.ndarray, y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """w (B, N) image weights, y / pred (N,) in 0..c-1 -> (B, c, c) weighted confusion (rows true, cols pred)."""
    onehot = np.zeros((len(y), c * c))
    onehot[np.arange(len(y)), y * c + pred] = 1.0
    return (w @ onehot).reshape(-1, c, c)


def _confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-resample metrics of (B, c, c) confusion matrices; binary (c == 2) reports class 1 as positive."""
    c = cm.shape[1]
    total = cm.sum(axis=(1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    row, col = cm.sum(axis=2), cm.sum(axis=1)
    recall = _div(diag, row)
    precision = _div(diag, col)
    f1 = _div(2 * diag, row + col)
    spec = _div(total[:, None] - row - col + diag, total[:, None] - row)  # TN / (TN + FP) per class
    i = np.arange(c)
    wq = (i[:, None] - i[None, :]) ** 2.0
    expected = _div(row[:, :, None] * col[:, None, :], total[:, None, None])
    den = (wq * expected).sum(axis=(1, 2))
    qwk = 1.0 - _div((wq * cm).sum(axis=(1, 2)), den)
    out = {"accuracy": _div(diag.sum(axis=1), total), "qwk": qwk}
    if c == 2:
        out.update(sensitivity=recall[:, 1], specificity=recall[:, 0], precision=precision[:, 1], f1=f1[:, 1])
    else:
        out.update(sensitivity=_nanmean_rows(recall), specificity=_nanmean_rows(spec),
                   precision=_nanmean_rows(precision), f1=_nanmean_rows(f1))
    return out


def _weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC per row of w (B, N): sum_{i pos, j neg} w_i w_j [s_i > s_j] (ties 1/2) / (W+ W-).

    Scores are sorted once; the negative weight below and tied with each image comes from one cumulative sum.
    """
    order = np.argsort(score, kind="stable")
    s = score[order]
    pos = positive[order]
    ws = w[:, order]
    # first and last sorted index of each image's tie group
    start = np.r_[True, s[1:] != s[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(s)), 0))
    end = np.r_[s[1:] != s[:-1], True]
    last = np.minimum.accumulate(np.where(end, np.arange(len(s)), len(s))[::-1])[::-1]
    cneg = np.concatenate([np.zeros((len(w), 1)), np.cumsum(ws * ~pos, axis=1)], axis=1)
    below = cneg[:, first]
    tied = cneg[:, last + 1] - below
    wpos = ws * pos
    num = (wpos * (below + 0.5 * tied)).sum(axis=1)
    return _div(num, wpos.sum(axis=1) * cneg[:, -1])


def _binary_block(w, y01, score, threshold) -> dict[str, np.ndarray]:
    pred = (score >= threshold).astype(np.int64)
    out = _confusion_metrics(_weighted_confusion(w, y01, pred, 2))
    out["auc"] = _weighted_auc(w, y01.astype(bool), score)
    return out


def weighted_metrics(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5,
                     referable_from: int = 2) -> dict[str, np.ndarray]:
    """The :data:`BOOTSTRAP_METRICS` of :func:`~dr_ray.training.classification_metrics.classification_metrics`
    under image weights: weights (B, N) >= 0 (an integer weight repeats an image), labels (N,) int, probs
    (N, C). Returns name -> (B,) float64 (nan where undefined). With all weights 1 the values equal
    ``classification_metrics`` (binary: positive class 1 at ``threshold``; C > 2: argmax, macro means, macro
    one-vs-rest AUC; C == 5 adds ``referable_*`` of P(grade >= referable_from) at ``threshold``).
    """
    w = np.asarray(weights, np.float64)
    y = np.asarray(labels, np.int64)
    p = np.asarray(probs, np.float64)
    c = p.shape[1]
    if c == 2:
        return _binary_block(w, y, p[:, 1], threshold)
    out = _confusion_metrics(_weighted_confusion(w, y, p.argmax(axis=1), c))
    pn = p / p.sum(axis=1, keepdims=True)  # the rows classification_metrics hands sklearn (ties compare equal)
    aucs = np.stack([_weighted_auc(w, y == k, pn[:, k]) for k in range(c)], axis=1)
    out["auc"] = np.where(np.isfinite(aucs).all(axis=1), aucs.mean(axis=1), np.nan)  # as sklearn: every class
    if c == 5:
        score = np.clip(p[:, referable_from:].sum(axis=1), 0.0, 1.0)
        ref = _binary_block(w, (y >= referable_from).astype(np.int64), score, threshold)
        out.update({f"referable_{k}": v for k, v in ref.items()})
    return out


def _check_groups(groups: object, n: int) -> np.ndarray:
    g = np.asarray(groups, dtype=object)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must have shape ({n},) (one patient id per image), got {g.shape}")
    if any(v is None for v in g):
        raise ValueError("groups (patient ids) must not contain None")
    return np.unique(g.astype(str), return_inverse=True)[1]


def bootstrap_metrics(labels: np.ndarray, probs: np.ndarray, groups: Sequence, *, n_boot: int = 2000,
                      confidence: float = 0.95, seed: int = 0, threshold: float = 0.5, referable_from: int = 2,
                      max_undefined: float = 0.05) -> dict[str, dict]:
    """Pooled metrics with patient-level percentile bootstrap intervals.

    labels: (N,) int class indices; probs: (N, C) rows summing to 1 (checked as in ``classification_metrics``);
    groups: (N,) patient id per image (both eyes share one). n_boot resamples of the G patients with
    replacement (seeded by ``seed``: same inputs, same intervals); an image's weight in a resample is how often
    its patient was drawn. Interval: the (1-c)/2 and (1+c)/2 quantiles of the resampled values (percentile
    method), so it lies in the metric's range.

    Returns metric -> {estimate, ci_low, ci_high, confidence, method, unit, n, n_groups, n_boot, n_undefined}
    with ``note`` when some resamples were undefined, and ci_low/ci_high None plus ``reason`` when the estimate
    is undefined or more than ``max_undefined`` (a fraction) of the resamples are. n_boot 0: estimates only.
    """
    from dr_ray.training.classification_metrics import check_labels, check_probs

    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    codes = _check_groups(groups, len(y))
    c_level = check_confidence(confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or not 0 <= n_boot <= 1_000_000:
        raise ValueError(f"n_boot must be an integer in 0..1000000, got {n_boot!r}")
    if not 0.0 <= float(max_undefined) < 1.0:
        raise ValueError(f"max_undefined must be a fraction in [0, 1), got {max_undefined!r}")
    n, g = len(y), int(codes.max()) + 1
    est = {k: float(v[0]) for k, v in weighted_metrics(np.ones((1, n)), y, p, threshold=threshold,
                                                      referable_from=referable_from).items()}
    names = [k for k in est if k.removeprefix("referable_") in BOOTSTRAP_METRICS]
    draws: dict[str, list[np.ndarray]] = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(g, np.full(g, 1.0 / g), size=b).astype(np.float64)  # (b, G) patients drawn
        vals = weighted_metrics(counts[:, codes], y, p, threshold=threshold, referable_from=referable_from)
        for k in names:
            draws[k].append(vals[k])
        done += b
    alpha = (1.0 - c_level) / 2.0
    out: dict[str, dict] = {}
    for k in names:
        r = {"estimate": none_if_nan(est[k]), "ci_low": None, "ci_high": None, "confidence": c_level,
             "method": "percentile bootstrap", "unit": "patient", "n": n, "n_groups": g, "n_boot": int(n_boot),
             "n_undefined": 0}
        if n_boot == 0:
            r["reason"] = "n_boot = 0: no interval"
        elif r["estimate"] is None:
            r["n_undefined"] = int(n_boot)
            r["reason"] = "undefined on the pooled data (e.g. one class only)"
        else:
            v = np.concatenate(draws[k])
            ok = np.isfinite(v)
            bad = int(n_boot - ok.sum())
            r["n_undefined"] = bad
            if bad > max_undefined * n_boot:
                r["reason"] = (f"undefined on {bad} of {n_boot} resamples (> {max_undefined:.0%}): too many to "
                               "condition on, no interval")
            else:
                lo, hi = np.quantile(v[ok], [alpha, 1.0 - alpha])
                r["ci_low"], r["ci_high"] = float(lo), float(hi)
                if bad:
                    r["note"] = (f"undefined on {bad} of {n_boot} resamples (a class not drawn); the interval is "
                                 "over the defined ones")
        out[k] = r
    return out


def bootstrap_auc_difference(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, groups: Sequence, *,
                             n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired patient-level bootstrap of AUC_a - AUC_b on the same images: the cluster-aware complement of
    :func:`delong_test` (both eyes of a patient are resampled together, in both runs at once).

    labels: (N,) 0/1; score_a, score_b: (N,) scores of the two models; groups: (N,) patient ids. Returns {diff,
    ci_low, ci_high (percentile, inside [-1, 1]), se (sd of the resampled differences), z = diff / se, p
    (two-sided normal, as pROC's bootstrap roc.test), n_boot, n_undefined (resamples with one class only, left
    out and counted), n_groups, test} (+ reason; None where undefined).
    """
    c = check_confidence(confidence)
    y, sa, sb = check_paired_scores(labels, score_a, score_b)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or not 1 <= n_boot <= 1_000_000:
        raise ValueError(f"n_boot must be an integer in 1..1000000, got {n_boot!r}")
    codes = _check_groups(groups, len(y))
    pos = y == 1
    g = int(codes.max()) + 1 if len(codes) else 0
    out = {"diff": None, "ci_low": None, "ci_high": None, "se": None, "z": None, "p": None, "n_boot": int(n_boot),
           "n_undefined": 0, "n_groups": g, "confidence": c,
           "test": "paired patient-level bootstrap of the AUC difference (two-sided)"}
    if pos.sum() == 0 or (~pos).sum() == 0:
        out["reason"] = "one class only: AUC undefined"
        return out
    ones = np.ones((1, len(y)))
    out["diff"] = float(_weighted_auc(ones, pos, sa)[0] - _weighted_auc(ones, pos, sb)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // len(y)))
    diffs, done = [], 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        w = rng.multinomial(g, np.full(g, 1.0 / g), size=b).astype(np.float64)[:, codes]
        diffs.append(_weighted_auc(w, pos, sa) - _weighted_auc(w, pos, sb))
        done += b
    d = np.concatenate(diffs)
    ok = np.isfinite(d)
    out["n_undefined"] = int((~ok).sum())
    if ok.sum() < 2:
        out["reason"] = f"only {int(ok.sum())} of {n_boot} resamples define both AUCs"
        return out
    d = d[ok]
    alpha = (1.0 - c) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    se = float(d.std(ddof=1))
    out.update(ci_low=float(lo), ci_high=float(hi), se=se)
    if se <= 1e-15:
        if abs(out["diff"]) < 1e-15:
            out.update(z=0.0, p=1.0)
        out["reason"] = "the resampled differences do not vary"
        return out
    out["z"] = out["diff"] / se
    out["p"] = float(2.0 * stats.norm.sf(abs(out["z"])))
    return out

