"""Gray-level co-occurrence (GLCM) texture descriptors (paper eqs. 17-20, plus entropy used in eq. 26)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import graycomatrix, graycoprops

GLCM_PROPS = ("contrast", "correlation", "energy", "homogeneity", "entropy")


def glcm_features(gray: np.ndarray, mask: np.ndarray | None = None, *, distances: Sequence[int] = (1,),
                  angles: Sequence[float] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                  levels: int = 32) -> dict[str, float]:
    """GLCM contrast (eq. 17), correlation (eq. 18), energy (eq. 19), homogeneity (eq. 20) and entropy.

    The co-occurrence matrix is symmetric (pairs counted both ways) and normalised per (distance, angle);
    each descriptor is averaged over all distances and angles. Energy follows eq. 19 (sum of squared
    probabilities, i.e. skimage's ASM, not its square root). Entropy = -sum G log2 G (bits).

    Quantisation: without a mask, ``level = gray * levels // 256`` in [0, levels). With a mask, level 0
    is reserved for outside pixels: inside pixels get ``1 + gray * (levels - 1) // 256`` in [1, levels),
    and row/column 0 is dropped before normalising, so only pairs with both pixels inside the mask count.

    Args:
        gray: (H, W) uint8 grey image (e.g. the green channel).
        mask: (H, W) bool region to describe, or None for the whole image.
        distances: pixel offsets (px, >= 1). angles: offsets' directions in radians (0 = to the right).
        levels: number of grey levels after quantisation, 2..256 (with a mask: 3..256).

    Returns:
        dict with keys ``GLCM_PROPS``; every value is NaN (not 0) when no pixel pair lies in the region.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a (H, W) uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    if not 2 <= int(levels) <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    if len(distances) == 0 or min(distances) < 1:
        raise ValueError(f"distances must be a non-empty sequence of ints >= 1, got {distances}")
    if len(angles) == 0:
        raise ValueError("angles must be a non-empty sequence of radians")
    levels = int(levels)
    g = gray.astype(np.int32)
    if mask is None:
        q = (g * levels // 256).astype(np.uint8)
        drop = 0
    else:
        mask = np.asarray(mask)
        if mask.shape != gray.shape:
            raise ValueError(f"mask shape {mask.shape} does not match gray shape {gray.shape}")
        if levels < 3:
            raise ValueError(f"levels must be >= 3 with a mask (level 0 is reserved), got {levels}")
        q = np.where(mask.astype(bool), 1 + g * (levels - 1) // 256, 0).astype(np.uint8)
        drop = 1
    P = graycomatrix(q, distances=list(distances), angles=list(angles), levels=levels, symmetric=True)
    P = P[drop:, drop:].astype(np.float64)
    totals = P.sum(axis=(0, 1))  # (n_dist, n_angle)
    if np.all(totals == 0):
        return {k: float("nan") for k in GLCM_PROPS}
    valid = totals > 0  # an offset longer than the region has no pairs: leave it out of the average
    Pn = P / np.where(totals > 0, totals, 1)[None, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # offsets without pairs; excluded via `valid`
        out = {prop: float(graycoprops(Pn, prop)[valid].mean())
               for prop in ("contrast", "correlation", "homogeneity", "ASM")}
    out["energy"] = out.pop("ASM")  # eq. 19 is sum G^2 (skimage's "energy" is its square root)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(Pn > 0, Pn * np.log2(Pn), 0.0).sum(axis=(0, 1))
    out["entropy"] = float(ent[valid].mean())
    return {k: out[k] for k in GLCM_PROPS}
