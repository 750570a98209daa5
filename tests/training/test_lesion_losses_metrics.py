"""LesionLoss (soft Dice + focal) and LesionMeter (per-lesion AUPR / Dice): known answers, properties,
agreement with torch / torchvision / scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from dr_ray.training.lesion_losses import LesionLoss
from dr_ray.training.lesion_metrics import LesionMeter

# --- LesionLoss -------------------------------------------------------------------------------


def _tiny():
    """One image, one class, two pixels: p = 0.5 on a lesion pixel, p = 0.75 on a background pixel."""
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    return logits, target


def test_hand_computed_value():
    logits, target = _tiny()
    # soft Dice, smooth 1: (2 * 0.5 * 1 + 1) / (0.5 + 0.75 + 1 + 1) = 2 / 3.25
    dice_term = 1 - 2 / 3.25
    # focal, alpha 0.25, gamma 2: lesion pixel p_t = 0.5, background pixel p_t = 1 - 0.75 = 0.25
    fl_pos = 0.25 * (1 - 0.5) ** 2 * -math.log(0.5)
    fl_neg = 0.75 * (1 - 0.25) ** 2 * -math.log(0.25)
    expected = dice_term + (fl_pos + fl_neg) / 2
    assert LesionLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight 3 triples the lesion pixel's focal term only
    expected_pw = dice_term + (3 * fl_pos + fl_neg) / 2
    assert LesionLoss(pos_weight=[3.0])(logits, target).item() == pytest.approx(expected_pw, rel=1e-6)
    # weights: focal only / Dice only
    assert LesionLoss(dice_weight=0)(logits, target).item() == pytest.approx((fl_pos + fl_neg) / 2, rel=1e-6)
    assert LesionLoss(focal_weight=0)(logits, target).item() == pytest.approx(dice_term, rel=1e-6)


def test_perfect_prediction_is_near_zero():
    torch.manual_seed(0)
    target = (torch.rand(2, 4, 16, 16) < 0.05).float()
    target[:, 3] = 0  # one class absent from the batch
    logits = (target * 2 - 1) * 30
    assert LesionLoss()(logits, target).item() < 1e-6
    assert LesionLoss()(-logits, target).item() > 1.0


def test_gamma0_no_alpha_is_bce_and_focal_matches_torchvision():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8) * 3
    target = (torch.rand(2, 3, 8, 8) < 0.2).float()
    bce = LesionLoss(dice_weight=0, alpha=None, gamma=0)(logits, target)
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits, target))
    tv_ops = pytest.importorskip("torchvision.ops")
    for alpha, gamma in ((0.25, 2.0), (0.75, 1.0)):
        ours = LesionLoss(dice_weight=0, alpha=alpha, gamma=gamma)(logits, target)
        ref = tv_ops.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
        torch.testing.assert_close(ours, ref)


def test_absent_class_is_finite_with_finite_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.zeros(2, 2, 8, 8)
    target[0, 0, 2:4, 2:4] = 1  # class 1 absent everywhere
    loss = LesionLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[:, 1] > 0).all()  # pushes the absent class's probabilities down
    # an all-empty batch, predicted empty: ~0, no NaN
    empty = torch.zeros(1, 4, 8, 8)
    assert LesionLoss()(torch.full((1, 4, 8, 8), -30.0), empty).item() < 1e-6


def test_pixels_outside_fov_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) < 0.3).float()
    fov = torch.zeros(2, 1, 8, 8)
    fov[..., 1:7, 1:7] = 1
    other = logits.clone()
    other[..., 0, :] = 50.0  # outside the FOV
    loss = LesionLoss(pos_weight=[2.0, 1.0])
    torch.testing.assert_close(loss(logits, target, fov), loss(other, target, fov))
    # the FOV restriction equals computing on the cropped tensors
    crop = (slice(None), slice(None), slice(1, 7), slice(1, 7))
    torch.testing.assert_close(loss(logits, target, fov), loss(logits[crop], target[crop]))


def test_loss_argument_errors():
    logits, target = _tiny()
    with pytest.raises(ValueError, match="differ in shape"):
        LesionLoss()(logits, target[..., :1])
    with pytest.raises(ValueError, match="pos_weight has 2 values"):
        LesionLoss(pos_weight=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match="fov must be"):
        LesionLoss()(logits, target, torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="alpha"):
        LesionLoss(alpha=1.5)
    with pytest.raises(ValueError, match="smooth"):
        LesionLoss(smooth=0)


# --- LesionMeter ------------------------------------------------------------------------------


def test_aupr_and_dice_hand_case():
    # kind "ma": labels 1 0 1 0 with scores .9 .8 .7 .1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6;
    # at threshold 0.5: predicted .9 .8 .7 -> tp 2, fp 1, fn 0 -> Dice 4/5.
    # kind "he": labels 0 1 0 0 with scores .2 .6 .9 .3 -> AP = 1/2; predicted .6 .9 -> tp 1, fp 1 -> Dice 2/3.
    prob = np.array([[[0.9, 0.8], [0.7, 0.1]], [[0.2, 0.6], [0.9, 0.3]]], np.float32)
    target = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 0]]], bool)
    m = LesionMeter(("ma", "he"))
    m.update(prob, target)
    r = m.compute()
    assert r["aupr_ma"] == pytest.approx(5 / 6) and r["aupr_he"] == pytest.approx(0.5)
    assert r["dice_ma"] == pytest.approx(4 / 5) and r["dice_he"] == pytest.approx(2 / 3)
    assert r["aupr_mean"] == pytest.approx((5 / 6 + 0.5) / 2) and r["n_pos_ma"] == 2 and r["n_pos_he"] == 1
    # IoU = tp / (tp + fp + fn): ma 2/3, he 1/2; precision = tp / (tp + fp): ma 2/3, he 1/2
    assert r["iou_ma"] == pytest.approx(2 / 3) and r["iou_he"] == pytest.approx(1 / 2)
    assert r["precision_ma"] == pytest.approx(2 / 3) and r["precision_he"] == pytest.approx(1 / 2)
    assert r["iou_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["precision_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_iou_and_precision_pool_counts_over_images():
    # image 1, kind "ex": tp 1, fp 2, fn 0; image 2: tp 2, fp 0, fn 1 -> pooled tp 3, fp 2, fn 1
    prob = np.array([[[[0.9, 0.8], [0.6, 0.1]]], [[[0.9, 0.7], [0.2, 0.0]]]], np.float32)
    target = np.array([[[[1, 0], [0, 0]]], [[[1, 1], [1, 0]]]], bool)
    m = LesionMeter(("ex",))
    m.update(prob, target)
    r = m.compute()
    assert r["iou_ex"] == pytest.approx(3 / 6) and r["precision_ex"] == pytest.approx(3 / 5)
    assert r["dice_ex"] == pytest.approx(6 / 9)  # not the mean of per-image values


def test_aupr_pools_images_like_sklearn_and_respects_fov():
    rng = np.random.default_rng(0)
    prob = rng.random((3, 2, 10, 12)).astype(np.float32)
    target = rng.random((3, 2, 10, 12)) < 0.1
    fov = np.ones((3, 10, 12), bool)
    fov[:, :, :2] = False
    m = LesionMeter(("ex", "se"))
    m.update(prob[:2], target[:2], fov[:2])  # a batch ...
    m.update(prob[2], target[2], fov[2])  # ... and a single image
    r = m.compute()
    for c, kind in enumerate(("ex", "se")):
        ref = average_precision_score(target[:, c][fov].ravel(), prob[:, c][fov].ravel())
        assert r[f"aupr_{kind}"] == pytest.approx(ref, rel=1e-9)


def test_kind_without_positives_is_nan_with_its_key():
    prob = np.zeros((2, 4, 4), np.float32)
    target = np.zeros((2, 4, 4), bool)
    prob[0, :2] = 0.9
    target[0, :2] = True
    prob[1, 0, 0] = 0.7  # kind "se": one false positive, no lesion anywhere
    m = LesionMeter(("ex", "se"))
    m.update(prob, target)
    r = m.compute()
    assert r["n_pos_se"] == 0 and math.isnan(r["aupr_se"]) and r["dice_se"] == 0.0
    assert r["iou_se"] == 0.0 and r["precision_se"] == 0.0  # one false positive
    assert r["aupr_mean"] == pytest.approx(r["aupr_ex"]) == pytest.approx(1.0)
    # nothing predicted and nothing there: Dice undefined too
    empty = LesionMeter(("ma",))
    empty.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    r = empty.compute()
    assert math.isnan(r["aupr_ma"]) and math.isnan(r["dice_ma"]) and math.isnan(r["aupr_mean"])
    assert math.isnan(r["iou_ma"]) and math.isnan(r["precision_ma"])
    assert set(r) == {"aupr_ma", "dice_ma", "iou_ma", "precision_ma", "n_pos_ma", "aupr_mean", "dice_mean",
                      "iou_mean", "precision_mean"}


def test_subsampled_aupr_keeps_positives_and_is_close_to_exact():
    rng = np.random.default_rng(1)
    target = rng.random((1, 200, 200)) < 0.002  # ~80 lesion pixels in 40,000
    prob = np.clip(0.3 * target + rng.random((1, 200, 200)) * 0.8, 0, 1).astype(np.float32)
    exact = average_precision_score(target.ravel(), prob.ravel())
    runs = []
    for _ in range(2):
        m = LesionMeter(("ma",), aupr_pixels_per_image=4000, seed=3)
        m.update(prob, target)
        runs.append(m.compute())
        assert sum(len(s) for s in m._scores[0]) == 4000 and m._labels[0][0].sum() == target.sum()
    assert runs[0] == runs[1]  # deterministic per seed
    assert runs[0]["aupr_ma"] == pytest.approx(exact, abs=0.05)
    assert runs[0]["n_pos_ma"] == int(target.sum())


def test_meter_argument_errors():
    m = LesionMeter(("ma", "he"))
    with pytest.raises(ValueError, match="C = 2"):
        m.update(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(np.full((2, 4, 4), 2.0), np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="fov"):
        m.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="lesion_kinds"):
        LesionMeter(("ma", "drusen"))
