"""Per-lesion pixel metrics of multi-label lesion segmentation, pooled over images (the IDRiD protocol).

AUPR is the IDRiD sub-challenge 1 metric: area under the precision-recall curve of the pixels, computed
as scikit-learn's ``average_precision_score``. Dice, IoU (Jaccard) and precision are at a fixed probability
threshold, from the confusion counts pooled over the images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from dr_ray.io.columns import LESION_KINDS

logger = logging.getLogger(__name__)


class LesionMeter:
    """Accumulates, per lesion kind, confusion counts at ``threshold`` and a pixel sample for AUPR.

    update(prob (C, H, W) or (N, C, H, W) float 0..1, target same shape bool/0-1, fov (H, W) / (N, H, W)
    bool or None); channel c is ``lesion_kinds[c]``.

    compute() -> dict with, for each kind k: ``aupr_k``, ``dice_k`` = 2TP / (2TP + FP + FN), ``iou_k`` =
    TP / (TP + FP + FN), ``precision_k`` = TP / (TP + FP) and ``n_pos_k`` (positive pixels seen in the FOV,
    an int), plus ``aupr_mean`` / ``dice_mean`` / ``iou_mean`` / ``precision_mean`` (mean over the kinds whose
    value is not NaN; NaN when none). A kind with no positive pixel in the evaluated set has ``aupr_k = nan``
    (precision-recall is undefined) and ``n_pos_k = 0`` says why; its ``dice_k`` / ``iou_k`` are 0 if anything
    was predicted positive, else nan. ``precision_k`` is nan when nothing was predicted positive.

    Pixel sample for AUPR: per image and kind, when the FOV has more than ``aupr_pixels_per_image`` pixels,
    all positive pixels are kept (lesions are rare: a uniform sample would keep a handful of microaneurysm
    pixels) and negatives are drawn without replacement with ``seed``; each kept negative gets weight
    ``n_negatives / n_drawn`` so that the weighted precision estimates the full-image precision. Below the
    limit every pixel is used with weight 1 (the exact AUPR).
    """

    def __init__(self, lesion_kinds: Sequence[str] = ("ma", "he", "ex", "se"), threshold: float = 0.5,
                 aupr_pixels_per_image: int = 200_000, seed: int = 0) -> None:
        kinds = tuple(lesion_kinds)
        if not kinds or len(set(kinds)) != len(kinds) or any(k not in LESION_KINDS for k in kinds):
            raise ValueError(f"lesion_kinds must be distinct kinds from {LESION_KINDS}, got {lesion_kinds!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if isinstance(aupr_pixels_per_image, bool) or not isinstance(aupr_pixels_per_image, int) \
                or aupr_pixels_per_image < 1:
            raise ValueError(f"aupr_pixels_per_image must be a positive int, got {aupr_pixels_per_image!r}")
        self.lesion_kinds = kinds
        self.threshold = threshold
        self.max_pixels = aupr_pixels_per_image
        self.rng = np.random.default_rng(seed)
        c = len(kinds)
        self.tp, self.fp, self.fn = np.zeros(c, np.int64), np.zeros(c, np.int64), np.zeros(c, np.int64)
        self.n_images = 0
        self._scores: list[list[np.ndarray]] = [[] for _ in kinds]
        self._labels: list[list[np.ndarray]] = [[] for _ in kinds]
        self._weights: list[list[np.ndarray]] = [[] for _ in kinds]

    def update(self, prob: np.ndarray, target: np.ndarray, fov: np.ndarray | None = None) -> None:
        prob, target = np.asarray(prob), np.asarray(target)
        c = len(self.lesion_kinds)
        if prob.shape != target.shape:
            raise ValueError(f"prob {prob.shape} and target {target.shape} differ in shape")
        single = prob.ndim == 3
        if single:
            prob, target = prob[None], target[None]
        if fov is not None:
            fov = np.asarray(fov)[None] if single else np.asarray(fov)
        if prob.ndim != 4 or prob.shape[1] != c:
            raise ValueError(f"prob must be (C, H, W) or (N, C, H, W) with C = {c} ({self.lesion_kinds}), "
                             f"got shape {prob.shape}")
        n, _, h, w = prob.shape
        if fov is not None and fov.shape != (n, h, w):
            raise ValueError(f"fov must be (H, W) = {(h, w)} for a (C, H, W) prob, or (N, H, W) for (N, C, H, W); "
                             f"got {fov.shape[1:] if single else fov.shape}")
        if np.isnan(prob).any():
            raise ValueError("prob contains NaN")
        if prob.size and (prob.min() < 0 or prob.max() > 1):
            raise ValueError("prob must be probabilities in [0, 1] (apply the sigmoid first), got values in "
                             f"[{prob.min():.3g}, {prob.max():.3g}]")
        for i in range(n):
            inside = np.ones((h, w), bool) if fov is None else fov[i].astype(bool)
            for k in range(c):
                self._update_one(k, np.asarray(prob[i, k], np.float32)[inside], target[i, k][inside].astype(bool))
            self.n_images += 1

    def _update_one(self, k: int, p: np.ndarray, t: np.ndarray) -> None:
        pred = p >= self.threshold
        self.tp[k] += np.count_nonzero(pred & t)
        self.fp[k] += np.count_nonzero(pred & ~t)
        self.fn[k] += np.count_nonzero(~pred & t)
        wgt = np.ones(len(p), np.float64)
        if len(p) > self.max_pixels:
            pos = np.flatnonzero(t)
            neg = np.flatnonzero(~t)
            n_draw = max(self.max_pixels - len(pos), 0)
            if n_draw < len(neg):
                if n_draw == 0:
                    logger.warning("lesion %s: %d positive pixels exceed aupr_pixels_per_image=%d; "
                                   "negatives of this image are left out of the AUPR",
                                   self.lesion_kinds[k], len(pos), self.max_pixels)
                drawn = self.rng.choice(neg, n_draw, replace=False)
                keep = np.concatenate([pos, drawn])
                wgt = np.concatenate([np.ones(len(pos)), np.full(n_draw, len(neg) / max(n_draw, 1))])
                p, t = p[keep], t[keep]
        self._scores[k].append(p)
        self._labels[k].append(t)
        self._weights[k].append(wgt)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        means: dict[str, list[float]] = {"aupr": [], "dice": [], "iou": [], "precision": []}
        for k, kind in enumerate(self.lesion_kinds):
            labels = np.concatenate(self._labels[k]) if self._labels[k] else np.zeros(0, bool)
            n_pos = int(labels.sum())
            if n_pos:
                aupr = float(average_precision_score(labels, np.concatenate(self._scores[k]),
                                                     sample_weight=np.concatenate(self._weights[k])))
            else:
                aupr = math.nan
            tp, fp, fn = int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
            vals = {"aupr": aupr,
                    "dice": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan,
                    "iou": tp / (tp + fp + fn) if (tp + fp + fn) else math.nan,
                    "precision": tp / (tp + fp) if (tp + fp) else math.nan}
            for m, v in vals.items():
                out[f"{m}_{kind}"] = v
                means[m].append(v)
            out[f"n_pos_{kind}"] = n_pos
        missing = [kind for kind in self.lesion_kinds if out[f"n_pos_{kind}"] == 0]
        if missing and self.n_images:
            logger.warning("no positive pixel of %s in %d evaluated images: their aupr_* are NaN and left out of "
                           "aupr_mean", missing, self.n_images)
        for m, vs in means.items():
            out[f"{m}_mean"] = _nanmean(vs)
        return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


__all__ = ["LesionMeter"]
