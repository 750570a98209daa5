"""Intervals and paired tests that hold: patient-level bootstrap, clipped t, corrected resampled t, DeLong
(against R's pROC), Wilcoxon only when informative; degenerate folds; every interval inside the metric's range."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dr_ray.training.classification_metrics import classification_metrics
from dr_ray.training.stats import metric_range, t_interval
from dr_ray.training.stats_bootstrap import bootstrap_auc_difference, bootstrap_metrics, weighted_metrics
from dr_ray.training.stats_paired import compare_folds, corrected_resampled_t, delong_test, wilcoxon_signed_rank


def _probs(rng, n: int, c: int, ties: bool = False) -> np.ndarray:
    p = rng.dirichlet(np.ones(c), n)
    if ties:  # coarse scores: many tied values, as thresholded or quantised models give
        p = np.round(p, 1) + 1e-3
        p /= p.sum(axis=1, keepdims=True)
    return p


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


# ---- the weighted engine agrees with classification_metrics ------------------------------------------------

@pytest.mark.parametrize("c", [2, 3, 5])
def test_unit_and_integer_weights_equal_classification_metrics_on_repeated_rows(c):
    rng = np.random.default_rng(c)
    for trial in range(6):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, c, n)
        p = _probs(rng, n, c, ties=trial % 2 == 1)
        reps = rng.integers(0, 3, n)
        reps[0] = 1
        for w, yy, pp in ((np.ones(n), y, p), (reps, np.repeat(y, reps), np.repeat(p, reps, axis=0))):
            got = weighted_metrics(w[None, :], y, p)
            ref = classification_metrics(yy, pp)
            for k, v in got.items():
                assert _same(float(v[0]), ref[k]), (c, trial, k, float(v[0]), ref[k])


# ---- bootstrap ----------------------------------------------------------------------------------------------

def _binary_data(rng, n: int, signal: float = 0.3):
    y = rng.integers(0, 2, n)
    s = np.clip(y * signal + rng.uniform(0, 1 - signal, n), 0, 1)
    return y, np.stack([1 - s, s], axis=1)


def test_bootstrap_resamples_patients_not_images():
    # 60 patients, both eyes identical: resampling patients is resampling the 60 distinct images (same seed,
    # same intervals); resampling the 120 images as if independent gives too-narrow intervals
    rng = np.random.default_rng(0)
    y, p = _binary_data(rng, 60)
    one = bootstrap_metrics(y, p, np.arange(60), n_boot=500, seed=3)
    two_eyes = bootstrap_metrics(np.repeat(y, 2), np.repeat(p, 2, axis=0), np.repeat(np.arange(60), 2),
                                 n_boot=500, seed=3)
    naive = bootstrap_metrics(np.repeat(y, 2), np.repeat(p, 2, axis=0), np.arange(120), n_boot=500, seed=3)
    for k in ("auc", "accuracy", "sensitivity", "specificity"):
        assert two_eyes[k]["ci_low"] == pytest.approx(one[k]["ci_low"])
        assert two_eyes[k]["ci_high"] == pytest.approx(one[k]["ci_high"])
        assert two_eyes[k]["n_groups"] == 60 and two_eyes[k]["unit"] == "patient"
        width = two_eyes[k]["ci_high"] - two_eyes[k]["ci_low"]
        assert naive[k]["ci_high"] - naive[k]["ci_low"] < 0.85 * width, k


def test_bootstrap_is_seeded_and_matches_scipy_for_independent_images():
    rng = np.random.default_rng(1)
    y, p = _binary_data(rng, 200, 0.2)
    a = bootstrap_metrics(y, p, np.arange(200), n_boot=4000, seed=7)
    assert a == bootstrap_metrics(y, p, np.arange(200), n_boot=4000, seed=7)
    assert a != bootstrap_metrics(y, p, np.arange(200), n_boot=4000, seed=8)
    correct = ((p[:, 1] >= 0.5) == y).astype(float)
    ref = stats.bootstrap((correct,), np.mean, n_resamples=4000, method="percentile", random_state=0,
                          confidence_level=0.95).confidence_interval
    assert a["accuracy"]["estimate"] == pytest.approx(correct.mean())
    assert a["accuracy"]["ci_low"] == pytest.approx(ref.low, abs=0.01)
    assert a["accuracy"]["ci_high"] == pytest.approx(ref.high, abs=0.01)


def test_bootstrap_of_one_class_data_gives_null_auc_with_reason():
    y = np.zeros(10, int)
    p = np.stack([np.linspace(0.9, 0.1, 10), np.linspace(0.1, 0.9, 10)], axis=1)
    r = bootstrap_metrics(y, p, np.arange(10) // 2, n_boot=200)
    assert r["auc"]["estimate"] is None and r["auc"]["ci_low"] is None and "one class" in r["auc"]["reason"]
    assert r["sensitivity"]["estimate"] is None  # no positive label
    assert r["specificity"]["estimate"] == pytest.approx(0.5) and r["specificity"]["ci_low"] is not None


def test_bootstrap_counts_undefined_resamples_and_withholds_when_too_many():
    # 1 positive among 30 patients: ~1/e of the resamples draw no positive -> AUC undefined there
    y = np.zeros(30, int)
    y[0] = 1
    rng = np.random.default_rng(2)
    p = _probs(rng, 30, 2)
    r = bootstrap_metrics(y, p, np.arange(30), n_boot=1000, seed=0)
    assert r["auc"]["estimate"] is not None
    assert 250 < r["auc"]["n_undefined"] < 500  # (29/30)**30 = 0.36
    assert r["auc"]["ci_low"] is None and "undefined on" in r["auc"]["reason"]
    lenient = bootstrap_metrics(y, p, np.arange(30), n_boot=1000, seed=0, max_undefined=0.5)
    assert lenient["auc"]["ci_low"] is not None and "over the defined ones" in lenient["auc"]["note"]
    assert lenient["auc"]["n_undefined"] == r["auc"]["n_undefined"]


def test_bootstrap_of_equal_predictions_and_tiny_n():
    y = np.array([0, 1, 0, 1, 1])
    p = np.tile([0.4, 0.6], (5, 1))  # one score for all: AUC 0.5 by ties, every image predicted positive
    r = bootstrap_metrics(y, p, np.arange(5), n_boot=300)
    assert r["auc"]["estimate"] == 0.5 and r["specificity"]["estimate"] == 0.0 and r["sensitivity"]["estimate"] == 1
    assert r["auc"]["ci_low"] == r["auc"]["ci_high"] == 0.5 or r["auc"]["ci_low"] is None
    single = bootstrap_metrics(np.array([1]), np.array([[0.2, 0.8]]), ["p0"], n_boot=50)
    assert single["accuracy"] == {**single["accuracy"], "estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert single["auc"]["estimate"] is None


def test_every_interval_lies_in_the_metric_range_on_random_inputs():
    rng = np.random.default_rng(3)
    for trial in range(60):
        c = int(rng.choice([2, 5]))
        n = int(rng.integers(1, 30))
        y = rng.integers(0, c, n) if trial % 5 else np.full(n, int(rng.integers(0, c)))
        p = _probs(rng, n, c, ties=trial % 3 == 0) if trial % 7 else np.full((n, c), 1.0 / c)
        groups = rng.integers(0, max(1, n // 2), n)
        res = bootstrap_metrics(y, p, groups, n_boot=100, seed=trial, max_undefined=0.99)
        for k, r in res.items():
            lo, hi = metric_range(k)
            if r["ci_low"] is not None:
                assert lo <= r["ci_low"] <= r["ci_high"] <= hi, (trial, k, r)
        folds = [float(v) for v in rng.uniform(0, 1, int(rng.integers(1, 8))) ** rng.uniform(0.1, 5)]
        for k in ("sensitivity", "qwk", "auc"):
            lo, hi = metric_range(k)
            vals = [lo + (hi - lo) * v for v in folds]
            t = t_interval(vals, bounds=(lo, hi), confidence=float(rng.uniform(0.5, 0.999)))
            if math.isfinite(t["ci_low"]):
                assert lo <= t["ci_low"] <= t["mean"] <= t["ci_high"] <= hi


def test_bootstrap_validates_inputs():
    y, p = np.array([0, 1]), np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_metrics(y, p, ["a"])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_metrics(y, p, ["a", None])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_metrics(y, p, ["a", "b"], n_boot=-1)
    with pytest.raises(ValueError, match="probs"):
        bootstrap_metrics(y, np.array([[0.5, 0.6], [0.2, 0.8]]), ["a", "b"])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_metrics(y, p, ["a", "b"], confidence=95)


# ---- clipped t over folds -----------------------------------------------------------------------------------

def test_t_interval_known_answer_and_labels():
    t = t_interval([0.8, 0.9, 1.0], bounds=(0, 1))
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert t["ci_low"] == pytest.approx(0.9 - half) and t["ci_high"] == 1.0  # 0.9 + 0.248 clipped
    assert t["clipped"] and t["interval"] == "Student t over folds, clipped to [0, 1]"
    one = t_interval([0.5, None, math.nan])
    assert one["n"] == 1 and math.isnan(one["ci_low"]) and one["undefined_folds"] == [1, 2] and "1 fold" in one["reason"]
    assert t_interval([3.0, 5.0])["interval"] == "Student t over folds (no range to clip to)"
    with pytest.raises(ValueError, match="bounds"):
        t_interval([0.1, 0.2], bounds=(1, 0))


# ---- corrected resampled t and Wilcoxon -----------------------------------------------------------------------

def test_corrected_resampled_t_known_answer():
    a = [0.81, 0.84, 0.79, 0.86, 0.83]
    b = [0.78, 0.80, 0.80, 0.82, 0.79]
    d = np.subtract(a, b)
    n_train, n_test = [120, 120, 119, 121, 120], [30, 30, 31, 29, 30]
    r = corrected_resampled_t(a + [None], b + [0.5], n_train=n_train + [100], n_test=n_test + [20], bounds=(0, 1))
    ratio = np.mean(n_test) / np.mean(n_train)  # 0.25 = 1 / (K - 1)
    se = math.sqrt((1 / 5 + ratio) * d.var(ddof=1))
    assert r["n"] == 5 and r["dropped"] == 1 and r["correction"] == pytest.approx(0.25)
    assert r["mean_diff"] == pytest.approx(0.028) and r["t"] == pytest.approx(d.mean() / se) and r["df"] == 4
    assert r["p"] == pytest.approx(2 * stats.t.sf(d.mean() / se, 4))
    naive = stats.ttest_rel(a, b)
    assert abs(r["t"]) < abs(naive.statistic) and r["p"] > naive.pvalue  # the correction is conservative
    half = stats.t.ppf(0.975, 4) * se
    assert r["ci_low"] == pytest.approx(0.028 - half) and r["ci_high"] == pytest.approx(0.028 + half)


def test_corrected_resampled_t_degenerate():
    same = corrected_resampled_t([0.8, 0.7, 0.9], [0.8, 0.7, 0.9], n_train=80, n_test=20)
    assert same["mean_diff"] == 0 and same["p"] is None and "zero" in same["reason"]
    const = corrected_resampled_t([0.8, 0.7], [0.7, 0.6], n_train=80, n_test=20)
    assert const["t"] is None and "zero variance" in const["reason"]
    few = corrected_resampled_t([0.8, None], [0.7, 0.6], n_train=80, n_test=20)
    assert few["n"] == 1 and few["p"] is None and "2" in few["reason"]
    with pytest.raises(ValueError, match="n_train"):
        corrected_resampled_t([0.8, 0.7], [0.7, 0.5], n_train=0, n_test=20)
    with pytest.raises(ValueError, match="one length"):
        corrected_resampled_t([0.8, 0.7], [0.7], n_train=8, n_test=2)


def test_wilcoxon_only_when_it_can_reach_the_level():
    five = wilcoxon_signed_rank([0.9] * 5, [0.8] * 5)
    assert five["p"] is None and five["min_p"] == 0.0625 and "0.0625" in five["reason"]
    six = wilcoxon_signed_rank([0.9, 0.8, 0.7, 0.85, 0.95, 0.6], [0.8, 0.75, 0.6, 0.8, 0.7, 0.5])
    assert six["p"] == pytest.approx(2 / 64)  # all six differences positive: exact two-sided 2 / 2**6
    mixed = wilcoxon_signed_rank(np.arange(10.0), np.arange(10.0)[::-1])
    assert mixed["p"] == pytest.approx(stats.wilcoxon(np.arange(10.0) - np.arange(10.0)[::-1], method="exact").pvalue)


def test_compare_folds_uses_the_fold_sizes():
    ours = [{"fold": k, "auc": 0.8 + 0.01 * k, "sensitivity": None, "train_images": 100, "test_images": 25}
            for k in range(5)]
    theirs = [{"fold": k, "auc": 0.78 + 0.005 * k * k, "sensitivity": 0.5} for k in range(5)]
    r = compare_folds(ours, theirs, ["auc", "sensitivity", "accuracy"])
    assert set(r) == {"auc"}  # sensitivity undefined in our run, accuracy in neither
    assert r["auc"]["correction"] == pytest.approx(0.25) and r["auc"]["wilcoxon"]["p"] is None


# ---- DeLong -----------------------------------------------------------------------------------------------------

# Reference values: R 4.2.2, pROC 1.18.0 --
#   ra <- roc(y, a, direction="<"); rb <- roc(y, b, direction="<"); roc.test(ra, rb, method="delong", paired=TRUE)
#   var(ra, method="delong"); var(rb, method="delong"); cov(ra, rb, method="delong")
PROC_Y = [0] * 12 + [1] * 10
PROC_A = [0.10, 0.22, 0.35, 0.41, 0.18, 0.50, 0.27, 0.62, 0.33, 0.44, 0.05, 0.58,
          0.71, 0.38, 0.88, 0.64, 0.92, 0.55, 0.47, 0.81, 0.69, 0.35]
PROC_B = [2, 1, 3, 2, 1, 4, 2, 3, 5, 1, 2, 3, 4, 2, 5, 3, 4, 4, 1, 5, 3, 2]


def test_delong_matches_r_proc_roc_test():
    r = delong_test(np.array(PROC_Y), np.array(PROC_A), np.array(PROC_B, float))
    assert r["auc_a"] == pytest.approx(0.870833333333333, abs=1e-12)
    assert r["auc_b"] == pytest.approx(0.691666666666667, abs=1e-12)
    assert r["z"] == pytest.approx(1.81515096616967, rel=1e-10)
    assert r["p"] == pytest.approx(0.0695007126729573, rel=1e-10)
    assert r["var_a"] == pytest.approx(0.00562675364758698, rel=1e-10)
    assert r["var_b"] == pytest.approx(0.0135549943883277, rel=1e-10)
    assert r["cov"] == pytest.approx(0.00471941638608305, rel=1e-10)
    assert r["ci_low"] == pytest.approx(-0.01429394, abs=1e-8) and r["ci_high"] == pytest.approx(0.37262728, abs=1e-8)


def _delong_by_definition(y, a, b):
    """DeLong et al. 1988 eq. for the structural components, O(m n): psi(X, Y) = 1 if X > Y, 1/2 if equal."""
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = np.array([[1.0 if p > q else 0.5 if p == q else 0.0 for q in z] for p in x])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (t1, v10a, v01a), (t2, v10b, v01b) = out
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    return t1, t2, (t1 - t2) / math.sqrt(var)


def test_fast_delong_equals_the_definition_on_tied_scores():
    rng = np.random.default_rng(4)
    for _ in range(5):
        n = int(rng.integers(8, 40))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        y[2:4] = [0, 1]
        a = np.round(y * 0.3 + rng.uniform(size=n), 1)
        b = np.round(rng.uniform(size=n), 1)
        r = delong_test(y, a, b)
        t1, t2, z = _delong_by_definition(y, a, b)
        assert r["auc_a"] == pytest.approx(t1) and r["auc_b"] == pytest.approx(t2) and r["z"] == pytest.approx(z)


def test_delong_degenerate_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(y, s, s)
    assert same["z"] == 0 and same["p"] == 1.0 and "identical" in same["reason"]
    mono = delong_test(y, s, np.exp(s))  # a monotone transform has the same ROC curve
    assert mono["diff"] == 0 and mono["p"] == 1.0
    one = delong_test(np.zeros(6, int), s, s[::-1])
    assert one["p"] is None and one["auc_a"] is None and "positive" in one["reason"]
    with pytest.raises(ValueError, match="0/1"):
        delong_test(np.array([0, 2, 1, 0]), s[:4], s[:4])
    with pytest.raises(ValueError, match="one length"):
        delong_test(y, s, s[:3])


def test_delong_is_calibrated_under_the_null():
    # two equally good, independent-noise scores: p < 0.05 in about 5 % of 300 replicates
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(300):
        y = rng.integers(0, 2, 80)
        hits += delong_test(y, y + rng.normal(0, 1.2, 80), y + rng.normal(0, 1.2, 80))["p"] < 0.05
    assert 3 <= hits <= 30  # binomial(300, 0.05): mean 15, 99.9 % within this range


def test_pairs_by_definition_helper_is_not_vacuous():
    # the definition helper itself against sklearn's AUC (guards the known-answer test above)
    from sklearn.metrics import roc_auc_score

    y = np.array(PROC_Y)
    a = np.array(PROC_A)
    t1, _, _ = _delong_by_definition(y, a, np.array(PROC_B, float))
    assert t1 == pytest.approx(roc_auc_score(y, a))


def test_patient_bootstrap_of_the_auc_difference():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 50)
    good, noise = y + rng.normal(0, 0.5, 50), rng.normal(0, 1, 50)
    one = bootstrap_auc_difference(y, good, noise, np.arange(50), n_boot=400, seed=1)
    two_eyes = bootstrap_auc_difference(np.repeat(y, 2), np.repeat(good, 2), np.repeat(noise, 2),
                                        np.repeat(np.arange(50), 2), n_boot=400, seed=1)
    assert two_eyes["ci_low"] == pytest.approx(one["ci_low"]) and two_eyes["ci_high"] == pytest.approx(one["ci_high"])
    d = delong_test(y, good, noise)
    assert one["diff"] == pytest.approx(d["diff"]) and one["p"] < 0.01 and d["p"] < 0.01
    assert -1.0 <= one["ci_low"] <= one["diff"] <= one["ci_high"] <= 1.0
    same = bootstrap_auc_difference(y, good, good, np.arange(50), n_boot=50)
    assert same["diff"] == 0 and same["p"] == 1.0 and "do not vary" in same["reason"]
    assert "one class" in bootstrap_auc_difference(np.zeros(4, int), good[:4], noise[:4], np.arange(4))["reason"]
