"""Lesion probability maps: quantise, reduce, store compactly (one PNG per image), and per-lesion statistics.

A stored map set is K lesion maps of ``size x size`` uint8 (probability * 255, rounded, so decoding is within
0.5/255 of the probability), stacked vertically into one ``(K * size, size)`` grey PNG.
"""

from __future__ import annotations

import cv2
import numpy as np

from dr_ray.imaging.preprocess import decode_png, encode_png


def quantise(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] (any shape, float) -> uint8 ``round(p * 255)``."""
    p = np.asarray(prob, dtype=np.float32)
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"prob must be finite and in [0, 1], got range [{np.nanmin(p)}, {np.nanmax(p)}]")
    return np.round(p * 255.0).astype(np.uint8)


def _check_maps(maps: np.ndarray, name: str = "maps") -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.dtype != np.uint8 or maps.shape[0] < 1:
        raise ValueError(f"{name} must be (K, H, W) uint8 with K >= 1, got shape {maps.shape} dtype {maps.dtype}")
    return maps


def reduce_maps(maps: np.ndarray, size: int, *, how: str = "max") -> np.ndarray:
    """(K, H, W) uint8 -> (K, size, size) uint8.

    ``how="max"``: each output pixel is the maximum over its footprint (a 2-px microaneurysm at 512 px is still
    a full-strength pixel at 128 px); ``"mean"``: area average (OpenCV ``INTER_AREA``). Upsizing (size > H) is
    bilinear either way.
    """
    maps = _check_maps(maps)
    if how not in ("max", "mean"):
        raise ValueError(f"how must be 'max' or 'mean', got {how!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    k, h, w = maps.shape
    if (h, w) == (size, size):
        return maps.copy()
    if size > min(h, w) or how == "mean":
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        return np.stack([cv2.resize(m, (size, size), interpolation=interp) for m in maps])
    if h % size == 0 and w % size == 0:
        return maps.reshape(k, size, h // size, size, w // size).max(axis=(2, 4))
    # non-integer factor: dilate by the footprint, then sample the footprint centres
    kh, kw = int(np.ceil(h / size)), int(np.ceil(w / size))
    kernel = np.ones((kh, kw), np.uint8)
    return np.stack([cv2.resize(cv2.dilate(m, kernel), (size, size), interpolation=cv2.INTER_NEAREST)
                     for m in maps])


def encode_lesion_maps(maps: np.ndarray, compression: int = 1) -> bytes:
    """(K, S, S) uint8 -> PNG bytes of the maps stacked vertically ((K * S, S) grey)."""
    maps = _check_maps(maps)
    k, h, w = maps.shape
    return encode_png(np.ascontiguousarray(maps.reshape(k * h, w)), compression)


def decode_lesion_maps(data: bytes, n_kinds: int) -> np.ndarray:
    """PNG bytes from :func:`encode_lesion_maps` -> (K, S, S) uint8; ``p = maps / 255``."""
    arr = decode_png(data)
    if arr.ndim != 2 or n_kinds < 1 or arr.shape[0] % n_kinds:
        raise ValueError(f"lesion maps PNG of shape {arr.shape} does not hold {n_kinds} stacked grey maps")
    return arr.reshape(n_kinds, arr.shape[0] // n_kinds, arr.shape[1])


def lesion_statistics(maps: np.ndarray, *, threshold: float = 0.5, fov: np.ndarray | None = None,
                      min_component_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-lesion area fraction and component count.

    Args:
        maps: (K, H, W) uint8 probabilities (p * 255).
        threshold: a pixel is lesion when ``p >= threshold`` (uint8: ``>= ceil(threshold * 255)``).
        fov: (H, W) bool field of view (None: the whole frame); pixels outside do not count.
        min_component_px: 8-connected components smaller than this are not counted (their area still is).

    Returns:
        area: (K,) float32, lesion pixels / FOV pixels (NaN for an empty FOV); count: (K,) int32 components.
    """
    maps = _check_maps(maps)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if min_component_px < 1:
        raise ValueError(f"min_component_px must be >= 1, got {min_component_px}")
    fov = np.ones(maps.shape[1:], bool) if fov is None else np.asarray(fov, bool)
    if fov.shape != maps.shape[1:]:
        raise ValueError(f"fov shape {fov.shape} does not match the maps' {maps.shape[1:]}")
    n_fov = int(fov.sum())
    level = int(np.ceil(threshold * 255.0))
    area = np.full(maps.shape[0], np.nan, np.float32)
    count = np.zeros(maps.shape[0], np.int32)
    for i, m in enumerate(maps):
        on = ((m >= level) & fov).astype(np.uint8)
        if n_fov:
            area[i] = on.sum() / n_fov
        n, _, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=8)
        count[i] = int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= min_component_px))
    return area, count


__all__ = ["decode_lesion_maps", "encode_lesion_maps", "lesion_statistics", "quantise", "reduce_maps"]
