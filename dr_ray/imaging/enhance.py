"""Contrast enhancement and feature maps on the cropped fundus image (all OpenCV, uint8 in, uint8 out).

- :func:`clahe`: contrast-limited adaptive histogram equalisation (Zuiderveld 1994) via ``cv2.createCLAHE``.
- :func:`graham_normalise`: subtract the local mean colour (B. Graham, Kaggle Diabetic Retinopathy 2015).
- :func:`canny_edges`: Gaussian smoothing then Canny on the green channel.
- :func:`vessel_tophat`: morphological black top-hat of green: thin dark structures (vessels, haemorrhages).

Green is used for the single-channel maps because vessels and red lesions have the most contrast there
(red is nearly saturated, blue is noisy).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["INPUT_MODES", "clahe", "graham_normalise", "canny_edges", "vessel_input", "vessel_tophat"]


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {desc}")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"image: expected at least 2x2 px, got {image.shape}")


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray) or mask.shape != shape[:2]:
        got = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
        raise ValueError(f"mask: expected shape {shape[:2]}, got {got}")
    return mask.astype(bool, copy=False)


def clahe(image: np.ndarray, *, clip_limit: float = 2.0, tile_grid: int = 8, channel: str = "lab_l") -> np.ndarray:
    """CLAHE on one channel, colour kept.

    image: (H, W, 3) uint8 RGB. clip_limit: OpenCV clip limit (multiple of the uniform histogram's height;
    1 = no amplification). tile_grid: tiles per side (clamped so a tile has >= 8 px per side).
    channel: ``"lab_l"`` equalises L* of CIELAB and converts back (hue and saturation kept);
    ``"green"`` equalises only the green channel (red and blue untouched: the image is then a false-colour
    rendering with the vessel contrast of the green channel boosted).
    Returns (H, W, 3) uint8 RGB.
    """
    _check_rgb(image)
    if not 0.0 < clip_limit <= 1000.0:
        raise ValueError(f"clip_limit: must be in (0, 1000], got {clip_limit!r}")
    if int(tile_grid) != tile_grid or tile_grid < 1:
        raise ValueError(f"tile_grid: must be a positive integer, got {tile_grid!r}")
    if channel not in ("lab_l", "green"):
        raise ValueError(f"channel: must be 'lab_l' or 'green', got {channel!r}")
    h, w = image.shape[:2]
    tiles = max(1, min(int(tile_grid), h // 8, w // 8))
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles))
    if channel == "green":
        out = image.copy()
        out[..., 1] = op.apply(cv2.extractChannel(image, 1))
        return out
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = op.apply(cv2.extractChannel(lab, 0))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def graham_normalise(image: np.ndarray, *, sigma_px: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Local-mean subtraction: ``out = 4 I - 4 G_sigma * I + 128``, saturated to 0..255 (Graham 2015).

    image: (H, W, 3) uint8 RGB. sigma_px: Gaussian sigma, px (Graham used radius/30, i.e. ~size/60 for a
    crop whose side is the FOV diameter). mask: optional (H, W) bool FOV; when given, the local mean is
    taken over FOV pixels only (normalised convolution ``G*(I m) / G*m``), so the black surround does not
    leave a bright ring at the rim, and pixels outside the mask are set to 0.
    Returns (H, W, 3) uint8 RGB; a flat region becomes 128 in every channel.
    """
    _check_rgb(image)
    if not np.isfinite(sigma_px) or sigma_px <= 0:
        raise ValueError(f"sigma_px: must be > 0, got {sigma_px!r}")
    m = _check_mask(mask, image.shape)
    if m is None:
        blur = cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma_px))
        return cv2.addWeighted(image, 4.0, blur, -4.0, 128.0)
    mf = m.astype(np.float32)
    img = image.astype(np.float32)
    num = cv2.GaussianBlur(img * mf[..., None], (0, 0), sigmaX=float(sigma_px))
    den = cv2.GaussianBlur(mf, (0, 0), sigmaX=float(sigma_px))
    local = num / np.maximum(den, 1e-6)[..., None]
    out = np.clip(4.0 * (img - local) + 128.0, 0, 255)
    out = np.rint(out).astype(np.uint8)
    out[~m] = 0
    return out


def _green(image: np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint8:
        return image
    _check_rgb(image)
    return cv2.extractChannel(image, 1)


def canny_edges(image: np.ndarray, *, sigma: float = 1.0, low: float | None = None,
                high: float | None = None) -> np.ndarray:
    """Canny edges of the green channel after Gaussian smoothing.

    image: (H, W, 3) uint8 RGB (or an (H, W) uint8 channel). sigma: Gaussian sigma, px.
    low, high: hysteresis thresholds on the Sobel gradient magnitude (L2); when None they are
    0.66 m and 1.33 m with m the median green level over non-black pixels (the usual "auto Canny"
    rule; black surround excluded so a masked fundus does not drive m to 0), at least 10 and 20.
    Returns (H, W) uint8, 255 on edges, 0 elsewhere.
    """
    g = _green(image)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: must be > 0, got {sigma!r}")
    for name, v in (("low", low), ("high", high)):
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: must be >= 0 or None, got {v!r}")
    smooth = cv2.GaussianBlur(g, (0, 0), sigmaX=float(sigma))  # smoothing before differentiation
    if low is None or high is None:
        lit = smooth[smooth > 0]
        med = float(np.median(lit)) if lit.size else 0.0
        low = max(10.0, 0.66 * med) if low is None else low
        high = max(20.0, 1.33 * med) if high is None else high
    if low > high:
        raise ValueError(f"low: must be <= high ({high!r}), got {low!r}")
    return cv2.Canny(smooth, float(low), float(high), L2gradient=True)


def vessel_tophat(image: np.ndarray, *, radius: int = 7) -> np.ndarray:
    """Black top-hat of the green channel with a disk: ``closing(I) - I``.

    Vessels are darker than the background, so this equals the white top-hat ``T = I' - (I' o B)`` of the
    inverted green ``I' = 255 - I`` (opening ``o`` with the disk B). It is high on dark structures narrower
    than the disk (diameter ``2 radius + 1`` px) and ~0 on flat background and on dark regions wider than it.
    image: (H, W, 3) uint8 RGB (or an (H, W) uint8 channel); radius: disk radius, px.
    Returns (H, W) uint8 response, grey levels.
    """
    g = _green(image)
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius: must be a positive integer, got {radius!r}")
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(radius) + 1, 2 * int(radius) + 1))
    return cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, disk, borderType=cv2.BORDER_REPLICATE)


# Model input made from the decoded RGB frame (see :func:`vessel_input`); recorded in a vessel model's config.
INPUT_MODES = ("rgb", "green_clahe")


def vessel_input(image: np.ndarray, mode: str = "rgb", *, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """The model's input image: (H, W, 3) uint8 RGB -> (H, W, 3) uint8.

    ``"rgb"``: unchanged. ``"green_clahe"``: CLAHE of the green channel (``clip_limit``, ``tile_grid`` tiles per
    side), copied into all three channels: the classic DRIVE input (vessel contrast is highest in green; CLAHE
    evens out illumination and contrast between images and cameras; Jiang et al. / orobix retina-unet use
    grey + CLAHE). Apply it at the trained scale, before the model's mean/std normalisation.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"mode must be one of {INPUT_MODES}, got {mode!r}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {desc}")
    if mode == "rgb":
        return image
    g = clahe(image, clip_limit=clip_limit, tile_grid=tile_grid, channel="green")[..., 1]
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
