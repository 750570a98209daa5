"""Box-counting fractal dimension of a binary vessel mask (paper eq. 22)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MaskTooSmallError(ValueError):
    """The foreground is too small for the requested box sizes (a mask property, not a caller error)."""


def box_counts(mask: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Number of ``s x s`` boxes (grid anchored at pixel (0, 0)) holding any foreground pixel.

    mask: (H, W) bool; sizes: (K,) int box sides in px. Returns (K,) int64. The mask is zero-padded
    up to a multiple of ``s`` so that the last partial row/column of boxes is counted.
    """
    counts = np.empty(len(sizes), np.int64)
    h, w = mask.shape
    sizes = np.asarray(sizes)
    if len(sizes) and np.all(sizes == 2 ** np.arange(1, len(sizes) + 1)):
        return _dyadic_box_counts(mask, len(sizes))
    for k, s in enumerate(sizes):
        s = int(s)
        hp, wp = -(-h // s) * s, -(-w // s) * s
        padded = np.zeros((hp, wp), bool)
        padded[:h, :w] = mask
        counts[k] = int(padded.reshape(hp // s, s, wp // s, s).any(axis=(1, 3)).sum())
    return counts


def _dyadic_box_counts(mask: np.ndarray, n_levels: int) -> np.ndarray:
    """:func:`box_counts` for sides 2, 4, ..., 2^n_levels: each level ORs 2 x 2 blocks of the previous one
    (zero-padded to even size), so the grids stay anchored at (0, 0) and the counts are identical, at
    ~1/3 of one pass over the mask instead of one pass per size."""
    counts = np.empty(n_levels, np.int64)
    occ = mask.astype(bool, copy=False)
    for k in range(n_levels):
        h, w = occ.shape
        if h % 2 or w % 2:
            occ = np.pad(occ, ((0, h % 2), (0, w % 2)))
        occ = occ[0::2, 0::2] | occ[1::2, 0::2] | occ[0::2, 1::2] | occ[1::2, 1::2]
        counts[k] = np.count_nonzero(occ)
    return counts


def box_counting_fd(mask: np.ndarray, *, max_box_fraction: float = 0.25, sizes: Sequence[int] | None = None,
                    crop: bool = True) -> float:
    """Box-counting fractal dimension (eq. 22: FD = lim log N(eps) / log(1/eps)).

    The limit is estimated as the least-squares slope of log N(s) against log(1/s) over box sides
    s = 2, 4, 8, ... up to ``max_box_fraction`` times the longer side of the foreground bounding box (the mask is
    cropped to that box first; at least three sizes are needed).

    The estimate depends on the range of box sizes (vasculature is not self-similar over all scales: small
    boxes see 1-D vessel segments, boxes near the image size see a filled disc). ``sizes`` and ``crop``
    select another convention; PVBM's (``MultifractalVBMs``, D0) is
    ``sizes=np.linspace(5, int(0.6 * min(H, W)), 20).astype(int), crop=False`` (linear spacing from 5 px
    to 0.6 of the shorter image side, uncropped image), which reads ~0.1-0.2 higher on retinal masks than
    the default (see ``docs/bench_vessel_graph.md``).

    Args:
        mask: (H, W) bool (or 0/1) vessel mask; any nonzero pixel is foreground.
        max_box_fraction: largest box side as a fraction of the longer side of the (cropped) mask, in (0, 1];
            ignored when ``sizes`` is given.
        sizes: explicit box sides (px, ints >= 1, at least 3 distinct), or None for the dyadic default.
        crop: crop the mask to its foreground bounding box first (default True: empty margins only add
            partly filled large boxes, which bend the log-log line: a 300 px square inside a 512 px frame
            reads 1.82 uncropped, 2.00 cropped).

    Returns:
        FD, dimensionless (1 for a line, 2 for a filled region, ~1.4-1.7 for retinal vasculature).

    Raises:
        ValueError: ``mask`` not 2-D, empty (no foreground), or too small for three box sizes
            (:class:`MaskTooSmallError`); ``max_box_fraction`` outside (0, 1]; ``sizes`` not >= 3 distinct
            ints >= 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    if not 0 < max_box_fraction <= 1:
        raise ValueError(f"max_box_fraction must be in (0, 1], got {max_box_fraction}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("mask has no foreground pixels: the fractal dimension of an empty vessel mask is undefined")
    if crop:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if sizes is None:
        s_max = max_box_fraction * max(mask.shape)
        sizes = 2 ** np.arange(1, int(np.floor(np.log2(max(s_max, 1)))) + 1)
        if len(sizes) < 3:
            raise MaskTooSmallError(f"mask of shape {mask.shape} is too small for box counting with max_box_fraction="
                             f"{max_box_fraction}: need box sides 2, 4, 8 at least")
    else:
        sizes = np.asarray(sizes)
        if (sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or len(sizes) == 0
                or sizes.min() < 1 or len(np.unique(sizes)) < 3):
            raise ValueError(f"sizes must be a 1-D sequence of at least 3 distinct ints >= 1, got {sizes!r}")
    counts = box_counts(mask, sizes)
    slope, _ = np.polyfit(np.log(1.0 / sizes), np.log(counts), 1)
    return float(slope)
