"""Gray-level co-occurrence (GLCM) texture descriptors (paper eqs. 17-20, plus entropy used in eq. 26).

Homogeneity has two definitions in use: the graph paper's eq. 20, ``sum G(i, j) / (1 + |i - j|)``
(``homogeneity="paper"``, the default), and scikit-image's ``graycoprops(..., "homogeneity")``,
``sum G(i, j) / (1 + (i - j)^2)`` (``homogeneity="skimage"``, Haralick's inverse difference moment). Entropy
is ``-sum G log2 G``, in bits.

:func:`glcm_features` describes one region with scikit-image's ``graycomatrix``/``graycoprops``.
:func:`glcm_patch_features` describes many square patches at once (the eq. 26 node features): one
``skimage`` call per patch cost ~0.5 ms, i.e. 100-200 ms per 1024-px vessel graph, so it counts the
co-occurrences of all patches together with ``np.bincount``; the tests check it against ``glcm_features``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import graycomatrix, graycoprops

GLCM_PROPS = ("contrast", "correlation", "energy", "homogeneity", "entropy")
HOMOGENEITY_VARIANTS = ("paper", "skimage")  # 1 / (1 + |i - j|) (eq. 20) | 1 / (1 + (i - j)^2) (skimage)


def _check_glcm_args(levels: int, distances: Sequence[int], angles: Sequence[float],
                     homogeneity: str = "paper") -> None:
    if not 2 <= int(levels) <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    if len(distances) == 0 or min(distances) < 1:
        raise ValueError(f"distances must be a non-empty sequence of ints >= 1, got {distances}")
    if len(angles) == 0:
        raise ValueError("angles must be a non-empty sequence of radians")
    if homogeneity not in HOMOGENEITY_VARIANTS:
        raise ValueError(f"homogeneity must be one of {', '.join(HOMOGENEITY_VARIANTS)}, got {homogeneity!r}")


def glcm_features(gray: np.ndarray, mask: np.ndarray | None = None, *, distances: Sequence[int] = (1,),
                  angles: Sequence[float] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                  levels: int = 32, homogeneity: str = "paper") -> dict[str, float]:
    """GLCM contrast (eq. 17), correlation (eq. 18), energy (eq. 19), homogeneity (eq. 20) and entropy.

    The co-occurrence matrix is symmetric (pairs counted both ways) and normalised per (distance, angle);
    each descriptor is averaged over all distances and angles. Energy follows eq. 19 (sum of squared
    probabilities, i.e. skimage's ASM, not its square root). Entropy = -sum G log2 G (bits).
    Homogeneity: ``"paper"`` = eq. 20, sum G / (1 + |i - j|); ``"skimage"`` = sum G / (1 + (i - j)^2).

    Quantisation: without a mask, ``level = gray * levels // 256`` in [0, levels). With a mask, level 0
    is reserved for outside pixels: inside pixels get ``1 + gray * (levels - 1) // 256`` in [1, levels),
    and row/column 0 is dropped before normalising, so only pairs with both pixels inside the mask count.

    Args:
        gray: (H, W) uint8 grey image (e.g. the green channel).
        mask: (H, W) bool region to describe, or None for the whole image.
        distances: pixel offsets (px, >= 1). angles: offsets' directions in radians (0 = to the right).
        levels: number of grey levels after quantisation, 2..256 (with a mask: 3..256).
        homogeneity: ``"paper"`` (eq. 20) or ``"skimage"`` (see the module docstring).

    Returns:
        dict with keys ``GLCM_PROPS``; every value is NaN (not 0) when no pixel pair lies in the region.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a (H, W) uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    _check_glcm_args(levels, distances, angles, homogeneity)
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
        props = ("contrast", "correlation", "ASM") + (("homogeneity",) if homogeneity == "skimage" else ())
        out = {prop: float(graycoprops(Pn, prop)[valid].mean()) for prop in props}
    out["energy"] = out.pop("ASM")  # eq. 19 is sum G^2 (skimage's "energy" is its square root)
    if homogeneity == "paper":  # eq. 20; graycoprops only has the 1 / (1 + (i - j)^2) weights
        n = Pn.shape[0]
        w = 1.0 / (1.0 + np.abs(np.subtract.outer(np.arange(n), np.arange(n))))
        out["homogeneity"] = float((Pn * w[:, :, None, None]).sum(axis=(0, 1))[valid].mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(Pn > 0, Pn * np.log2(Pn), 0.0).sum(axis=(0, 1))
    out["entropy"] = float(ent[valid].mean())
    return {k: out[k] for k in GLCM_PROPS}


def _offsets(distances: Sequence[int], angles: Sequence[float]) -> list[tuple[int, int]]:
    """(d_row, d_col) per (distance, angle), distance-major as in graycomatrix; skimage's convention
    (angle 0 -> (0, +d), pi/2 -> (-d, 0)). The GLCM is symmetric, so the sign does not matter."""
    return [(-round(float(np.sin(a) * d)), round(float(np.cos(a) * d))) for d in distances for a in angles]


def glcm_patch_features(gray: np.ndarray, centers_rc: np.ndarray, patch_px: int, *,
                        distances: Sequence[int] = (1,),
                        angles: Sequence[float] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                        levels: int = 32, chunk: int = 256, homogeneity: str = "paper") -> dict[str, np.ndarray]:
    """:func:`glcm_features` (no mask) of the square patch around each centre, for all centres at once.

    The patch of centre (r, c) is ``gray[r - h:r + h + 1, c - h:c + h + 1]`` with ``h = patch_px // 2``,
    clipped at the image border (as slicing clips it), and each patch gives the same numbers as
    ``glcm_features(patch, distances=, angles=, levels=)`` up to float rounding (~1e-15 relative):
    the pixel pairs of every (patch, distance, angle) are gathered at once; contrast, homogeneity and
    correlation are means over the pairs (``np.bincount`` with weights per group), energy and entropy
    come from the symmetric co-occurrence counts (one ``np.bincount`` over (group, unordered level pair)
    keys); each descriptor is averaged over the offsets that have pairs.

    Args:
        gray: (H, W) uint8 grey image (e.g. the green channel).
        centers_rc: (N, 2) int patch centres (row, col) px, inside the image.
        patch_px: patch side (px), odd >= 3.
        distances, angles, levels, homogeneity: as in :func:`glcm_features`.
        chunk: patches per batch (bounds memory: ~chunk * offsets * (patch_px^2 + levels^2 / 2) values).

    Returns:
        dict with keys ``GLCM_PROPS``, each (N,) float64; NaN for a patch without any pixel pair.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a (H, W) uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    centers = np.asarray(centers_rc)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers_rc must be (N, 2) (row, col), got shape {centers.shape}")
    h_img, w_img = gray.shape
    if len(centers) and (centers.min() < 0 or centers[:, 0].max() >= h_img or centers[:, 1].max() >= w_img):
        raise ValueError(f"centers_rc must lie inside the {gray.shape} image")
    if patch_px < 3 or patch_px % 2 == 0:
        raise ValueError(f"patch_px must be an odd int >= 3, got {patch_px}")
    _check_glcm_args(levels, distances, angles, homogeneity)
    paper_h = homogeneity == "paper"  # eq. 20 weights 1 / (1 + |i - j|), else skimage's 1 / (1 + (i - j)^2)
    levels = int(levels)
    n = len(centers)
    out = {k: np.full(n, np.nan) for k in GLCM_PROPS}
    if n == 0:
        return out
    q = (gray.astype(np.intp) * levels // 256).ravel()
    h = patch_px // 2
    offs = _offsets(distances, angles)
    n_off = len(offs)
    # Unordered level pair (i <= j) -> triangular index t: the symmetric GLCM has equal entries at (i, j)
    # and (j, i), so one counter per t and per (patch, offset) group holds the whole matrix.
    iu, ju = np.triu_indices(levels)
    n_tri = len(iu)
    tri = np.zeros((levels, levels), np.intp)
    tri[iu, ju] = tri[ju, iu] = np.arange(n_tri)
    tri = tri.ravel()  # indexed by level_a * levels + level_b
    # Pixel pairs (a, b = a + offset) of one full patch: flat offsets of a and b from the centre pixel.
    rel = np.arange(-h, h + 1)
    a_r, a_c = (g.ravel() for g in np.meshgrid(rel, rel, indexing="ij"))
    pr_a, pc_a, pr_b, pc_b, p_grp = [], [], [], [], []
    for k, (dr, dc) in enumerate(offs):
        ok = (np.abs(a_r + dr) <= h) & (np.abs(a_c + dc) <= h)
        pr_a.append(a_r[ok])
        pc_a.append(a_c[ok])
        pr_b.append(a_r[ok] + dr)
        pc_b.append(a_c[ok] + dc)
        p_grp.append(np.full(int(ok.sum()), k))
    pr_a, pc_a, pr_b, pc_b, p_grp = (np.concatenate(v) for v in (pr_a, pc_a, pr_b, pc_b, p_grp))
    flat_a, flat_b, key_off = pr_a * w_img + pc_a, pr_b * w_img + pc_b, p_grp * n_tri
    rows, cols = centers[:, 0].astype(np.intp), centers[:, 1].astype(np.intp)
    for s in range(0, n, chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        m = len(r)
        centre = (r * w_img + c)[:, None]
        inner = (r >= h) & (r < h_img - h) & (c >= h) & (c < w_img - h)
        keys = []
        if inner.any():  # the whole patch is inside the image: every pair counts
            ci = centre[inner]
            keys.append((np.flatnonzero(inner)[:, None] * (n_off * n_tri) + key_off
                         + tri[q[ci + flat_a] * levels + q[ci + flat_b]]).ravel())
        if not inner.all():  # clipped patch: a pair counts when both pixels are inside the image
            bi = np.flatnonzero(~inner)
            ar, ac = r[bi, None] + pr_a, c[bi, None] + pc_a
            br, bc = r[bi, None] + pr_b, c[bi, None] + pc_b
            ok = ((ar >= 0) & (ar < h_img) & (ac >= 0) & (ac < w_img)
                  & (br >= 0) & (br < h_img) & (bc >= 0) & (bc < w_img))
            kb = bi[:, None] * (n_off * n_tri) + key_off + tri[q[np.where(ok, ar * w_img + ac, 0)] * levels
                                                              + q[np.where(ok, br * w_img + bc, 0)]]
            keys.append(kb[ok])
        n_grp = m * n_off
        cu = np.bincount(np.concatenate(keys), minlength=n_grp * n_tri)
        nz = np.flatnonzero(cu)
        g, t = np.divmod(nz, n_tri)
        i, j = iu[t].astype(np.float64), ju[t].astype(np.float64)
        diag = i == j
        npairs = np.bincount(g, cu[nz], n_grp)
        valid = npairs > 0
        # probability mass of the cell over both symmetric positions: 2 c / (2 * pairs)
        pm = cu[nz] / np.where(valid, npairs, 1.0)[g]
        d2 = (i - j) ** 2
        mu = np.bincount(g, pm * (i + j) / 2, n_grp)
        di, dj = i - mu[g], j - mu[g]
        var = np.bincount(g, pm * (di * di + dj * dj) / 2, n_grp)
        cov = np.bincount(g, pm * di * dj, n_grp)
        std = np.sqrt(var)
        near0 = std < 1e-15  # graycoprops: correlation 1 when a std is ~ 0 (constant patch)
        half = np.where(diag, 1.0, 0.5)  # an off-diagonal cell is two entries of pm / 2 each
        props = {"contrast": np.bincount(g, pm * d2, n_grp),
                 "correlation": np.where(near0, 1.0, cov / np.where(near0, 1.0, std * std)),
                 "energy": np.bincount(g, pm * pm * half, n_grp),
                 "homogeneity": np.bincount(g, pm / (1.0 + (np.abs(i - j) if paper_h else d2)), n_grp),
                 "entropy": -np.bincount(g, pm * np.log2(pm * half), n_grp)}
        valid = valid.reshape(m, n_off)
        nv = valid.sum(axis=1)
        has = nv > 0
        for k, v in props.items():  # mean over the offsets with pairs (as glcm_features)
            v = np.where(valid, v.reshape(m, n_off), 0.0).sum(axis=1)
            out[k][s:s + m] = np.where(has, v / np.maximum(nv, 1), np.nan)
    return out
