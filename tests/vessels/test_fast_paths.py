"""The cheaper evaluations of the vessel analysis equal what they replace: FFT disk sums (optic disc) vs
cv2.filter2D, the nearest-skeleton-pixel search vs scipy's feature transform (A/V features), the optic disc
region on the window's bounding box vs the whole frame, zone widths at the measured pixels vs a distance
transform of the zone, and the A/V features vs their whole-image evaluation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from dr_ray.testing import make_fundus
from dr_ray.vessels import detect_optic_disc, segment_features, vessel_graph
from dr_ray.vessels.av.features import FEATURE_NAMES, _nearest_pixel, _width_residual
from dr_ray.vessels.disk_sums import disk, disk_area, disk_sums, mask_terms
from dr_ray.vessels.graph import AV_ARTERY, AV_VEIN
from dr_ray.vessels.optic_disc import _disc_region
from dr_ray.vessels.zone import zone_vessels


@pytest.fixture(scope="module")
def fundus():
    fu = make_fundus(7, 384, 384, lesions=False)
    return fu, vessel_graph(fu.vessel_mask, av_map=fu.av_map, image=fu.image)


# --- disk sums (optic disc) ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (97, 130), (256, 241), (8, 300)])
def test_disk_sums_equal_filter2d(shape):
    rng = np.random.default_rng(0)
    a = rng.random(shape).astype(np.float32)
    b = (rng.random(shape) < 0.7).astype(np.float32)
    radii = [0.8, 1.0, 2.5, 7.3, min(shape) / 3.0, max(shape) / 10.0]  # (8, 300): a disk taller than the image
    conv = disk_sums([a, b], max(radii))
    for r in radii:
        k = disk(r)
        assert disk_area(r) == k.sum()
        for i, x in enumerate((a, b)):
            ref = cv2.filter2D(x, -1, k, borderType=cv2.BORDER_CONSTANT)
            got = conv(i, r)
            assert got.shape == shape and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * k.sum())
    with pytest.raises(ValueError):
        conv(0, max(radii) + 1.0)


def test_mask_terms_are_the_masks_blur_and_disk_counts():
    yy, xx = np.mgrid[:90, :120]
    m = (yy - 45) ** 2 + (xx - 60) ** 2 < 40 ** 2
    blur, counts = mask_terms(m.tobytes(), m.shape, (3.0, 11.5), 12.0)
    np.testing.assert_array_equal(blur, cv2.GaussianBlur(m.astype(np.float32), (0, 0), 12.0))
    for r, c in zip((3.0, 11.5), counts):
        ref = cv2.filter2D(m.astype(np.float32), -1, disk(r), borderType=cv2.BORDER_CONSTANT)
        np.testing.assert_allclose(c, ref, rtol=0, atol=1e-2)
        assert not c.flags.writeable
    assert mask_terms(m.tobytes(), m.shape, (3.0, 11.5), 12.0) is mask_terms(m.tobytes(), m.shape, (3.0, 11.5), 12.0)


# --- nearest skeleton pixel (A/V features) ---------------------------------------------------------------


def _scipy_nearest(feat, rows, cols):
    d, (ir, ic) = ndimage.distance_transform_edt(~feat, return_indices=True)
    return d[rows, cols], ir[rows, cols], ic[rows, cols]


def test_nearest_pixel_equals_scipy_feature_transform_ties_included():
    rng = np.random.default_rng(3)
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(3, 70, 2))
        feat = rng.random((h, w)) < [0.003, 0.02, 0.2][trial % 3]
        if trial % 4 == 0:  # a lattice: many equidistant features
            feat = np.zeros((h, w), bool)
            feat[trial % 3::4, ::3] = True
        if not feat.any():
            feat[h // 2, w - 1] = True
        rows, cols = np.nonzero(rng.random((h, w)) < 0.5)
        got, ref = _nearest_pixel(feat, rows, cols), _scipy_nearest(feat, rows, cols)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)
    feat = np.zeros((5, 5), bool)
    feat[2, 2] = True
    for g in _nearest_pixel(feat, np.zeros(0, np.int64), np.zeros(0, np.int64)):
        assert len(g) == 0


def test_nearest_pixel_on_a_real_skeleton(fundus):
    fu, g = fundus
    on_path = np.zeros(fu.vessel_mask.shape, bool)
    for p in g.edge_paths:
        on_path[p[:, 0], p[:, 1]] = True
    rows, cols = np.nonzero(fu.vessel_mask | (np.random.default_rng(0).random(on_path.shape) < 0.02))
    for a, b in zip(_nearest_pixel(on_path, rows, cols), _scipy_nearest(on_path, rows, cols)):
        np.testing.assert_array_equal(a, b)


# --- optic disc region ----------------------------------------------------------------------------------


def test_disc_region_on_the_window_equals_the_whole_frame():
    rng = np.random.default_rng(2)
    n_found = 0
    for _ in range(120):
        hh, ww = (int(v) for v in rng.integers(60, 200, 2))
        yy, xx = np.mgrid[:hh, :ww]
        rel = np.ones((hh, ww), np.float32)
        for _ in range(int(rng.integers(1, 5))):
            by, bx, br = rng.uniform(0, hh), rng.uniform(0, ww), rng.uniform(3, 25)
            rel += rng.uniform(0.1, 1.0) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * br * br)).astype(np.float32)
            if rng.random() < 0.5:
                rel[np.abs(yy - by) < 1.5] *= 0.7  # a dark gap through the blob
        rel += rng.normal(0, 0.02, rel.shape).astype(np.float32)
        fov = (yy - hh / 2) ** 2 + (xx - ww / 2) ** 2 < (min(hh, ww) / 2) ** 2
        if rng.random() < 0.5:
            fov[:] = True
        for _ in range(15):
            y, x = int(rng.integers(0, hh)), int(rng.integers(0, ww))
            r = float(rng.uniform(2, 20))
            r_max = float(rng.uniform(1.5, 4)) * r
            for frac in (0.1, 0.25):
                a = _disc_region(rel, fov, x, y, r, r_max, frac)
                assert a == _disc_region(rel, fov, x, y, r, r_max, frac, crop=False)
                n_found += a is not None
    assert n_found > 20


def test_disc_found_on_repeated_calls_is_the_same(fundus):
    fu, _ = fundus
    first = detect_optic_disc(fu.image, fu.fov_mask, vessel_mask=fu.vessel_mask)  # fills the caches
    assert first.found and first == detect_optic_disc(fu.image, fu.fov_mask, vessel_mask=fu.vessel_mask)


# --- zone widths ------------------------------------------------------------------------------------------


def _reference_zone_widths(graph, disc, mask):
    """Width and angle per A/V segment in the zone, as zone_vessels measured them with a distance transform of
    the zone's bounding box."""
    dd = disc.diameter_px
    r_in, r_out = dd, 1.5 * dd
    m = math.ceil(r_out + 0.5 * dd)
    y0, x0 = max(0, int(disc.cy) - m), max(0, int(disc.cx) - m)
    d = ndimage.distance_transform_edt(mask[y0:int(disc.cy) + m + 1, x0:int(disc.cx) + m + 1])
    out = {}
    for e in np.flatnonzero(np.isin(graph.av_label, (AV_ARTERY, AV_VEIN))):
        rc = graph.edge_paths[e]
        dy, dx = rc[:, 0] - disc.cy, rc[:, 1] - disc.cx
        inz = (np.hypot(dx, dy) >= r_in) & (np.hypot(dx, dy) <= r_out)
        if not inz.any():
            continue
        reach = max(2.0, float(graph.caliber_mean_px[e]))
        clear = np.ones(len(rc), bool)
        for end, n in ((rc[0], graph.edges[e, 0]), (rc[-1], graph.edges[e, 1])):
            if graph.node_degree[int(n)] >= 3:
                clear &= np.hypot(rc[:, 0] - end[0], rc[:, 1] - end[1]) > reach
        sel = inz & clear if np.count_nonzero(inz & clear) >= 3 else inz
        rr, cc = rc[sel, 0] - y0, rc[sel, 1] - x0
        ok = (rr >= 0) & (rr < d.shape[0]) & (cc >= 0) & (cc < d.shape[1])
        width = float(np.mean(2.0 * d[rr[ok], cc[ok]] - 1.0)) if ok.any() else float(graph.caliber_mean_px[e])
        out[int(e)] = width
    return out


