"""Field of view (FOV): the bright fundus disc inside the black camera surround.

EyePACS frames are landscape with a black surround; the disc is often cut off at the top and bottom (it
extends beyond the frame), many have a small notch (a bump on the rim, camera-specific), some have a
bluish halo around the rim. :func:`find_fov` therefore thresholds the red channel (red stays bright across
the whole fundus, including the rim, where green and blue fall off), keeps the largest component, and fits
a circle only to boundary points that are not on the frame edge, rejecting outliers (the notch).

Detection runs on a copy downscaled to ~``WORK_SIDE`` px, so it costs about a millisecond whatever the
source size; the geometry is scaled back to the pixels of the array given.

Coordinates: x = column, y = row, pixel centres at integer coordinates (pixel (0, 0) covers [-0.5, 0.5]^2).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from dr_ray.imaging.decode import ImageDecodeError

log = logging.getLogger(__name__)

__all__ = ["FovGeometry", "fov_mask", "find_fov", "crop_to_fov", "crop_fov_mask", "circle_mask", "WORK_SIDE"]

WORK_SIDE = 384  # long side of the copy FOV detection runs on, px (R ~ 130-190 px: sub-pixel fits)
_ROBUST_MAX_Q = 0.995  # the frame's "max" is this quantile of red (ignores hot pixels and text)
_MIN_ROBUST_MAX = 12  # grey levels: below this the frame is black (JPEG noise reaches ~5)
_MIN_FRACTION = 0.01  # a lit component smaller than this share of the frame is not a fundus
_EDGE_PX = 1  # boundary points this close to the frame edge lie on the cut, not on the circle


@dataclass(frozen=True)
class FovGeometry:
    """FOV circle in pixels of the array it was found in (or source pixels, when scaled back).

    cx, cy: centre (column, row), px, may lie outside the frame; radius: px; fraction: share of the frame's
    pixels inside the detected FOV (the thresholded disc, notch included), 0..1.
    """

    cx: float
    cy: float
    radius: float
    fraction: float

    def scaled(self, factor: float) -> FovGeometry:
        """The same circle in a grid ``factor`` times finer (e.g. decoded at 1/4 -> source: factor=4)."""
        f = float(factor)
        return FovGeometry((self.cx + 0.5) * f - 0.5, (self.cy + 0.5) * f - 0.5, self.radius * f, self.fraction)


def _check_rgb(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name}: expected (H, W, 3) uint8 RGB, got {desc}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name}: expected at least 2x2 px, got {image.shape}")


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold!r}")


def _robust_max(red: np.ndarray) -> float:
    hist = np.bincount(red.ravel(), minlength=256)
    cum = np.cumsum(hist)
    return float(np.searchsorted(cum, _ROBUST_MAX_Q * cum[-1]))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # Flood the outside from a 1-px frame of zeros; whatever the flood cannot reach is inside.
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (mask | (1 - flood[1:-1, 1:-1])).astype(np.uint8)


def _red_mask(red: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) uint8 {0, 1}: the FOV from a contiguous red channel."""
    top = _robust_max(red)
    if top < _MIN_ROBUST_MAX:
        return np.zeros(red.shape, np.uint8)
    _, m = cv2.threshold(red, threshold * top, 1, cv2.THRESH_BINARY)
    if min(m.shape) >= 32:  # remove isolated noise/specks before picking the largest component
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(red.shape, np.uint8)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    m = (labels == big).astype(np.uint8)
    return _fill_holes(m)


def fov_mask(image: np.ndarray, *, threshold: float = 0.06) -> np.ndarray:
    """FOV mask at the resolution of ``image``.

    image: (H, W, 3) uint8 RGB. threshold: fraction of the frame's robust max of red (99.5th percentile)
    a pixel must exceed. Returns (H, W) bool: the largest bright component with its holes filled; all
    False when the frame is black (robust max below ~12 grey levels).
    """
    _check_rgb(image)
    _check_threshold(threshold)
    return _red_mask(cv2.extractChannel(image, 0), threshold).astype(bool)


