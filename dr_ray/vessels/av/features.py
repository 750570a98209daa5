"""Per-segment artery/vein features (``FEATURE_NAMES``, :func:`segment_features`); see :mod:`dr_ray.vessels.av`."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from dr_ray.vessels.graph import VesselGraph
from dr_ray.vessels.graph_features import mask_distance_at

_BASE_FEATURES = (
    "r_bg", "g_bg", "b_bg",  # mean colour in the vessel / local background colour
    "r_centre_bg", "g_centre_bg",  # the same along the skeleton path only
    "r_z", "g_z", "b_z",  # mean colour standardised over all vessel pixels of the image
    "g_over_r", "b_over_r",  # colour ratios inside the vessel
    "reflex_r", "reflex_g",  # (central third - outer third) / background: central light reflex
    "g_std_bg",  # spread of green / background over the segment's pixels
    "width_rel",  # mean caliber / the image's length-weighted median caliber
)
# Thin vessels look lighter whatever their type (blur mixes in background), so colour is also compared with
# what this image's vessels of the same width show: residual of a per-image fit on log width.
_RESIDUAL_OF = ("r_bg", "g_bg", "b_bg", "r_centre_bg", "g_centre_bg", "reflex_r", "reflex_g", "g_over_r",
                "b_over_r")
FEATURE_NAMES = _BASE_FEATURES + tuple(f"res_{n}" for n in _RESIDUAL_OF)


def _check_graph_inputs(graph: VesselGraph, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be (H, W) matching image {image.shape[:2]}, got shape {mask.shape}")
    if tuple(graph.shape) != mask.shape:
        raise ValueError(f"graph was built on a {graph.shape} mask, got mask {mask.shape}")
    return image, mask.astype(bool, copy=False)


def segment_features(graph: VesselGraph, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-segment A/V features, columns ``FEATURE_NAMES``.

    Args:
        graph: the :class:`VesselGraph` built from ``mask`` (E edges).
        image: (H, W, 3) uint8 RGB the mask belongs to.
        mask: (H, W) bool vessel mask the graph was built from.

    Returns:
        (E, F) float32, F = len(FEATURE_NAMES). Every vessel pixel is assigned to the segment whose skeleton
        pixel is nearest. A value that cannot be measured (no background nearby, no vessel pixel of a
        segment) is 0, the feature's "typical" value after standardisation (NaN would break the classifier).
    """
    image, mask = _check_graph_inputs(graph, image, mask)
    n_e = graph.n_edges
    n_f = len(FEATURE_NAMES)
    if n_e == 0:
        return np.zeros((0, n_f), np.float32)
    h, w = mask.shape
    img = image.astype(np.float32)
    lit = img[..., 0] + img[..., 1] + img[..., 2] > 30.0  # the black camera surround is not background
    cal = graph.caliber_mean_px
    lens = np.maximum(graph.arc_length_px, 1e-6)
    order = np.argsort(cal)
    cum = np.cumsum(lens[order])
    med_cal = float(cal[order][np.searchsorted(cum, 0.5 * cum[-1])])  # length-weighted median caliber
    med_cal = max(med_cal, 1.0)

    # local background colour: Gaussian-weighted mean of lit non-vessel pixels (evaluated where it is read)
    sigma = max(3.0, 2.5 * med_cal)
    wbg = (lit & ~mask).astype(np.float32)
    den = cv2.GaussianBlur(wbg, (0, 0), sigma)
    num = [cv2.GaussianBlur(img[..., c] * wbg, (0, 0), sigma) for c in range(3)]

    def bg_at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        dd = den[r, c]
        bg = np.stack([n[r, c] for n in num], axis=1) / np.maximum(dd, 1e-6)[:, None]
        if np.any(dd <= 1e-3):  # no background nearby: the image's mean background colour
            fallback = img[(lit & ~mask)].mean(axis=0) if (lit & ~mask).any() else np.full(3, 128.0, np.float32)
            bg = np.where((dd > 1e-3)[:, None], bg, fallback[None, :])
        return np.maximum(bg, 1.0)

    # vessel pixel -> nearest skeleton pixel -> its edge (a pixel shared by paths: the last); radial position
    edge_id = np.full(h * w, -1, np.int32)
    np.maximum.at(edge_id, np.concatenate([p[:, 0] * w + p[:, 1] for p in graph.edge_paths]),
                  np.repeat(np.arange(n_e, dtype=np.int32), [len(p) for p in graph.edge_paths]))
    edge_id = edge_id.reshape(h, w)
    on_path = edge_id >= 0
    pr, pc = np.nonzero(on_path)
    vr, vc = np.nonzero(mask & lit)
    d_skel, ir, ic = _nearest_pixel(on_path, vr, vc)
    eid = edge_id[ir, ic]
    at_path = np.full(h * w, -1, np.int64)
    at_path[pr * w + pc] = np.arange(len(pr))
    d_bg = mask_distance_at(np.ascontiguousarray(mask), pr, pc)  # = distance_transform_edt(mask)[pr, pc]
    half = d_bg[at_path[ir * w + ic]] - 1.0  # ~ (width - 1) / 2 at the nearest centreline pixel
    t = d_skel / np.maximum(half, 1e-6)  # 0 centre .. ~1 rim
    thick = half >= 1.0  # width >= 3 px: centre and rim are distinct pixels
    centre = thick & (t <= 1.0 / 3.0)
    rim = thick & (t >= 2.0 / 3.0)

    pix = img[vr, vc]  # (P, 3)
    rel = pix / bg_at(vr, vc)

    def seg_mean(values: np.ndarray, sel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = eid if sel is None else eid[sel]
        vals = values if sel is None else values[sel]
        cnt = np.bincount(ids, minlength=n_e).astype(np.float64)
        s = np.bincount(ids, weights=vals, minlength=n_e)
        with np.errstate(invalid="ignore", divide="ignore"):
            return s / cnt, cnt

    feats = np.zeros((n_e, n_f), np.float64)
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for c, name in enumerate(("r", "g", "b")):
        feats[:, col[f"{name}_bg"]], _ = seg_mean(rel[:, c])
    # along the skeleton path only
    pe = edge_id[pr, pc]
    prel = img[pr, pc] / bg_at(pr, pc)
    cnt = np.bincount(pe, minlength=n_e).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["r_centre_bg"]] = np.bincount(pe, weights=prel[:, 0], minlength=n_e) / cnt
        feats[:, col["g_centre_bg"]] = np.bincount(pe, weights=prel[:, 1], minlength=n_e) / cnt
    # image-standardised colour
    mu, sd = pix.mean(axis=0), pix.std(axis=0) + 1e-6
    for c, name in enumerate(("r", "g", "b")):
        m, _ = seg_mean(pix[:, c].astype(np.float64))
        feats[:, col[f"{name}_z"]] = (m - mu[c]) / sd[c]
    mr, _ = seg_mean(pix[:, 0].astype(np.float64))
    mg, _ = seg_mean(pix[:, 1].astype(np.float64))
    mb, _ = seg_mean(pix[:, 2].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["g_over_r"]] = mg / np.maximum(mr, 1.0)
        feats[:, col["b_over_r"]] = mb / np.maximum(mr, 1.0)
    for c, name in ((0, "r"), (1, "g")):
        mc, nc = seg_mean(rel[:, c], centre)
        mo, no = seg_mean(rel[:, c], rim)
        feats[:, col[f"reflex_{name}"]] = np.where((nc > 0) & (no > 0), mc - mo, 0.0)
    mg_rel, _ = seg_mean(rel[:, 1])
    m2, _ = seg_mean(rel[:, 1] ** 2)
    feats[:, col["g_std_bg"]] = np.sqrt(np.maximum(m2 - mg_rel ** 2, 0.0))
    feats[:, col["width_rel"]] = cal / med_cal
    feats[~np.isfinite(feats)] = 0.0
    log_w = np.log(np.maximum(feats[:, col["width_rel"]], 0.05))
    for name in _RESIDUAL_OF:
        feats[:, col[f"res_{name}"]] = _width_residual(feats[:, col[name]], log_w, lens)
    return feats.astype(np.float32)


