"""Tubes: the one rasteriser behind vessels, IRMA and neovascularisation (plus the support box of a layer)."""

from __future__ import annotations

import math

import numpy as np


def _tube_pixels(pts: np.ndarray, width: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels near a polyline: (flat indices, distance px to the polyline) for distance <= width/2 + 1.

    pts: (K, 2) float (x, y), K >= 2. Distances are exact point-to-segment distances from pixel centres;
    a pixel may appear more than once (neighbouring segments); callers reduce with min/max.
    """
    h, w = shape
    a, b = pts[:-1], pts[1:]
    d = b - a
    seg_len2 = np.maximum((d * d).sum(1), 1e-12)
    reach = width / 2.0 + 1.0
    hb = int(math.ceil(math.sqrt(float(seg_len2.max())) + reach + 1.0))
    offs = np.arange(-hb, hb + 1)
    base = np.floor(a).astype(np.int64)
    xs = base[:, 0, None, None] + offs[None, None, :]  # (S, 1, B)
    ys = base[:, 1, None, None] + offs[None, :, None]  # (S, B, 1)
    px = xs - a[:, 0, None, None]
    py = ys - a[:, 1, None, None]
    t = (px * d[:, 0, None, None] + py * d[:, 1, None, None]) / seg_len2[:, None, None]
    t = np.clip(t, 0.0, 1.0)
    ex = px - t * d[:, 0, None, None]
    ey = py - t * d[:, 1, None, None]
    dist = np.sqrt(ex * ex + ey * ey)  # (S, B, B)
    xs_b = np.broadcast_to(xs, dist.shape)
    ys_b = np.broadcast_to(ys, dist.shape)
    keep = (dist <= reach) & (xs_b >= 0) & (xs_b < w) & (ys_b >= 0) & (ys_b < h)
    return (ys_b[keep] * w + xs_b[keep]), dist[keep]


def support_slices(alpha: np.ndarray) -> list[tuple[slice, slice]]:
    """[bounding box (row slice, col slice) of alpha's non-zero pixels], or [] when alpha is all zero."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(alpha[rows[0]: rows[-1] + 1].any(axis=0))
    return [(slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))]


def rasterise_tubes(polylines: list[np.ndarray], widths: list[float], contrasts: list[float],
                    shape: tuple[int, int], reflex: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask and darkness map of tubes of given diameters along polylines.

    Returns ``mask`` (H, W) bool (pixel centre within width/2 of some centreline) and ``dark``
    (H, W) float32 in [0, 1]: the max over tubes of contrast x an absorption profile (chord length through
    a cylinder, antialiased over the last pixel; with ``reflex`` wide tubes get a bright central stripe).
    """
    h, w = shape
    mask = np.zeros(h * w, bool)
    dark = np.zeros(h * w, np.float32)
    if not polylines:
        return mask.reshape(h, w), dark.reshape(h, w)
    all_idx, all_val = [], []
    for pts, width, contrast in zip(polylines, widths, contrasts):
        idx, dist = _tube_pixels(pts, width, shape)
        r = width / 2.0
        mask[idx[dist <= r]] = True
        cover = np.clip(r + 0.5 - dist, 0.0, 1.0)
        chord = np.sqrt(np.clip(1.0 - (dist / (r + 0.5)) ** 2, 0.0, 1.0))
        val = contrast * cover * (0.45 + 0.55 * chord)
        if reflex and width >= 5.0:
            val *= 1.0 - 0.35 * np.exp(-((dist / (0.2 * width)) ** 2))
        all_idx.append(idx)
        all_val.append(val.astype(np.float32))
    np.maximum.at(dark, np.concatenate(all_idx), np.concatenate(all_val))
    return mask.reshape(h, w), dark.reshape(h, w)
