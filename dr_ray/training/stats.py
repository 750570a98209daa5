"""Statistics of every reported number: intervals and paired tests that hold.

All functions are pure (arrays in, dicts out) and Ray-free.

* :func:`bootstrap_metrics` -- pooled out-of-fold metrics with a **patient-level** (cluster) percentile
  bootstrap interval: patients are resampled with replacement, every image of a drawn patient (both eyes) comes
  along with it. Each resample is a weight vector over images, so every metric of every resample comes from
  weighted confusion matrices and a weighted Mann-Whitney AUC, vectorised over resamples. A percentile interval of
  a statistic bounded to [lo, hi] lies in [lo, hi] (proportions, AUC: [0, 1]; kappa: [-1, 1]). A resample on
  which a metric is undefined (one class drawn only, no predicted positive, ...) is counted in ``n_undefined``;
  the interval is then conditional on the metric being defined, which is said in ``note``, and is withheld
  (``None`` with ``reason``) when more than ``max_undefined`` of the resamples are undefined.
* :func:`t_interval` -- mean over folds with a Student-t interval clipped to the metric's range and labelled
  as such (an unclipped t over 5 folds printed sensitivity 0.300..1.256).
* :func:`corrected_resampled_t` -- Nadeau & Bengio (2003) corrected resampled t test of per-fold differences
  between two runs on the same folds: Var is inflated by n_test/n_train because the folds share training data
  (the plain paired t is anti-conservative).
* :func:`delong_test` -- DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUCs on the same images,
  with the fast midrank algorithm of Sun & Xu (2014, IEEE SPL 21(11)).
* :func:`wilcoxon_signed_rank` -- only when the number of pairs can reach p < alpha at all
  (5 folds: the smallest exact two-sided p is 2 / 2**5 = 0.0625, so it is not reported).

Undefined values are ``None`` (JSON null) with a ``reason``, never 0.5, 0 or a silently dropped row.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "METRIC_RANGES",
    "bootstrap_auc_difference",
    "bootstrap_metrics",
    "compare_folds",
    "corrected_resampled_t",
    "delong_test",
    "metric_range",
    "t_interval",
    "weighted_metrics",
    "wilcoxon_signed_rank",
]

log = logging.getLogger(__name__)

_UNIT = (0.0, 1.0)
_KAPPA = (-1.0, 1.0)
# The range each metric can take; intervals are clipped to it (t) or lie in it by construction (bootstrap).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "auc": _UNIT, "accuracy": _UNIT, "sensitivity": _UNIT, "specificity": _UNIT, "precision": _UNIT,
    "f1": _UNIT, "ece": _UNIT, "qwk": _KAPPA, "loss": (0.0, math.inf),
}
# Metrics the bootstrap reports (binary task; the 5-grade task adds the referable_* versions).
BOOTSTRAP_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk")
# Bootstrap resamples x images held in memory at once (float64): ~32 MB.
_CHUNK_CELLS = 4_000_000


def metric_range(name: str) -> tuple[float, float]:
    """(low, high) a metric named ``name`` can take (``referable_`` prefix ignored); (-inf, inf) if unknown."""
    base = name[len("referable_"):] if name.startswith("referable_") else name
    return METRIC_RANGES.get(base, (-math.inf, math.inf))


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _none_if_nan(v: float) -> float | None:
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
    c = _check_confidence(confidence)
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
    c_level = _check_confidence(confidence)
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
        r = {"estimate": _none_if_nan(est[k]), "ci_low": None, "ci_high": None, "confidence": c_level,
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
    c = _check_confidence(confidence)
    y = np.asarray(labels)
    sa = np.asarray(score_a, np.float64)
    sb = np.asarray(score_b, np.float64)
    if y.ndim != 1 or sa.shape != y.shape or sb.shape != y.shape:
        raise ValueError(f"labels, score_a and score_b must be 1-D of one length, got {y.shape}, {sa.shape}, "
                         f"{sb.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
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


# ---- paired comparisons of two runs ----------------------------------------------------------------------

def corrected_resampled_t(a: Sequence[float | None], b: Sequence[float | None], *, n_train: Sequence[float] | float,
                          n_test: Sequence[float] | float, confidence: float = 0.95,
                          bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Nadeau & Bengio (2003, Machine Learning 52:239) corrected resampled t test of a - b over J folds.

    a, b: (J,) per-fold values of run a and of the baseline b on the same folds; pairs with a missing value on
    either side are dropped (and counted). n_train / n_test: training and test images per fold (scalars or
    (J,)); the correction uses the ratio of their means, n_test / n_train (1 / (K-1) for K equal folds).
    t = mean(d) / sqrt((1/J + n_test/n_train) s_d^2), J - 1 degrees of freedom, two-sided p. The interval of
    the mean difference is clipped to [lo - hi, hi - lo] of ``bounds`` (the metric's range).
    Returns {mean_diff, t, df, p, ci_low, ci_high, n, dropped, correction, test} (+ reason; None where undefined).
    """
    c = _check_confidence(confidence)
    x = np.array([math.nan if v is None else float(v) for v in a])
    z = np.array([math.nan if v is None else float(v) for v in b])
    if x.ndim != 1 or z.shape != x.shape:
        raise ValueError(f"a and b must be 1-D of one length (one value per fold), got {x.shape} and {z.shape}")
    ntr = np.broadcast_to(np.asarray(n_train, np.float64), x.shape)
    nte = np.broadcast_to(np.asarray(n_test, np.float64), x.shape)
    if (ntr <= 0).any() or (nte <= 0).any():
        raise ValueError(f"n_train and n_test must be positive image counts, got {n_train!r}, {n_test!r}")
    keep = np.isfinite(x) & np.isfinite(z)
    d = x[keep] - z[keep]
    j = len(d)
    ratio = float(nte[keep].mean() / ntr[keep].mean()) if j else math.nan
    out = {"mean_diff": _none_if_nan(float(d.mean())) if j else None, "t": None, "df": j - 1 if j else None,
           "p": None, "ci_low": None, "ci_high": None, "n": j, "dropped": int((~keep).sum()),
           "correction": _none_if_nan(ratio), "test": "Nadeau-Bengio corrected resampled t (two-sided)"}
    if j < 2:
        out["reason"] = f"need at least 2 folds with a value in both runs, got {j}"
        return out
    var = float(d.var(ddof=1))
    if np.ptp(d) <= 1e-12:  # equal up to float rounding (0.8 - 0.7 vs 0.7 - 0.6)
        out["reason"] = ("all differences are zero" if np.all(np.abs(d) <= 1e-12) else
                         "constant non-zero difference (zero variance): t undefined")
        return out
    se = math.sqrt((1.0 / j + ratio) * var)
    t = float(d.mean()) / se
    half = float(stats.t.ppf((1.0 + c) / 2.0, j - 1)) * se
    span = float(bounds[1]) - float(bounds[0])
    out.update(t=t, p=float(2.0 * stats.t.sf(abs(t), j - 1)),
               ci_low=max(float(d.mean()) - half, -span), ci_high=min(float(d.mean()) + half, span))
    return out