def _kasa_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    # Algebraic (Kasa) circle fit: x^2 + y^2 = a x + b y + c, centre (a/2, b/2), r^2 = c + cx^2 + cy^2.
    # Unbiased enough here: the points are dense, cover > 180 degrees and their noise is ~0.3 px.
    a = np.column_stack([x, y, np.ones_like(x)])
    sol, *_ = np.linalg.lstsq(a, x * x + y * y, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r2 = sol[2] + cx * cx + cy * cy
    return float(cx), float(cy), float(np.sqrt(r2)) if r2 > 0 else float("nan")


def _robust_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, int] | None:
    """Kasa fit with iterative outlier rejection (the notch, dents from dark lesions at the rim)."""
    keep = np.ones(x.size, bool)
    cx = cy = r = float("nan")
    for _ in range(4):
        if keep.sum() < 12:
            return None
        cx, cy, r = _kasa_fit(x[keep], y[keep])
        if not np.isfinite(r):
            return None
        res = np.hypot(x - cx, y - cy) - r
        mad = float(np.median(np.abs(res[keep] - np.median(res[keep]))))
        new = np.abs(res) <= max(1.0, 4.0 * 1.4826 * mad)
        if np.array_equal(new, keep):
            break
        keep = new
    return cx, cy, r, int(keep.sum())


def find_fov(image: np.ndarray, *, threshold: float = 0.06) -> FovGeometry:
    """Find the FOV circle.

    image: (H, W, 3) uint8 RGB, any size (detection runs on a ~384-px copy).
    threshold: see :func:`fov_mask`.
    Returns :class:`FovGeometry` in pixels of ``image``.
    Raises ImageDecodeError "no field of view found: ..." for a (nearly) black frame and
    "field of view too small: ..." when the lit area is under 1% of the frame.
    """
    _check_rgb(image)
    _check_threshold(threshold)
    h, w = image.shape[:2]
    red = cv2.extractChannel(image, 0)
    s = max(h, w) / WORK_SIDE
    if s > 1.0:
        ww, hh = max(2, round(w / s)), max(2, round(h / s))
        red = cv2.resize(red, (ww, hh), interpolation=cv2.INTER_AREA)
    hh, ww = red.shape
    sx, sy = w / ww, h / hh
    mask = _red_mask(red, threshold)
    area = int(np.count_nonzero(mask))
    if area == 0:
        # The robust max ignores the top 0.5% of pixels: a lit spot smaller than that is a tiny FOV, not black.
        lit = np.count_nonzero(red >= 2 * _MIN_ROBUST_MAX) / red.size
        if lit >= 0.0005:
            raise ImageDecodeError(f"field of view too small: {100 * lit:.2f}% of the {w}x{h} frame is lit")
        raise ImageDecodeError("no field of view found: the frame is (almost) all black")
    fraction = area / mask.size
    if fraction < _MIN_FRACTION:
        raise ImageDecodeError(f"field of view too small: the lit area is {100 * fraction:.2f}% of the "
                               f"{w}x{h} frame")
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = max(contours, key=len).reshape(-1, 2).astype(np.float64)
    x, y = pts[:, 0], pts[:, 1]
    inner = (x >= _EDGE_PX) & (x <= ww - 1 - _EDGE_PX) & (y >= _EDGE_PX) & (y <= hh - 1 - _EDGE_PX)
    fit = _robust_circle(x[inner], y[inner]) if inner.sum() >= 12 else None
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    if fit is not None:
        cx, cy, r, n_in = fit
        # Contour points are the centres of the outermost lit pixels, inside the threshold crossing by
        # 0..1 px; the INTER_AREA downscale spreads the rim so the crossing (at 6% of the max) lies a little
        # outside the half-max edge. +0.25 px: radius bias within +-0.3% on anti-aliased synthetic discs and
        # on the EyePACS sample against a full-resolution fit.
        r += 0.25
        my, mx = ys.mean(), xs.mean()  # the lit area's centroid must lie well inside the circle
        plausible = (-0.5 <= cx <= ww - 0.5 and r <= 1.5 * max(ww, hh) and n_in >= 0.3 * inner.sum()
                     and np.hypot(cx - mx, cy - my) < 0.5 * r)
        if not plausible:
            log.debug("implausible circle fit (%.1f, %.1f, r=%.1f, %d inliers); using the bounding box",
                      cx, cy, r, n_in)
            fit = None
    if fit is None:
        # The disc fills the frame (no usable rim), or the rim is not circular: the box of the lit area.
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        r = max(x1 - x0 + 1, y1 - y0 + 1) / 2.0
    if r * min(sx, sy) < 8:
        raise ImageDecodeError(f"field of view too small: radius {r * sx:.1f} px in the {w}x{h} frame")
    return FovGeometry(cx=float((cx + 0.5) * sx - 0.5), cy=float((cy + 0.5) * sy - 0.5),
                       radius=float(r * (sx + sy) / 2.0), fraction=float(fraction))


