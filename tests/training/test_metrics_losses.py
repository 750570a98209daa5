"""Known answers for the loss and the FOV-restricted metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dr_ray.training import DiceBCELoss, SegmentationMeter, segmentation_metrics


def _disc(n=64, r=12):
    yy, xx = np.mgrid[:n, :n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < r * r


def test_perfect_prediction_scores_one():
    t = _disc()
    m = segmentation_metrics(t.astype(np.float32), t)
    assert m["dice"] == m["sensitivity"] == m["specificity"] == m["accuracy"] == m["auc"] == 1.0
    assert m["iou"] == m["precision"] == 1.0


def test_disjoint_prediction_scores_zero():
    t = _disc()
    m = segmentation_metrics((~t).astype(np.float32), t)
    assert m["dice"] == 0.0 and m["sensitivity"] == 0.0 and m["specificity"] == 0.0 and m["accuracy"] == 0.0
    assert m["iou"] == 0.0 and m["precision"] == 0.0
    assert m["auc"] == 0.0  # a perfectly inverted ranking


def test_counts_by_hand():
    t = np.array([[1, 1, 0, 0]], bool)
    p = np.array([[0.9, 0.2, 0.7, 0.1]], np.float32)  # tp 1, fn 1, fp 1, tn 1
    m = segmentation_metrics(p, t)
    assert m["dice"] == pytest.approx(0.5) and m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    assert m["accuracy"] == 0.5 and m["auc"] == pytest.approx(0.75)  # pairs ranked right: 3 of 4
    assert m["iou"] == pytest.approx(1 / 3) and m["precision"] == 0.5  # tp / (tp + fp + fn), tp / (tp + fp)


def test_iou_and_precision_by_hand_and_their_relation_to_dice():
    # tp 3, fp 1, fn 2, tn 4 (paper Table 5 reports IoU and precision next to Dice)
    t = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]], bool)
    p = np.array([[0.9, 0.8, 0.6, 0.2, 0.1, 0.7, 0.3, 0.0, 0.4, 0.1]], np.float32)
    m = segmentation_metrics(p, t)
    assert m["iou"] == pytest.approx(3 / 6) and m["precision"] == pytest.approx(3 / 4)
    assert m["dice"] == pytest.approx(6 / 9) and m["sensitivity"] == pytest.approx(3 / 5)
    assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))  # Jaccard = Dice / (2 - Dice)
    # nothing predicted positive: precision undefined (nan), IoU 0 (there were vessels)
    m = segmentation_metrics(np.zeros_like(p), t)
    assert math.isnan(m["precision"]) and m["iou"] == 0.0


def test_fov_restriction_ignores_outside_pixels():
    t = _disc()
    fov = _disc(r=20)
    p = t.astype(np.float32)
    p[~fov] = 1.0  # all wrong outside the FOV
    assert segmentation_metrics(p, t, fov) == segmentation_metrics(t.astype(np.float32), t, fov)
    assert segmentation_metrics(p, t)["dice"] < 0.5  # without the FOV the errors count


def test_meter_pools_pixels_over_images():
    t1, t2 = _disc(r=10), _disc(r=14)
    m = SegmentationMeter()
    m.update(t1.astype(np.float32), t1)
    m.update(np.zeros_like(t2, np.float32), t2)  # misses every vessel pixel of image 2
    got = m.compute()
    assert got["sensitivity"] == pytest.approx(t1.sum() / (t1.sum() + t2.sum()))
    assert got["specificity"] == 1.0


def test_auc_undefined_with_one_class():
    t = np.zeros((8, 8), bool)
    assert math.isnan(segmentation_metrics(np.zeros((8, 8), np.float32), t)["auc"])


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5), bool))


def test_loss_known_values_and_fov():
    loss = DiceBCELoss()
    t = torch.from_numpy(_disc()[None, None].astype(np.float32))
    perfect = (t * 2 - 1) * 40  # logits of +-40: sigmoid 0/1
    assert loss(perfect, t).item() == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert loss(wrong, t).item() > 30  # BCE ~40 + dice term ~1
    fov = torch.from_numpy(_disc(r=20)[None, None].astype(np.float32))
    outside_wrong = torch.where(fov > 0, perfect, torch.full_like(perfect, 40.0))
    assert loss(outside_wrong, t, fov).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(outside_wrong, t).item() > 1.0


def test_loss_gives_every_logit_a_gradient_inside_fov_only():
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    t = torch.zeros(1, 1, 8, 8)
    t[..., 2:4, 2:4] = 1
    fov = torch.zeros(1, 1, 8, 8)
    fov[..., :4, :] = 1
    DiceBCELoss()(logits, t, fov).backward()
    g = logits.grad[0, 0]
    assert (g[:4] != 0).all() and (g[4:] == 0).all()