def wilcoxon_signed_rank(a: Sequence[float | None], b: Sequence[float | None], *, alpha: float = 0.05) -> dict:
    """Exact two-sided Wilcoxon signed-rank test of a - b, reported only when it can reach p < ``alpha``.

    With n non-zero differences the smallest attainable two-sided p is 2 / 2**n (all signs equal): 5 folds give
    0.0625, so with n <= 5 (alpha 0.05) p is None and ``reason`` says why. Returns {p, n, min_p, test} (+ reason).
    """
    x = np.array([math.nan if v is None else float(v) for v in a])
    z = np.array([math.nan if v is None else float(v) for v in b])
    if x.ndim != 1 or z.shape != x.shape:
        raise ValueError(f"a and b must be 1-D of one length, got {x.shape} and {z.shape}")
    d = (x - z)[np.isfinite(x) & np.isfinite(z)]
    d = d[d != 0]
    n = len(d)
    min_p = 2.0 / 2.0 ** n if n else 1.0
    out = {"p": None, "n": n, "min_p": min_p, "test": "Wilcoxon signed-rank (exact, two-sided)"}
    if min_p >= alpha:
        out["reason"] = (f"with {n} non-zero paired differences the smallest attainable two-sided p is "
                         f"{min_p:.4g} >= {alpha}: the test cannot reject, so no p is reported")
        return out
    out["p"] = float(stats.wilcoxon(d, method="exact").pvalue)
    return out


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_test(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, confidence: float = 0.95) -> dict:
    """DeLong et al. (1988) test of two correlated ROC AUCs on the same images (fast algorithm, Sun & Xu 2014).

    labels: (N,) in {0, 1}; score_a, score_b: (N,) scores of the two models for the same images (higher =
    more likely positive). Placement values V10 (per positive) and V01 (per negative) from midranks give
    AUC_r = mean(V10_r) and the covariance S = S10/m + S01/n (m positives, n negatives); var(AUC_a - AUC_b) =
    S_aa + S_bb - 2 S_ab; z = diff / sqrt(var), two-sided normal p, and a normal interval of the difference
    clipped to [-1, 1]. Images are treated as independent: images of one patient are correlated, so for both
    eyes per patient the p is somewhat anti-conservative (the patient-level bootstrap of the pooled AUCs is the
    cluster-aware complement). Returns {auc_a, auc_b, diff, se, z, p, ci_low, ci_high, var_a, var_b, cov, n,
    n_positive, test} (+ reason; None where undefined). Identical curves give z = 0, p = 1 (as pROC).
    """
    c = _check_confidence(confidence)
    y = np.asarray(labels)
    sa = np.asarray(score_a, np.float64)
    sb = np.asarray(score_b, np.float64)
    if y.ndim != 1 or sa.shape != y.shape or sb.shape != y.shape:
        raise ValueError(f"labels, score_a and score_b must be 1-D of one length, got {y.shape}, {sa.shape}, "
                         f"{sb.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
        raise ValueError("score_a and score_b must be finite")
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    out = {"auc_a": None, "auc_b": None, "diff": None, "se": None, "z": None, "p": None, "ci_low": None,
           "ci_high": None, "var_a": None, "var_b": None, "cov": None, "n": len(y), "n_positive": m,
           "test": "DeLong paired AUC test (two-sided)"}
    if m < 2 or n < 2:
        out["reason"] = f"need at least 2 positive and 2 negative images, got {m} and {n}"
        return out
    scores = np.stack([sa, sb])
    x, yneg = scores[:, pos], scores[:, ~pos]
    tx = np.stack([_midrank(r) for r in x])
    ty = np.stack([_midrank(r) for r in yneg])
    tz = np.stack([_midrank(r) for r in np.concatenate([x, yneg], axis=1)])
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s = np.cov(v10) / m + np.cov(v01) / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = float(auc[0] - auc[1])
    out.update(auc_a=float(auc[0]), auc_b=float(auc[1]), diff=diff, var_a=float(s[0, 0]), var_b=float(s[1, 1]),
               cov=float(s[0, 1]))
    if var <= 1e-15:
        if abs(diff) < 1e-15:
            out.update(se=0.0, z=0.0, p=1.0, ci_low=0.0, ci_high=0.0)
            out["reason"] = "identical ROC curves: difference 0 with zero variance"
        else:
            out["reason"] = "zero variance of the AUC difference: z undefined"
        return out
    se = math.sqrt(var)
    z = diff / se
    half = float(stats.norm.ppf((1.0 + c) / 2.0)) * se
    out.update(se=se, z=z, p=float(2.0 * stats.norm.sf(abs(z))), ci_low=max(diff - half, -1.0),
               ci_high=min(diff + half, 1.0))
    return out


def compare_folds(ours: Sequence[Mapping], theirs: Sequence[Mapping], metrics: Sequence[str], *,
                  confidence: float = 0.95, alpha: float = 0.05) -> dict[str, dict]:
    """Per metric, the corrected resampled t (and the Wilcoxon when informative) of two runs' per-fold rows.

    ours, theirs: per-fold rows in the same fold order, each with the metric values and ``train_images`` /
    ``test_images`` (or ``val_images``) counts; the counts of ``ours`` drive the correction. Returns
    metric -> {**corrected_resampled_t, "wilcoxon": wilcoxon_signed_rank}.
    """
    if len(ours) != len(theirs):
        raise ValueError(f"ours and theirs must list the same folds, got {len(ours)} and {len(theirs)} rows")
    n_train = [float(f["train_images"]) for f in ours]
    n_test = [float(f.get("test_images", f.get("val_images"))) for f in ours]
    out: dict[str, dict] = {}
    for m in metrics:
        a = [f.get(m) for f in ours]
        b = [f.get(m) for f in theirs]
        if all(v is None for v in a) or all(v is None for v in b):
            continue
        r = corrected_resampled_t(a, b, n_train=n_train, n_test=n_test, confidence=confidence,
                                  bounds=metric_range(m))
        r["wilcoxon"] = wilcoxon_signed_rank(a, b, alpha=alpha)
        out[m] = r
    return out