def _check_crop_args(geom: FovGeometry, size: int, margin: float) -> None:
    if not isinstance(geom, FovGeometry):
        raise ValueError(f"geom: expected FovGeometry, got {type(geom).__name__}")
    if not (np.isfinite(geom.radius) and geom.radius > 0 and np.isfinite(geom.cx) and np.isfinite(geom.cy)):
        raise ValueError(f"geom: expected a finite circle with radius > 0, got {geom!r}")
    if int(size) != size or size < 2:
        raise ValueError(f"size: must be an integer >= 2, got {size!r}")
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin: must be in 0..1, got {margin!r}")


def _crop_box(geom: FovGeometry, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) in the source grid: the square centred on the circle, side ~ 2 r (1 + margin)."""
    side = max(2, round(2.0 * geom.radius * (1.0 + margin)))
    # Pixel edges sit at half-integers: the square's left edge is at cx - side/2, i.e. column cx + 0.5 - side/2.
    x0 = round(geom.cx + 0.5 - side / 2.0)
    y0 = round(geom.cy + 0.5 - side / 2.0)
    return x0, y0, side


@functools.lru_cache(maxsize=32)
def _circle_mask_cached(size: int, radius: float) -> np.ndarray:
    c = (size - 1) / 2.0
    yy, xx = np.ogrid[:size, :size]
    m = ((xx - c) ** 2 + (yy - c) ** 2 <= radius * radius).astype(np.uint8)
    m.setflags(write=False)
    return m


def circle_mask(size: int, *, margin: float = 0.0) -> np.ndarray:
    """(size, size) uint8 {0, 1}: the FOV circle inside a crop made by :func:`crop_to_fov` (read-only, cached)."""
    if int(size) != size or size < 2:
        raise ValueError(f"size: must be an integer >= 2, got {size!r}")
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin: must be in 0..1, got {margin!r}")
    return _circle_mask_cached(int(size), size / 2.0 / (1.0 + margin))


def crop_fov_mask(geom: FovGeometry, frame_shape: tuple[int, int], *, size: int, margin: float = 0.0) -> np.ndarray:
    """(size, size) bool: pixels of the crop that are inside the FOV circle AND inside the source frame.

    geom, size, margin: as given to :func:`crop_to_fov`; frame_shape: (H, W) of the image it cropped.
    The black padding where the square leaves the frame (a disc cut at top/bottom) is excluded, so
    brightness/contrast measured under this mask see only real fundus.
    """
    _check_crop_args(geom, size, margin)
    h, w = int(frame_shape[0]), int(frame_shape[1])
    x0, y0, side = _crop_box(geom, margin)
    k = size / side  # output px per source px
    inside = np.zeros((size, size), bool)
    r0, r1 = max(0, int(np.ceil(-y0 * k - 1e-9))), min(size, int(np.floor((h - y0) * k + 1e-9)))
    c0, c1 = max(0, int(np.ceil(-x0 * k - 1e-9))), min(size, int(np.floor((w - x0) * k + 1e-9)))
    if r1 > r0 and c1 > c0:
        inside[r0:r1, c0:c1] = True
    return inside & circle_mask(size, margin=margin).astype(bool)


def crop_to_fov(image: np.ndarray, geom: FovGeometry, *, size: int, margin: float = 0.0,
                mask_outside: bool = True) -> np.ndarray:
    """Square crop centred on the FOV circle, resized to ``size``.

    image: (H, W, 3) uint8 RGB; geom: the circle in ``image`` pixels; size: output side, px;
    margin: extra border, fraction of the radius (side = 2 r (1 + margin)); mask_outside: zero the pixels
    outside the circle (the notch, halo and surround). Where the square leaves the frame (disc cut off at
    top/bottom) it is padded with black. Downscaling uses INTER_AREA (no aliasing); upscaling (a source FOV
    smaller than ``size``) INTER_CUBIC.
    Returns (size, size, 3) uint8 RGB.
    """
    _check_rgb(image)
    _check_crop_args(geom, size, margin)
    h, w = image.shape[:2]
    x0, y0, side = _crop_box(geom, margin)
    x1, y1 = x0 + side, y0 + side
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 <= sx0 or sy1 <= sy0:
        raise ValueError(f"geom: the crop square ({x0}, {y0}, side {side}) misses the {w}x{h} frame")
    part = image[sy0:sy1, sx0:sx1]
    pads = (sy0 - y0, y1 - sy1, sx0 - x0, x1 - sx1)
    if any(pads):
        part = cv2.copyMakeBorder(part, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    out = cv2.resize(part, (size, size), interpolation=interp) if side != size else np.ascontiguousarray(part)
    if mask_outside:
        out = cv2.bitwise_and(out, out, mask=circle_mask(size, margin=margin))
    return out
