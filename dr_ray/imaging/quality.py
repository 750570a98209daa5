"""Image-quality measures inside the FOV and the ``gradable`` flag.

Measured on the cropped, resized image before any enhancement (so CLAHE/Graham settings do not change them),
on luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, ``cv2.COLOR_RGB2GRAY``) scaled to 0..1.
Sharpness is the variance of the Laplacian (Pech-Pacheco et al. 2000), a standard focus measure. It depends on
the image scale, so compare values at the same output size. With ``sharpness_sigma=0`` it is the plain 3x3
Laplacian, which is dominated by the band just below Nyquist, where resampling chains differ: the same photo
decoded at 1/4 + area resize vs full decode + area resize gives values up to ~2x apart. The pipeline uses
``QualityConfig.sharpness_sigma=1`` (Laplacian of Gaussian), which brings the two within ~10% while a sigma-1.5 px
blur still lowers it ~5x; its values are ~10x smaller than the plain Laplacian's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dr_ray.config.schema import QualityConfig

__all__ = ["QualityMeasures", "measure_quality", "is_gradable", "quality_issues"]


@dataclass(frozen=True)
class QualityMeasures:
    """fov_fraction: share of the source frame inside the FOV, 0..1; brightness: mean luminance in the FOV,
    0..1; contrast: std of luminance in the FOV, 0..1; sharpness: variance of the Laplacian (4-neighbour
    kernel) of luminance in 0..1 units, inside the FOV eroded away from its rim, at the image's size."""

    fov_fraction: float
    brightness: float
    contrast: float
    sharpness: float


def measure_quality(image: np.ndarray, fov: np.ndarray, *, fov_fraction: float,
                    sharpness_sigma: float = 0.0) -> QualityMeasures:
    """Quality measures of a fundus image.

    image: (H, W, 3) uint8 RGB. fov: (H, W) bool, the pixels that are fundus (e.g. circle and frame).
    fov_fraction: carried through (measured on the source frame by ``find_fov``), 0..1.
    sharpness_sigma: Gaussian sigma before the Laplacian, px (0 = plain 3x3 Laplacian, the default).
    The sharpness mask is ``fov`` eroded by max(2, min(H, W) // 64) px so the step at the rim (and at a
    frame cut) does not count as detail; when erosion empties it, ``fov`` itself is used.
    Returns :class:`QualityMeasures`.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {desc}")
    if not isinstance(fov, np.ndarray) or fov.shape != image.shape[:2]:
        got = fov.shape if isinstance(fov, np.ndarray) else type(fov).__name__
        raise ValueError(f"fov: expected a bool mask of shape {image.shape[:2]}, got {got}")
    if not 0.0 <= fov_fraction <= 1.0:
        raise ValueError(f"fov_fraction: must be in 0..1, got {fov_fraction!r}")
    if not (np.isfinite(sharpness_sigma) and sharpness_sigma >= 0):
        raise ValueError(f"sharpness_sigma: must be >= 0, got {sharpness_sigma!r}")
    m = fov.astype(np.uint8, copy=False) if fov.dtype != bool else fov.view(np.uint8)
    if not m.any():
        raise ValueError("fov: the mask is empty (no fundus pixels to measure)")
    y = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mean, std = cv2.meanStdDev(y, mask=m)
    k = max(2, min(y.shape) // 64)
    inner = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if not inner.any():
        inner = m
    yf = y.astype(np.float32) * np.float32(1.0 / 255.0)
    if sharpness_sigma > 0:
        yf = cv2.GaussianBlur(yf, (0, 0), sigmaX=float(sharpness_sigma), borderType=cv2.BORDER_REFLECT)
    lap = cv2.Laplacian(yf, cv2.CV_32F, ksize=1)  # 4-neighbour kernel [[0,1,0],[1,-4,1],[0,1,0]]
    _, lap_std = cv2.meanStdDev(lap, mask=inner)
    return QualityMeasures(
        fov_fraction=float(fov_fraction),
        brightness=float(mean[0, 0]) / 255.0,
        contrast=float(std[0, 0]) / 255.0,
        sharpness=float(lap_std[0, 0]) ** 2,
    )


def quality_issues(q: QualityMeasures, cfg: QualityConfig) -> list[str]:
    """The limits ``q`` breaks, as short phrases (empty when gradable), e.g. ``["too dark (0.05 < 0.08)"]``."""
    out = []
    if q.fov_fraction < cfg.min_fov_fraction:
        out.append(f"FOV too small ({q.fov_fraction:.3g} < {cfg.min_fov_fraction:.3g})")
    if q.brightness < cfg.min_brightness:
        out.append(f"too dark ({q.brightness:.3g} < {cfg.min_brightness:.3g})")
    if q.brightness > cfg.max_brightness:
        out.append(f"too bright ({q.brightness:.3g} > {cfg.max_brightness:.3g})")
    if q.contrast < cfg.min_contrast:
        out.append(f"low contrast ({q.contrast:.3g} < {cfg.min_contrast:.3g})")
    if q.sharpness < cfg.min_sharpness:
        out.append(f"blurred ({q.sharpness:.3g} < {cfg.min_sharpness:.3g})")
    return out


def is_gradable(q: QualityMeasures, cfg: QualityConfig) -> bool:
    """True when every measure is within the limits of ``cfg`` (bounds inclusive)."""
    return not quality_issues(q, cfg)
