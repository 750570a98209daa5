"""Paired comparisons of two runs. :func:`corrected_resampled_t`: the Nadeau & Bengio (2003) corrected resampled t
test of per-fold differences between two runs on the same folds (Var is inflated by n_test/n_train because the
folds share training data; the plain paired t is anti-conservative), with :func:`compare_folds` applying it per
metric. :func:`delong_test`: the DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUCs on the same
images, with the fast midrank algorithm of Sun & Xu (2014, IEEE SPL 21(11)). :func:`wilcoxon_signed_rank`: only
when the number of pairs can reach p < alpha at all (5 folds: the smallest exact two-sided p is 2 / 2**5 = 0.0625,
so it is not reported). Pure and Ray-free, as :mod:`dr_ray.training.stats`; undefined values are ``None`` with a
``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from dr_ray.training.stats import check_confidence, check_paired_scores, metric_range, none_if_nan

__all__ = [
    "compare_folds",
    "corrected_resampled_t",
    "delong_test",
    "wilcoxon_signed_rank",
]


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
    c = check_confidence(confidence)
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
    out = {"mean_diff": none_if_nan(float(d.mean())) if j else None, "t": None, "df": j - 1 if j else None,
           "p": None, "ci_low": None, "ci_high": None, "n": j, "dropped": int((~keep).sum()),
           "correction": none_if_nan(ratio), "test": "Nadeau-Bengio corrected resampled t (two-sided)"}
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
    c = check_confidence(confidence)
    y, sa, sb = check_paired_scores(labels, score_a, score_b)
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
