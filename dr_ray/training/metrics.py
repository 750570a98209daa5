"""Pixel metrics of binary segmentation inside the FOV (the DRIVE / HRF protocol): pooled over all images."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def _check(prob: np.ndarray, target: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    if prob.shape != target.shape:
        raise ValueError(f"prob {prob.shape} and target {target.shape} differ in shape")
    if fov is None:
        return np.ones(prob.shape, bool)
    if fov.shape != prob.shape:
        raise ValueError(f"fov {fov.shape} and prob {prob.shape} differ in shape")
    return fov.astype(bool)


class SegmentationMeter:
    """Accumulates confusion counts (threshold ``threshold``) and a pixel sample for AUC over many images.

    update(prob (H, W) float 0..1, target (H, W) bool, fov (H, W) bool or None); compute() -> dict with
    dice 2TP / (2TP + FP + FN), iou (Jaccard) TP / (TP + FP + FN), sensitivity (recall) TP / (TP + FN),
    specificity TN / (TN + FP), precision TP / (TP + FP), accuracy, auc (paper Table 5's metrics), all pooled
    over the pixels of every image (nan when a ratio is undefined, e.g. precision with nothing predicted
    positive, AUC with one class).
    AUC uses at most ``auc_pixels_per_image`` FOV pixels per image, drawn with ``seed`` (whole-image AUC
    of 500 x 500 px images needs no subsampling; HRF-sized ones do).
    """

    def __init__(self, threshold: float = 0.5, auc_pixels_per_image: int = 200_000, seed: int = 0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = threshold
        self.auc_pixels = auc_pixels_per_image
        self.rng = np.random.default_rng(seed)
        self.tp = self.fp = self.tn = self.fn = 0
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, prob: np.ndarray, target: np.ndarray, fov: np.ndarray | None = None) -> None:
        inside = _check(prob, target, fov)
        p = np.asarray(prob, np.float32)[inside]
        t = np.asarray(target, bool)[inside]
        pred = p >= self.threshold
        self.tp += int(np.count_nonzero(pred & t))
        self.fp += int(np.count_nonzero(pred & ~t))
        self.fn += int(np.count_nonzero(~pred & t))
        self.tn += int(np.count_nonzero(~pred & ~t))
        if len(p) > self.auc_pixels:
            idx = self.rng.choice(len(p), self.auc_pixels, replace=False)
            p, t = p[idx], t[idx]
        self._scores.append(p)
        self._labels.append(t)

    def compute(self) -> dict[str, float]:
        def ratio(a: int, b: int) -> float:
            return a / b if b else math.nan

        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, bool)
        if labels.size and labels.any() and not labels.all():
            auc = float(roc_auc_score(labels, np.concatenate(self._scores)))
        else:
            auc = math.nan
        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "precision": ratio(tp, tp + fp),
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "auc": auc,
        }


def segmentation_metrics(prob: np.ndarray, target: np.ndarray, fov: np.ndarray | None = None, *,
                         threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one image (see :class:`SegmentationMeter`)."""
    m = SegmentationMeter(threshold=threshold)
    m.update(prob, target, fov)
    return m.compute()
