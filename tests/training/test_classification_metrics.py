"""Known answers for the image-level classification metrics, calibration and fold summaries (paired tests of two
runs: tests/training/test_stats.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from dr_ray.training.classification_metrics import (
    classification_metrics,
    cv_summary,
    expected_calibration_error,
    predictive_entropy,
    reliability_bins,
)

# 8 samples: 4 negatives then 4 positives, P(class 1) per sample
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORE = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.45, 0.9, 0.3])


def _binary_probs(score: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - score, score], axis=1)


def _mann_whitney_fraction(labels: np.ndarray, score: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ordered correctly, ties counting 1/2: the AUC by hand."""
    pos, neg = score[labels == 1], score[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _onehotish(preds: np.ndarray, n_classes: int, top: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``preds``: ``top`` on the predicted class, the rest shared evenly."""
    p = np.full((len(preds), n_classes), (1.0 - top) / (n_classes - 1))
    p[np.arange(len(preds)), preds] = top
    return p


# ---- binary -------------------------------------------------------------------------------------------------

def test_binary_metrics_match_hand_counts():
    m = classification_metrics(LABELS, _binary_probs(SCORE))
    # preds at 0.5: [0,0,0,1 | 1,0,1,0] -> tp 2 (0.7, 0.9), fn 2, fp 1 (0.8), tn 3
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 3, 2)
    assert m["n"] == 8 and m["n_positive"] == 4
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 4/7
    # positives 0.7 > 3 negatives, 0.45 > 3, 0.9 > 4, 0.3 > 1 -> 11 of 16 pairs
    assert _mann_whitney_fraction(LABELS, SCORE) == 11 / 16
    assert m["auc"] == pytest.approx(11 / 16)
    # binary quadratic kappa is Cohen's kappa: po = 5/8, pe = 4/8 * 3/8 + 4/8 * 5/8 = 1/2
    assert m["qwk"] == pytest.approx((5 / 8 - 1 / 2) / (1 - 1 / 2))


def test_threshold_moves_the_confusion_counts():
    m = classification_metrics(LABELS, _binary_probs(SCORE), threshold=0.4)
    # >= 0.4: negatives 0.4, 0.8 flip to positive; positives 0.7, 0.45, 0.9
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 2, 1)
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 4)
    assert m["auc"] == pytest.approx(11 / 16)  # threshold-free


def test_one_class_gives_nan_auc_and_sensitivity():
    m = classification_metrics(np.zeros(4, int), _binary_probs(np.array([0.1, 0.2, 0.6, 0.3])))
    assert math.isnan(m["auc"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(3 / 4) and m["n_positive"] == 0


def test_no_predicted_positive_gives_nan_precision():
    m = classification_metrics(LABELS, _binary_probs(SCORE), threshold=0.95)
    assert m["tp"] == 0 and m["fp"] == 0
    assert math.isnan(m["precision"])
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert m["f1"] == 0.0  # 2 tp / (2 tp + fp + fn) = 0 / 4 is defined


# ---- multi-class ------------------------------------------------------------------------------------------

def _weighted_kappa_by_hand(y: np.ndarray, p: np.ndarray, c: int) -> float:
    o = np.zeros((c, c))
    np.add.at(o, (y, p), 1)
    w = (np.arange(c)[:, None] - np.arange(c)[None, :]) ** 2 / (c - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    return 1.0 - (w * o).sum() / (w * e).sum()


def test_qwk_perfect_agreement_is_one():
    y = np.array([0, 1, 2, 3, 4, 2, 1])
    assert classification_metrics(y, _onehotish(y, 5))["qwk"] == pytest.approx(1.0)


def test_qwk_and_macro_metrics_of_a_small_confusion_matrix():
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 2, 2, 1])
    # O has 1 at (0,0), (1,2), (2,2), (2,1); sum W*O = 2 * 1/4; row = col sums [1, 1, 2]
    # sum W*E = sum_ij r_i c_j (i-j)^2 / 4 / N = (1+1+8+8+2+2) / 16 -> kappa = 1 - 0.5 / (22/16) = 7/11
    assert _weighted_kappa_by_hand(y, pred, 3) == pytest.approx(7 / 11)
    m = classification_metrics(y, _onehotish(pred, 3))
    assert m["qwk"] == pytest.approx(7 / 11)
    assert m["accuracy"] == pytest.approx(2 / 4)
    # specificity per class: 0 -> 3/3, 1 -> 2/3 (sample 3 predicted 1), 2 -> 1/2 (sample 1 predicted 2)
    assert m["specificity"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert m["sensitivity"] == pytest.approx((1 + 0 + 1 / 2) / 3)
    assert m["precision"] == pytest.approx((1 + 0 + 1 / 2) / 3)
    assert m["f1"] == pytest.approx((1 + 0 + 1 / 2) / 3)  # per-class f1 = 1, 0, 2*1/(2+1+1)
    p = _onehotish(pred, 3)
    ovr = [_mann_whitney_fraction((y == c).astype(int), p[:, c]) for c in range(3)]
    assert ovr == pytest.approx([1.0, 1 / 3, 1 / 2])
    assert m["auc"] == pytest.approx(np.mean(ovr))
    assert "referable_auc" not in m  # referable metrics only for the 5 ICDR grades


def test_random_qwk_matches_the_formula():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 60)
    probs = rng.dirichlet(np.ones(5), 60)
    assert classification_metrics(y, probs)["qwk"] == pytest.approx(_weighted_kappa_by_hand(y, probs.argmax(1), 5))


def test_multiclass_auc_nan_when_a_class_is_missing():
    y = np.array([0, 1, 1, 0])
    m = classification_metrics(y, _onehotish(np.array([0, 1, 2, 0]), 3))
    assert math.isnan(m["auc"])
    assert math.isfinite(m["accuracy"])


def test_referable_metrics_are_binary_metrics_of_summed_grades():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 40)
    probs = rng.dirichlet(np.ones(5), 40)
    m = classification_metrics(y, probs, threshold=0.6)
    for cut in (2, 3):
        s = probs[:, cut:].sum(1)
        ref = classification_metrics((y >= cut).astype(int), np.stack([1 - s, s], 1), threshold=0.6)
        got = classification_metrics(y, probs, threshold=0.6, referable_from=cut) if cut != 2 else m
        for k, v in ref.items():
            assert got[f"referable_{k}"] == pytest.approx(v, nan_ok=True), k
    assert m["referable_n_positive"] == int(np.count_nonzero(y >= 2))
    assert m["referable_auc"] == pytest.approx(_mann_whitney_fraction((y >= 2).astype(int), probs[:, 2:].sum(1)))


# ---- calibration --------------------------------------------------------------------------------------------

def test_ece_zero_when_calibrated():
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    y = np.array([0] * 8 + [1, 2])  # 80 % of the confidence-0.8 predictions right
    assert expected_calibration_error(y, probs, 15) == pytest.approx(0.0, abs=1e-12)
    assert classification_metrics(y, probs)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_of_confident_wrong_and_two_bin_cases():
    probs = np.tile([0.9, 0.1], (6, 1))
    assert expected_calibration_error(np.ones(6, int), probs) == pytest.approx(0.9)
    # 4 at confidence 0.95 all right (gap 0.05), 4 at 0.55 with 1 right (gap 0.30): ECE = (0.05 + 0.30) / 2
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 4)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(y, probs, 10) == pytest.approx(0.175)
    conf, acc, count = reliability_bins(y, probs, 10)
    assert count.sum() == 8 and count[9] == 4 and count[5] == 4
    assert conf[9] == pytest.approx(0.95) and acc[9] == 1.0
    assert conf[5] == pytest.approx(0.55) and acc[5] == 0.25
    empty = count == 0
    assert np.isnan(conf[empty]).all() and np.isnan(acc[empty]).all() and empty.sum() == 8


def test_reliability_counts_sum_to_n():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(4) * 0.5, 100)
    conf, acc, count = reliability_bins(rng.integers(0, 4, 100), probs, 7)
    assert count.shape == conf.shape == acc.shape == (7,) and count.sum() == 100


def test_reliability_bins_are_right_closed():
    # bins (0, 0.5] and (0.5, 1]: confidence 0.5 falls in the first, 1.0 in the last
    conf, acc, count = reliability_bins(np.array([0, 0, 1]), np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]), 2)
    assert count.tolist() == [1, 2]
    assert conf.tolist() == pytest.approx([0.5, 0.875]) and acc.tolist() == pytest.approx([1.0, 1.0])


# ---- fold summaries and paired tests ----------------------------------------------------------------------

def test_cv_summary_mean_std_ci():
    vals = [0.80, 0.82, 0.78, 0.85, 0.75]
    folds = [{"auc": v, "model": "resnet", "fold_only": 1.0} if i == 0 else {"auc": v, "model": "resnet"}
             for i, v in enumerate(vals)]
    folds.append({"auc": math.nan, "model": "resnet"})  # a fold where AUC was undefined
    s = cv_summary(folds)
    assert set(s) == {"auc"}  # strings ignored, keys not in every fold ignored
    a = s["auc"]
    # deviations 0, .02, -.02, .05, -.05 -> sum of squares .0058, variance .0058 / 4
    std = math.sqrt(0.0058 / 4)
    half = stats.t.ppf(0.975, 4) * std / math.sqrt(5)
    assert a["n"] == 5
    assert a["mean"] == pytest.approx(0.80)
    assert a["std"] == pytest.approx(std)
    assert a["ci_low"] == pytest.approx(0.80 - half) and a["ci_high"] == pytest.approx(0.80 + half)
    assert a["values"][:5] == vals and math.isnan(a["values"][5])
    half90 = stats.t.ppf(0.95, 4) * std / math.sqrt(5)
    assert cv_summary(folds, confidence=0.9)["auc"]["ci_high"] == pytest.approx(0.80 + half90)


def test_cv_summary_single_finite_value_has_nan_interval():
    s = cv_summary([{"auc": 0.7}, {"auc": math.nan}])["auc"]
    assert s["n"] == 1 and s["mean"] == 0.7
    assert math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])


def test_cv_summary_clips_the_t_interval_to_the_metric_range_and_says_so():
    # the demo's sensitivity over 5 folds: an unclipped t interval reached 0.300..1.256
    sens = [1.0, 1.0, 0.5, 1.0, 0.39]
    s = cv_summary([{"sensitivity": v, "qwk": q, "loss": 0.1 * i} for i, (v, q) in
                    enumerate(zip(sens, [-0.9, -1.0, 0.2, -0.95, -0.99]))])
    half = stats.t.ppf(0.975, 4) * np.std(sens, ddof=1) / math.sqrt(5)
    assert np.mean(sens) + half > 1.0  # the raw interval leaves [0, 1] ...
    a = s["sensitivity"]
    assert a["ci_high"] == 1.0 and a["ci_low"] == pytest.approx(np.mean(sens) - half)  # ... the reported one does not
    assert a["clipped"] is True and "clipped to [0, 1]" in a["interval"]
    assert s["qwk"]["ci_low"] == -1.0 and s["qwk"]["clipped"] and "[-1, 1]" in s["qwk"]["interval"]
    assert s["loss"]["clipped"] is False and s["loss"]["ci_low"] < 0.2  # [0, inf): not reached here
    assert cv_summary([{"auc": v} for v in (0.80, 0.82, 0.78)])["auc"]["clipped"] is False


def test_cv_summary_of_a_fold_with_undefined_auc_reports_it():
    # fold 1 had one class only: its AUC is None (JSON null) -- neither 0.5 nor a crash
    s = cv_summary([{"auc": 0.8, "accuracy": 0.7}, {"auc": None, "accuracy": 0.9}, {"auc": 0.6, "accuracy": 0.8}])
    assert s["auc"]["n"] == 2 and s["auc"]["mean"] == pytest.approx(0.7) and s["auc"]["undefined_folds"] == [1]
    assert math.isnan(s["auc"]["values"][1]) and s["accuracy"]["n"] == 3


def test_predictive_entropy():
    h = predictive_entropy(np.array([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]]))
    assert h == pytest.approx([0.0, math.log(4), math.log(2)])


# ---- input validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("labels", "probs", "kwargs", "name"),
    [
        ([0, 1], [0.5, 0.5], {}, "probs"),                           # 1-D probs
        ([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]], {}, "labels"),         # length mismatch
        ([0, 1], [[0.5, 0.4], [0.2, 0.8]], {}, "probs"),             # row sums to 0.9
        ([0, 1], [[1.2, -0.2], [0.2, 0.8]], {}, "probs"),            # outside [0, 1]
        ([0, 1], [[np.nan, 1.0], [0.2, 0.8]], {}, "probs"),          # not finite
        ([0, 2], [[0.5, 0.5], [0.2, 0.8]], {}, "labels"),            # label out of range
        ([0, -1], [[0.5, 0.5], [0.2, 0.8]], {}, "labels"),
        ([0.5, 1], [[0.5, 0.5], [0.2, 0.8]], {}, "labels"),          # not an index
        ([0], [[1.0]], {}, "probs"),                                 # one class
        ([], np.zeros((0, 2)), {}, "probs"),                         # no rows
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], {"threshold": 1.5}, "threshold"),
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], {"ece_bins": 0}, "ece_bins"),
        ([0, 4], [[0.2] * 5, [0.2] * 5], {"referable_from": 0}, "referable_from"),
    ],
)
def test_bad_inputs_name_the_parameter(labels, probs, kwargs, name):
    with pytest.raises(ValueError, match=name):
        classification_metrics(np.asarray(labels), np.asarray(probs, dtype=float), **kwargs)


def test_rows_within_tolerance_are_accepted():
    m = classification_metrics(np.array([0, 1, 2]), np.array([[0.7, 0.2, 0.1005], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0


def test_other_entry_points_validate():
    with pytest.raises(ValueError, match="bins"):
        reliability_bins(np.array([0]), np.array([[1.0, 0.0]]), 0)
    with pytest.raises(ValueError, match="probs"):
        predictive_entropy(np.array([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="per_fold"):
        cv_summary([])
    with pytest.raises(ValueError, match="confidence"):
        cv_summary([{"a": 1.0}], confidence=95)