def test_zone_widths_equal_a_distance_transform_of_the_zone(fundus):
    fu, g = fundus
    disc = detect_optic_disc(fu.image, fu.fov_mask, vessel_mask=fu.vessel_mask)
    assert disc.found
    ref = _reference_zone_widths(g, disc, fu.vessel_mask)
    vessels = zone_vessels(g, disc, mask=fu.vessel_mask)
    assert vessels and {e for v in vessels for e in v.edges} == set(ref)
    for v in vessels:
        assert v.width_px in [ref[e] for e in v.edges]


# --- A/V features ---------------------------------------------------------------------------------------


def _reference_features(graph, image, mask):
    """segment_features as first written: whole-image background, scipy distance transforms."""
    n_e, h, w = graph.n_edges, *mask.shape
    img = image.astype(np.float32)
    lit = img.sum(axis=2) > 30.0
    cal, lens = graph.caliber_mean_px, np.maximum(graph.arc_length_px, 1e-6)
    order = np.argsort(cal)
    cum = np.cumsum(lens[order])
    med_cal = max(float(cal[order][np.searchsorted(cum, 0.5 * cum[-1])]), 1.0)
    sigma = max(3.0, 2.5 * med_cal)
    wbg = (lit & ~mask).astype(np.float32)
    den = cv2.GaussianBlur(wbg, (0, 0), sigma)
    bg = np.empty_like(img)
    for c in range(3):
        bg[..., c] = cv2.GaussianBlur(img[..., c] * wbg, (0, 0), sigma) / np.maximum(den, 1e-6)
    fallback = img[(lit & ~mask)].mean(axis=0) if (lit & ~mask).any() else np.full(3, 128.0, np.float32)
    bg = np.maximum(np.where((den > 1e-3)[..., None], bg, fallback[None, None, :]), 1.0)
    edge_id = np.full((h, w), -1, np.int32)
    for e, p in enumerate(graph.edge_paths):
        edge_id[p[:, 0], p[:, 1]] = e
    on_path = edge_id >= 0
    d_skel, (ir, ic) = ndimage.distance_transform_edt(~on_path, return_indices=True)
    vr, vc = np.nonzero(mask & lit)
    eid = edge_id[ir[vr, vc], ic[vr, vc]]
    half = ndimage.distance_transform_edt(mask)[ir[vr, vc], ic[vr, vc]] - 1.0
    t = d_skel[vr, vc] / np.maximum(half, 1e-6)
    centre, rim = (half >= 1.0) & (t <= 1.0 / 3.0), (half >= 1.0) & (t >= 2.0 / 3.0)
    pix = img[vr, vc]
    rel = pix / bg[vr, vc]

    def seg_mean(values, sel=None):
        ids, vals = (eid, values) if sel is None else (eid[sel], values[sel])
        cnt = np.bincount(ids, minlength=n_e).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(ids, weights=vals, minlength=n_e) / cnt, cnt

    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    feats = np.zeros((n_e, len(FEATURE_NAMES)))
    for c, name in enumerate("rgb"):
        feats[:, col[f"{name}_bg"]] = seg_mean(rel[:, c])[0]
    pr, pc = np.nonzero(on_path)
    pe, prel = edge_id[pr, pc], img[pr, pc] / bg[pr, pc]
    cnt = np.bincount(pe, minlength=n_e).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["r_centre_bg"]] = np.bincount(pe, weights=prel[:, 0], minlength=n_e) / cnt
        feats[:, col["g_centre_bg"]] = np.bincount(pe, weights=prel[:, 1], minlength=n_e) / cnt
    mu, sd = pix.mean(axis=0), pix.std(axis=0) + 1e-6
    for c, name in enumerate("rgb"):
        feats[:, col[f"{name}_z"]] = (seg_mean(pix[:, c].astype(np.float64))[0] - mu[c]) / sd[c]
    mr, mg, mb = (seg_mean(pix[:, c].astype(np.float64))[0] for c in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["g_over_r"]], feats[:, col["b_over_r"]] = mg / np.maximum(mr, 1.0), mb / np.maximum(mr, 1.0)
    for c, name in ((0, "r"), (1, "g")):
        (mc, nc), (mo, no) = seg_mean(rel[:, c], centre), seg_mean(rel[:, c], rim)
        feats[:, col[f"reflex_{name}"]] = np.where((nc > 0) & (no > 0), mc - mo, 0.0)
    mg_rel, m2 = seg_mean(rel[:, 1])[0], seg_mean(rel[:, 1] ** 2)[0]
    feats[:, col["g_std_bg"]] = np.sqrt(np.maximum(m2 - mg_rel ** 2, 0.0))
    feats[:, col["width_rel"]] = cal / med_cal
    feats[~np.isfinite(feats)] = 0.0
    log_w = np.log(np.maximum(feats[:, col["width_rel"]], 0.05))
    for name in FEATURE_NAMES:
        if name.startswith("res_"):
            feats[:, col[name]] = _width_residual(feats[:, col[name[4:]]], log_w, lens)
    return feats.astype(np.float32)


def test_features_equal_their_whole_image_evaluation(fundus):
    fu, g = fundus
    np.testing.assert_array_equal(segment_features(g, fu.image, fu.vessel_mask),
                                  _reference_features(g, fu.image, fu.vessel_mask))


def test_features_far_from_any_background_use_the_fallback_colour_as_before():
    # a filled disc of vessel pixels: its centre is > 3 sigma from any background pixel (den ~ 0 there)
    fu = make_fundus(2, 256, 256, lesions=False)
    yy, xx = np.mgrid[:256, :256]
    mask = fu.vessel_mask | ((yy - 150) ** 2 + (xx - 100) ** 2 < 35 ** 2)
    img = fu.image.copy()
    img[:, :20] = 0  # an unlit band: not background either
    g = vessel_graph(mask, prune_spur_px=0)
    lit = img.astype(np.float32).sum(axis=2) > 30
    den = cv2.GaussianBlur((lit & ~mask).astype(np.float32), (0, 0), 4.75)  # ~ the sigma segment_features uses
    assert np.count_nonzero((den <= 1e-3) & mask & lit) > 500
    np.testing.assert_array_equal(segment_features(g, img, mask), _reference_features(g, img, mask))
