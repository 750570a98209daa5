"""Per-segment artery/vein features (``FEATURE_NAMES``, :func:`segment_features`); see :mod:`dr_ray.vessels.av`."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from dr_ray.vessels.graph import VesselGraph

_BASE_FEATURES = (
    "r_bg", "g_bg", "b_bg",  # mean colour in the vessel / local background colour
    "r_centre_bg", "g_centre_bg",  # the same along the skeleton path only
    "r_z", "g_z", "b_z",  # mean colour standardised over all vessel pixels of the image
    "g_over_r", "b_over_r",  # colour ratios inside the vessel
    "reflex_r", "reflex_g",  # (central third - outer third) / background: central light reflex
    "g_std_bg",  # spread of green / background over the segment's pixels
    "width_rel",  # mean calibre / the image's length-weighted median calibre
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
    lit = img.sum(axis=2) > 30.0  # the black camera surround is not background
    cal = graph.caliber_mean_px
    lens = np.maximum(graph.arc_length_px, 1e-6)
    order = np.argsort(cal)
    cum = np.cumsum(lens[order])
    med_cal = float(cal[order][np.searchsorted(cum, 0.5 * cum[-1])])  # length-weighted median calibre
    med_cal = max(med_cal, 1.0)

    # local background colour: Gaussian-weighted mean of lit non-vessel pixels
    sigma = max(3.0, 2.5 * med_cal)
    wbg = (lit & ~mask).astype(np.float32)
    den = cv2.GaussianBlur(wbg, (0, 0), sigma)
    bg = np.empty_like(img)
    for c in range(3):
        bg[..., c] = cv2.GaussianBlur(img[..., c] * wbg, (0, 0), sigma) / np.maximum(den, 1e-6)
    fallback = img[(lit & ~mask)].mean(axis=0) if (lit & ~mask).any() else np.full(3, 128.0, np.float32)
    bg = np.where((den > 1e-3)[..., None], bg, fallback[None, None, :])
    bg = np.maximum(bg, 1.0)

    # vessel pixel -> nearest skeleton pixel -> its edge; radial position inside the vessel
    edge_id = np.full((h, w), -1, np.int32)
    for e, p in enumerate(graph.edge_paths):
        edge_id[p[:, 0], p[:, 1]] = e
    on_path = edge_id >= 0
    d_skel, (ir, ic) = ndimage.distance_transform_edt(~on_path, return_indices=True)
    vr, vc = np.nonzero(mask & lit)
    eid = edge_id[ir[vr, vc], ic[vr, vc]]
    d_bg = ndimage.distance_transform_edt(mask)
    half = d_bg[ir[vr, vc], ic[vr, vc]] - 1.0  # ~ (width - 1) / 2 at the nearest centreline pixel
    t = d_skel[vr, vc] / np.maximum(half, 1e-6)  # 0 centre .. ~1 rim
    thick = half >= 1.0  # width >= 3 px: centre and rim are distinct pixels
    centre = thick & (t <= 1.0 / 3.0)
    rim = thick & (t >= 2.0 / 3.0)

    pix = img[vr, vc]  # (P, 3)
    rel = pix / bg[vr, vc]

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
    pr, pc = np.nonzero(on_path)
    pe = edge_id[pr, pc]
    prel = img[pr, pc] / bg[pr, pc]
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
