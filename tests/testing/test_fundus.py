"""Synthetic fundus generator: determinism, FOV geometry, vessel masks vs the vessel graph, lesions vs grade,
colour, JPEG round trip and the EyePACS-layout sample writer."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from dr_ray.io.columns import LESION_KINDS
from dr_ray.testing import (
    SyntheticFundus,
    encode_jpeg,
    eyepacs_like_grades,
    make_fundus,
    write_eyepacs_like_dataset,
)


@pytest.fixture(scope="module")
def centered() -> SyntheticFundus:
    return make_fundus(11, 512, 512, grade=2, eye="right")


@pytest.fixture(scope="module")
def eyepacs() -> SyntheticFundus:
    return make_fundus(12, 768, 512, style="eyepacs", grade=3, notch=False, crop_top_bottom=0.0, eye="left")


def _circle(shape, cx, cy, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _band_circle_area(r: float, y_lo: float, y_hi: float) -> float:
    """Area of a disc of radius r (centre at y=0) between y_lo and y_hi."""

    def prim(y: float) -> float:
        y = min(max(y, -r), r)
        return y * math.sqrt(r * r - y * y) + r * r * math.asin(y / r)

    return prim(y_hi) - prim(y_lo)


def _skeleton_length(skel: np.ndarray) -> float:
    """Length of an 8-connected skeleton: 1 per orthogonal step, sqrt(2) per diagonal step not already
    covered by an orthogonal L-path (which would double count corners)."""
    s = skel.astype(bool)
    ortho = (s[:, 1:] & s[:, :-1]).sum() + (s[1:, :] & s[:-1, :]).sum()
    d1 = s[1:, 1:] & s[:-1, :-1] & ~s[:-1, 1:] & ~s[1:, :-1]
    d2 = s[1:, :-1] & s[:-1, 1:] & ~s[:-1, :-1] & ~s[1:, 1:]
    return float(ortho + math.sqrt(2) * (d1.sum() + d2.sum()))


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_everything_different_seed_differs():
    a, b = make_fundus(5, 256, 256), make_fundus(5, 256, 256)
    for name in ("image", "fov_mask", "vessel_mask", "av_map", "nodes", "node_kind", "edges", "edge_width_px",
                 "edge_av", "edge_length_px"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for k in LESION_KINDS:
        assert np.array_equal(a.lesion_masks[k], b.lesion_masks[k]), k
    assert (a.grade, a.eye, a.disc_center, a.fov_radius) == (b.grade, b.eye, b.disc_center, b.fov_radius)
    c = make_fundus(6, 256, 256)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.vessel_mask, c.vessel_mask)


def test_switching_parts_off_keeps_the_other_parts():
    full = make_fundus(21, 256, 256, grade=3, eye="left")
    no_vessels = make_fundus(21, 256, 256, grade=3, eye="left", vessels=False)
    no_lesions = make_fundus(21, 256, 256, eye="left", lesions=False)
    assert not no_vessels.vessel_mask.any() and not no_vessels.av_map.any()
    assert no_vessels.nodes.shape == (0, 2) and no_vessels.edges.shape == (0, 2)
    assert no_vessels.edge_width_px.shape == no_vessels.edge_length_px.shape == (0,)
    for k in LESION_KINDS:
        assert np.array_equal(full.lesion_masks[k], no_vessels.lesion_masks[k]), k
        assert not no_lesions.lesion_masks[k].any(), k
    assert no_lesions.grade == 0
    assert np.array_equal(full.vessel_mask, no_lesions.vessel_mask)
    assert np.array_equal(full.fov_mask, no_vessels.fov_mask)
    # without vessels the vessel pixels of `full` are brighter in green (they were the dark vessels)
    m = full.vessel_mask & ~np.any(list(full.lesion_masks.values()), axis=0)
    assert no_vessels.image[..., 1][m].mean() > full.image[..., 1][m].mean() + 10


# --- field of view --------------------------------------------------------------------------------


def test_centered_fov_is_the_full_circle(centered):
    f = centered
    h, w = f.fov_mask.shape
    cx, cy = f.fov_center
    r = f.fov_radius
    assert r + 2 < min(cx, cy, w - 1 - cx, h - 1 - cy)  # whole circle inside the frame
    assert 0.44 * 512 <= r <= 0.48 * 512
    assert abs(f.fov_mask.sum() - math.pi * r * r) < 0.01 * math.pi * r * r
    circle = _circle(f.fov_mask.shape, cx, cy, r)
    assert np.count_nonzero(circle ^ f.fov_mask) <= 0.002 * circle.sum()
    # outside the FOV the frame is black
    assert f.image[~_circle(f.fov_mask.shape, cx, cy, r + 3)].max() <= 8


def test_eyepacs_fov_fills_the_height_with_black_surround(eyepacs):
    f = eyepacs
    h, w = f.fov_mask.shape
    cx, cy = f.fov_center
    assert (cx, cy) == ((w - 1) / 2, (h - 1) / 2)
    assert 0.47 * h <= f.fov_radius <= 0.5 * h
    assert not f.fov_mask[0].any() and not f.fov_mask[-1].any()  # crop 0: not cut
    assert not f.fov_mask[:, : int(cx - f.fov_radius) - 1].any()  # black sides
    outside = ~_circle(f.fov_mask.shape, cx, cy, f.fov_radius + 3)
    assert f.image[outside].mean() < 2.0 and f.image[outside].max() <= 8


def test_crop_top_bottom_cuts_the_circle_by_the_frame():
    f = make_fundus(13, 600, 400, style="eyepacs", crop_top_bottom=0.1, notch=False)
    h, w = f.fov_mask.shape
    cx, cy = f.fov_center
    r = f.fov_radius
    assert r == pytest.approx(h / (2 * 0.9))
    assert f.fov_mask[0].any() and f.fov_mask[-1].any()
    # the top row is a chord of the circle
    chord = 2 * math.sqrt(r * r - cy * cy)
    assert abs(f.fov_mask[0].sum() - chord) <= 2
    area = _band_circle_area(r, -cy - 0.5, h - 1 - cy + 0.5)
    assert area < 0.98 * math.pi * r * r  # 10 % of the diameter cut: ~3.7 % of the area
    assert abs(f.fov_mask.sum() - area) < 0.01 * area
    assert np.count_nonzero(_circle(f.fov_mask.shape, cx, cy, r) ^ f.fov_mask) <= 0.002 * area


def test_notch_removes_a_small_piece_of_the_border():
    kw = dict(width=600, height=400, style="eyepacs", crop_top_bottom=0.0, grade=0)
    plain = make_fundus(14, notch=False, **kw)
    notched = make_fundus(14, notch=True, **kw)
    assert not np.any(notched.fov_mask & ~plain.fov_mask)  # notch only removes
    gone = plain.fov_mask & ~notched.fov_mask
    r = plain.fov_radius
    assert 10 < gone.sum() < 0.01 * plain.fov_mask.sum()
    yy, xx = np.nonzero(gone)
    dist = np.hypot(xx - plain.fov_center[0], yy - plain.fov_center[1])
    assert dist.min() > 0.9 * r  # at the border
    assert notched.image[gone].mean() < 10  # dark in the picture too
    assert plain.image[gone].mean() > 40


def test_eyepacs_style_draws_notch_and_crop_from_the_seed():
    frames = [make_fundus(s, 192, 128, style="eyepacs", vessels=False, lesions=False) for s in range(12)]
    cut = [f.fov_mask[0].any() for f in frames]
    full_circle_area = [math.pi * f.fov_radius ** 2 for f in frames]
    assert any(cut) and not all(cut)
    # some frames lose area to a notch (beyond what the crop explains)
    notched = []
    for f, a in zip(frames, full_circle_area):
        cy = f.fov_center[1]
        expect = _band_circle_area(f.fov_radius, -cy - 0.5, 128 - 1 - cy + 0.5)
        notched.append(f.fov_mask.sum() < expect - 15)
    assert any(notched) and not all(notched)


# --- vessels --------------------------------------------------------------------------------------


def test_vessel_mask_av_map_and_fov_agree(centered):
    f = centered
    assert f.vessel_mask.dtype == bool and f.av_map.dtype == np.uint8
    assert not np.any(f.vessel_mask & ~f.fov_mask)
    assert np.array_equal(f.av_map > 0, f.vessel_mask)
    assert set(np.unique(f.av_map)) == {0, 1, 2, 3}  # arteries and veins cross somewhere
    assert 0.03 < f.vessel_mask.sum() / f.fov_mask.sum() < 0.25


def test_arteries_thinner_and_lighter_than_veins(centered):
    f = centered
    art, vein = f.edge_av == 1, f.edge_av == 2
    assert art.any() and vein.any()
    assert f.edge_width_px[art].mean() < f.edge_width_px[vein].mean()
    trunks = np.isin(f.edges[:, 0], np.flatnonzero(f.node_kind == 0))
    # trunks (arcade, nasal, papillomacular): the widest artery is thinner than the widest vein
    assert f.edge_width_px[trunks & art].max() < f.edge_width_px[trunks & vein].max()
    assert f.edge_width_px[trunks & art].mean() < f.edge_width_px[trunks & vein].mean()
    green = f.image[..., 1].astype(float)
    assert green[f.av_map == 1].mean() > green[f.av_map == 2].mean() + 3


def test_widths_scale_with_fov_and_taper(centered):
    big = make_fundus(11, 1024, 1024, vessels=True, lesions=False)
    # trunks ~10-14 px at a 1024-px FOV diameter (radius 512), about half at radius ~235
    trunks = np.isin(big.edges[:, 0], np.flatnonzero(big.node_kind == 0))
    temporal = big.edge_width_px[trunks] >= 9
    s = big.fov_radius / 512
    assert temporal.sum() >= 4 and 9 * s <= big.edge_width_px[trunks].max() <= 14.5 * s
    assert big.edge_width_px.min() < 3.5
    assert centered.edge_width_px.max() < 0.6 * big.edge_width_px.max()
    # Murray's law at every junction: parent^3 = sum of children^3
    parent_edge = {int(c): i for i, (_, c) in enumerate(big.edges)}
    for j in np.flatnonzero(big.node_kind == 1):
        kids = np.flatnonzero(big.edges[:, 0] == j)
        assert len(kids) == 2
        wp = big.edge_width_px[parent_edge[j]]
        assert wp ** 3 == pytest.approx((big.edge_width_px[kids] ** 3).sum(), rel=1e-9)


def test_drawn_width_matches_edge_width(centered):
    f = centered
    edt = ndi.distance_transform_edt(f.vessel_mask)
    ratios = []
    for pts, w in zip(f.edge_polylines, f.edge_width_px):
        if w < 4:
            continue
        x, y = np.round(pts[len(pts) // 2]).astype(int)
        ratios.append(2 * edt[y, x] / w)
    # edt at a pixel centre on the centreline ~ w/2 + (up to) 0.5 px, and larger where vessels overlap
    assert len(ratios) >= 10
    assert 0.85 < np.median(ratios) < 1.3
    # area ~ sum of length x width, minus overlaps at junctions/crossings, plus round caps
    lw = float((f.edge_length_px * f.edge_width_px).sum())
    assert 0.8 * lw < f.vessel_mask.sum() < 1.05 * lw


def test_vessels_darker_than_background_mostly_in_green(centered):
    f = centered
    lesions = np.any(list(f.lesion_masks.values()), axis=0)
    vessels = f.vessel_mask & ~lesions
    near = ndi.binary_dilation(f.vessel_mask, iterations=5) & ~ndi.binary_dilation(f.vessel_mask, iterations=2)
    near &= f.fov_mask & ~lesions
    img = f.image.astype(float)
    drop = img[near].mean(0) - img[vessels].mean(0)  # (R, G, B)
    assert drop[1] > 15
    rel = drop / img[near].mean(0)
    assert rel[1] > rel[0]  # relative contrast highest in green, as in real fundus photographs


def test_graph_is_a_forest_matching_the_drawing(centered):
    f = centered
    n, e = len(f.nodes), len(f.edges)
    roots = np.flatnonzero(f.node_kind == 0)
    assert len(roots) >= 4 and n == e + len(roots)
    assert f.edges.dtype.kind == "i" and f.nodes.shape == (n, 2) and f.node_kind.dtype == np.uint8
    assert f.edge_width_px.shape == f.edge_av.shape == f.edge_length_px.shape == (e,)
    assert set(np.unique(f.edge_av)) == {1, 2}
    indeg = np.bincount(f.edges[:, 1], minlength=n)
    deg = np.bincount(f.edges.ravel(), minlength=n)
    assert np.all(indeg[roots] == 0) and np.all(np.delete(indeg, roots) == 1)
    assert np.all(deg[roots] == 1)
    assert np.array_equal(f.node_kind == 1, deg == 3)
    assert np.array_equal(f.node_kind == 2, (deg == 1) & (f.node_kind != 0))
    assert set(np.unique(deg)) == {1, 3}
    # roots sit in the optic disc
    d = np.hypot(*(f.nodes[roots] - np.asarray(f.disc_center)).T)
    assert d.max() < f.disc_radius
    # every node lies on a drawn vessel of its class; edge polylines join their nodes
    xi, yi = np.round(f.nodes).astype(int).T
    assert f.vessel_mask[yi, xi].all()
    for i, (a, b) in enumerate(f.edges):
        pts = f.edge_polylines[i]
        assert np.allclose(pts[0], f.nodes[a]) and np.allclose(pts[-1], f.nodes[b])
        assert f.edge_length_px[i] == pytest.approx(np.hypot(*np.diff(pts, axis=0).T).sum())
        assert f.edge_length_px[i] >= np.hypot(*(f.nodes[b] - f.nodes[a])) - 1e-9
        mid = np.round(pts[len(pts) // 2]).astype(int)
        assert f.av_map[mid[1], mid[0]] in (f.edge_av[i], 3)
    # a tree is all arteries or all veins
    parent_edge = {int(c): i for i, (_, c) in enumerate(f.edges)}
    for i, (a, _) in enumerate(f.edges):
        if a in parent_edge:
            assert f.edge_av[i] == f.edge_av[parent_edge[a]]


@pytest.mark.parametrize("seed,size,style", [(1, (512, 512), "centered"), (3, (768, 512), "eyepacs")])
def test_edge_lengths_match_skeleton_length(seed, size, style):
    f = make_fundus(seed, *size, style=style, lesions=False)
    skel_len = _skeleton_length(skeletonize(f.vessel_mask))
    # Drawn centrelines overlap near the disc and at crossings (the skeleton counts shared pixels once),
    # while skeleton spurs/ends differ by ~w/2 per endpoint: a 15 % band covers both.
    assert f.edge_length_px.sum() == pytest.approx(skel_len, rel=0.15)


def test_anatomy_disc_nasal_macula_temporal():
    for eye, side in (("right", 1), ("left", -1)):
        f = make_fundus(15, 512, 512, eye=eye, lesions=False)
        assert f.eye == eye
        r = f.fov_radius
        dx = (f.disc_center[0] - f.fov_center[0]) * side
        assert 0.35 * r < dx < 0.45 * r  # the disc is nasal: the image's right side for a right eye
        assert 0.3 * r < -(f.macula_center[0] - f.fov_center[0]) * side < 0.4 * r
        assert 0.08 * r <= f.disc_radius <= 0.1 * r
        img = f.image.astype(float)
        lum = img.sum(-1)
        disc = _circle(lum.shape, *f.disc_center, 0.7 * f.disc_radius) & ~f.vessel_mask
        assert lum[disc].mean() > lum[f.fov_mask].mean() + 100
        assert img[disc][:, 0].mean() > img[disc][:, 1].mean() > img[disc][:, 2].mean()  # yellowish
        mac = _circle(lum.shape, *f.macula_center, 0.05 * r)
        ring = _circle(lum.shape, *f.macula_center, 0.3 * r) & ~_circle(lum.shape, *f.macula_center, 0.2 * r)
        ring &= ~f.vessel_mask
        assert lum[mac].mean() < lum[ring].mean() - 15


def test_colour_and_vignetting(centered, eyepacs):
    for f in (centered, eyepacs):
        img = f.image.astype(float)
        r, g, b = img[f.fov_mask].mean(0)
        assert r > g > b
        assert 140 < r < 240 and 60 < g < 130 and 20 < b < 70
        lum = img.sum(-1)
        cx, cy = f.fov_center
        yy, xx = np.mgrid[: lum.shape[0], : lum.shape[1]]
        rho = np.hypot(xx - cx, yy - cy) / f.fov_radius
        clean = f.fov_mask & ~f.vessel_mask & ~np.any(list(f.lesion_masks.values()), axis=0)
        clean &= ~_circle(lum.shape, *f.disc_center, 1.5 * f.disc_radius)
        clean &= ~_circle(lum.shape, *f.macula_center, 0.3 * f.fov_radius)
        inner = lum[clean & (rho < 0.5)].mean()
        rim = lum[clean & (rho > 0.85) & (rho < 0.97)].mean()
        assert rim < 0.85 * inner


# --- lesions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("grade", [0, 1, 2, 3, 4])
def test_lesion_load_matches_grade(grade):
    f = make_fundus(30 + grade, 384, 384, grade=grade)
    assert f.grade == grade
    m = f.lesion_masks
    assert tuple(m) == LESION_KINDS
    nonempty = {k for k, v in m.items() if v.any()}
    if grade == 0:
        assert nonempty == set()
    elif grade == 1:
        assert nonempty == {"ma"}
    elif grade == 2:
        assert "ma" in nonempty and nonempty & {"he", "ex", "se"} and not nonempty & {"irma", "nv"}
    elif grade == 3:
        assert "nv" not in nonempty
        assert ndi.label(m["he"], structure=np.ones((3, 3)))[1] >= 12  # "many" haemorrhages (some merge)
    else:
        assert "nv" in nonempty
    disc = _circle(f.fov_mask.shape, *f.disc_center, f.disc_radius)
    for k, v in m.items():
        assert v.dtype == bool and v.shape == f.fov_mask.shape
        assert not np.any(v & ~f.fov_mask), k
        assert not np.any(v & disc), k


def test_lesions_look_like_lesions():
    f = make_fundus(40, 512, 512, grade=3)
    g = f.image[..., 1].astype(float)
    lum = f.image.astype(float).sum(-1)
    bg = f.fov_mask & ~f.vessel_mask & ~np.any(list(f.lesion_masks.values()), axis=0)
    assert g[f.lesion_masks["he"]].mean() < g[bg].mean() - 20  # dark red blots
    assert lum[f.lesion_masks["ex"]].mean() > lum[bg].mean() + 80  # bright yellow flecks
    assert f.image[f.lesion_masks["ex"]][:, 2].mean() < f.image[f.lesion_masks["ex"]][:, 1].mean()
    assert lum[f.lesion_masks["se"]].mean() > lum[bg].mean() + 40  # pale patches
    # microaneurysms are tiny: radius 1-3 px at a 1024-px FOV, so components of at most ~30 px
    lab, n = ndi.label(f.lesion_masks["ma"])
    assert n >= 5 and np.bincount(lab.ravel())[1:].max() <= 30


def test_grade_4_has_neovascularisation_near_the_disc():
    f = make_fundus(41, 512, 512, grade=4)
    nv = f.lesion_masks["nv"]
    assert nv.any()
    yy, xx = np.nonzero(nv)
    d = np.hypot(xx - f.disc_center[0], yy - f.disc_center[1])
    assert d.min() < 3.5 * f.disc_radius  # one tangle next to the disc (NVD)
    assert d.min() > f.disc_radius


def test_grade_drawn_from_seed_covers_all_grades():
    grades = {make_fundus(s, 96, 96, vessels=False).grade for s in range(40)}
    assert grades == {0, 1, 2, 3, 4}


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,word", [
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed=0, width=10), "width"),
    (dict(seed=0, style="round"), "style"), (dict(seed=0, grade=5), "grade"),
    (dict(seed=0, grade=2, lesions=False), "grade"), (dict(seed=0, crop_top_bottom=0.5), "crop_top_bottom"),
    (dict(seed=0, eye="both"), "eye"), (dict(seed=0, width=400, height=600, style="eyepacs"), "width"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_fundus(**kwargs)


# --- JPEG -----------------------------------------------------------------------------------------


def test_encode_jpeg_round_trip(centered):
    data = encode_jpeg(centered.image, 90)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert back.shape == centered.image.shape
    assert np.abs(back.astype(int) - centered.image).mean() < 5  # and channels not swapped:
    assert back[centered.fov_mask].mean(0)[0] > back[centered.fov_mask].mean(0)[2] + 50
    assert len(encode_jpeg(centered.image, 30)) < len(data)
    grey = encode_jpeg(centered.image[..., 1], 90)
    assert cv2.imdecode(np.frombuffer(grey, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 2
    with pytest.raises(ValueError, match="image"):
        encode_jpeg(centered.image.astype(np.float32))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(centered.image, 0)


# --- EyePACS-layout sample ------------------------------------------------------------------------


def test_write_eyepacs_like_dataset(tmp_path):
    root = write_eyepacs_like_dataset(tmp_path / "sample", 5, width=384, height=256, seed=3, quality=85)
    assert root == tmp_path / "sample"
    text = (root / "trainLabels.csv").read_text()
    assert text.endswith("\n")
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == ["image", "level"] and len(rows) == 10
    labels = {r["image"]: int(r["level"]) for r in rows}
    assert labels == eyepacs_like_grades(5, seed=3)
    assert set(labels.values()) == {0, 1, 2, 3, 4}
    for p in range(1, 6):
        left, right = labels[f"{p}_left"], labels[f"{p}_right"]
        assert abs(left - right) <= 2
        for eye in ("left", "right"):
            path = root / "train" / f"{p}_{eye}.jpeg"
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (256, 384, 3)
            # black surround, fundus in the middle, disc (brightest blob) on the nasal side
            assert img[:, :20].max() < 25 and img[128, 192].sum() > 100
            lum = cv2.GaussianBlur(img.astype(np.float32).sum(-1), (0, 0), 6)
            x = np.unravel_index(np.argmax(lum), lum.shape)[1]
            assert (x > 192) == (eye == "right"), (p, eye)
    assert sorted(q.name for q in (root / "train").iterdir()) == sorted(f"{k}.jpeg" for k in labels)
    # deterministic: same arguments, same bytes
    again = write_eyepacs_like_dataset(tmp_path / "again", 5, width=384, height=256, seed=3, quality=85)
    assert (again / "train" / "4_right.jpeg").read_bytes() == (root / "train" / "4_right.jpeg").read_bytes()


def test_eyepacs_like_grades_every_grade_and_bounded_eye_difference():
    g = eyepacs_like_grades(200, seed=1)
    assert len(g) == 400
    for p in range(1, 201):
        assert abs(g[f"{p}_left"] - g[f"{p}_right"]) <= 2
    assert {g[f"{p}_left"] for p in range(1, 6)} == {0, 1, 2, 3, 4}
    assert eyepacs_like_grades(7, seed=2) != eyepacs_like_grades(7, seed=9)
    with pytest.raises(ValueError, match="n_patients"):
        eyepacs_like_grades(0)