def _width_residual(v: np.ndarray, log_w: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """v minus its length-weighted least-squares fit on (1, log w, log^2 w) over this image's segments
    (minus the weighted mean when there are fewer than 6 segments)."""
    if len(v) < 6:
        return v - np.average(v, weights=weights)
    a = np.column_stack([np.ones_like(log_w), log_w, log_w ** 2])
    sw = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(a * sw[:, None], v * sw, rcond=None)
    return v - a @ coef


def _nearest_pixel(feat: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distance (px) from each pixel (rows, cols) to the nearest True pixel of ``feat`` and that pixel's row and
    column: ``ndimage.distance_transform_edt(~feat, return_indices=True)`` at those pixels, ties broken as it
    breaks them (smallest column, then smallest row), but computed only there. Separable: scipy's first pass
    (nearest in the same column, ties to the smaller row) over the image, then the columns within the
    city-block distance (>= the Euclidean one) of each pixel are searched."""
    h, w = feat.shape
    ub = cv2.distanceTransform((~feat).view(np.uint8), cv2.DIST_L1, 3)[rows, cols].astype(np.int64)
    nk = 2 * ub + 1
    if not feat.any() or h + w > 10_000 or int(nk.sum()) > 20_000_000:
        d, (ir, ic) = ndimage.distance_transform_edt(~feat, return_indices=True)
        return d[rows, cols], ir[rows, cols], ic[rows, cols]
    far = h + w + 1
    r_idx = np.arange(h, dtype=np.int16)[:, None]
    up = np.maximum.accumulate(np.where(feat, r_idx, np.int16(-far)), axis=0)
    down = np.minimum.accumulate(np.where(feat[::-1], r_idx[::-1], np.int16(2 * far)), axis=0)[::-1]
    sel = np.where(r_idx - up <= down - r_idx, up, down)  # nearest row in the column (far: none)
    g_col = np.minimum(np.abs(sel - r_idx), far).astype(np.int64).ravel()
    starts = np.cumsum(nk) - nk
    q = np.repeat(np.arange(len(rows)), nk)
    k = np.arange(len(q)) - np.repeat(starts + ub, nk)  # column offset, -ub..ub
    cc = cols[q] + k
    inside = (cc >= 0) & (cc < w)
    cc = np.clip(cc, 0, w - 1)
    g = g_col[rows[q] * w + cc]
    key = np.where(inside, (k * k + g * g) * w + cc, np.iinfo(np.int64).max)
    bc = np.minimum.reduceat(key, starts) % w  # the smallest distance, then the smallest column
    br = sel[rows, bc].astype(np.int64)
    return np.sqrt(((br - rows) ** 2 + (bc - cols) ** 2).astype(np.float64)), br, bc
