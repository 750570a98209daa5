"""Known answers for FD (eq. 22), CRAE/CRVE/AVR (eqs. 23-25), GLCM (eqs. 17-20) and global biomarkers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dr_ray.vessels import (
    Measurement,
    avr,
    box_counting_fd,
    box_counts,
    fractal_dimension,
    glcm_features,
    global_biomarkers,
    knudtson_crae,
    knudtson_crve,
    mean_tortuosity,
    parr_hubbard_crae,
    parr_hubbard_crve,
    px_to_um,
    um_per_px_from_disc,
    vessel_density,
    vessel_graph,
)
from dr_ray.vessels.biomarkers import vessel_glcm
from dr_ray.vessels.texture import GLCM_PROPS, glcm_patch_features


def sierpinski_carpet(order: int) -> np.ndarray:
    c = np.ones((1, 1), bool)
    for _ in range(order):
        z = np.zeros_like(c)
        c = np.block([[c, c, c], [c, z, c], [c, c, c]])
    return c


# ---------------------------------------------------------------- fractal dimension (eq. 22)

def test_fd_of_a_straight_line_is_one():
    m = np.zeros((512, 512), bool)
    m[200, 10:500] = True
    assert box_counting_fd(m) == pytest.approx(1.0, abs=0.05)
    d = np.eye(400, dtype=bool)  # diagonal line
    assert box_counting_fd(d) == pytest.approx(1.0, abs=0.05)


def test_fd_of_a_filled_square_is_two():
    m = np.zeros((512, 512), bool)
    m[100:400, 50:350] = True  # not aligned with the box grid
    assert box_counting_fd(m) == pytest.approx(2.0, abs=0.05)


def test_fd_of_sierpinski_carpet():
    # log 8 / log 3 = 1.8928; 729 px carpet, power-of-two boxes (misaligned with the 3-adic structure)
    assert box_counting_fd(sierpinski_carpet(6)) == pytest.approx(math.log(8) / math.log(3), abs=0.03)


def test_fd_of_a_circle_outline_is_one_and_of_noise_is_two():
    yy, xx = np.mgrid[:512, :512]
    r = np.hypot(xx - 255.5, yy - 255.5)
    assert box_counting_fd(np.abs(r - 200) < 0.8) == pytest.approx(1.0, abs=0.06)
    rng = np.random.default_rng(0)
    assert box_counting_fd(rng.random((512, 512)) < 0.5) == pytest.approx(2.0, abs=0.05)


def test_fd_rejects_empty_and_wrong_ndim():
    with pytest.raises(ValueError, match="no foreground"):
        box_counting_fd(np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="mask must be a 2-D"):
        box_counting_fd(np.ones((8, 8, 3), bool))
    with pytest.raises(ValueError, match="max_box_fraction"):
        box_counting_fd(np.ones((64, 64), bool), max_box_fraction=0)
    m = fractal_dimension(np.zeros((64, 64), bool))
    assert m.value is None and "no vessel pixels" in m.reason and math.isnan(m.as_float())


def test_fd_of_drive_manual_masks_is_plausible(shared_data):
    for n in ("21", "22", "23"):
        with Image.open(shared_data / f"DRIVE/training/1st_manual/{n}_manual1.gif") as im:
            mask = np.array(im) > 0
        assert 1.3 < box_counting_fd(mask) < 1.6


def test_dyadic_box_counts_equal_the_per_size_grid():
    rng = np.random.default_rng(7)
    for shape in ((913, 1024), (37, 5), (64, 64)):
        m = rng.random(shape) < 0.05
        sizes = 2 ** np.arange(1, 9)
        fast = box_counts(m, sizes)  # 2, 4, 8, ...: the 2 x 2 OR pyramid
        per_size = box_counts(m, sizes[::-1])[::-1]  # any other order: one padded grid per size
        np.testing.assert_array_equal(fast, per_size)
        assert fast[0] == sum(m[i:i + 2, j:j + 2].any() for i in range(0, shape[0], 2) for j in range(0, shape[1], 2))


def test_fd_box_size_convention_parameters():
    # PVBM's convention (20 linear sizes from 5 px to 0.6 x the shorter side, uncropped): boxes up to 0.6 of
    # the frame leave only 2 x 2 partly filled boxes at the top end, so a straight line reads low (0.93)
    m = np.zeros((512, 512), bool)
    m[200, 10:500] = True
    pvbm_sizes = np.linspace(5, int(0.6 * 512), 20).astype(int)
    assert 0.9 < box_counting_fd(m, sizes=pvbm_sizes, crop=False) < box_counting_fd(m) < 1.05
    sq = np.zeros((512, 512), bool)
    sq[100:400, 50:350] = True
    assert box_counting_fd(sq) == pytest.approx(2.0, abs=0.05)
    assert box_counting_fd(sq, crop=False) == pytest.approx(1.82, abs=0.02)  # the margin bends the line
    # explicit sizes: the slope of log N against log 1/s, by hand
    sizes = np.array([3, 6, 12])
    n = box_counts(sq, sizes)
    slope = np.polyfit(np.log(1 / sizes), np.log(n), 1)[0]
    assert box_counting_fd(sq, sizes=sizes, crop=False) == pytest.approx(slope, rel=1e-12)
    for bad in ([2, 4], [2, 2, 4], [0, 2, 4], [2.5, 4, 8]):
        with pytest.raises(ValueError, match="sizes must be"):
            box_counting_fd(sq, sizes=bad)


# ---------------------------------------------------------------- CRAE / CRVE / AVR (eqs. 23-25)

WIDTHS6 = [110.0, 80.0, 130.0, 100.0, 90.0, 120.0]  # um, deliberately unsorted
WIDTHS5 = [120.0, 80.0, 100.0, 90.0, 110.0]


def test_knudtson_by_hand_even_and_odd():
    # 6 widths, round 1: (80,130) (90,120) (100,110)
    #   0.88*sqrt(80^2+130^2) = 0.88*sqrt(23300) = 134.3262;  0.88*sqrt(8100+14400) = 0.88*150 = 132.0
    #   0.88*sqrt(10000+12100) = 0.88*sqrt(22100) = 130.8214
    # round 2: (130.8214, 134.3262) -> 0.88*sqrt(17114.24+18043.53) = 165.0035, carry 132.0
    # round 3: 0.88*sqrt(132.0^2 + 165.0035^2) = 0.88*sqrt(44650.2) = 185.9492
    r2 = 0.88 * math.sqrt((0.88 * math.sqrt(22100)) ** 2 + (0.88 * math.sqrt(23300)) ** 2)
    assert r2 == pytest.approx(165.0035, abs=1e-3)
    assert knudtson_crae(WIDTHS6) == pytest.approx(0.88 * math.sqrt(132.0 ** 2 + r2 ** 2), rel=1e-12)
    assert knudtson_crae(WIDTHS6) == pytest.approx(185.949163, abs=1e-5)
    # 5 widths: round 1 (80,120) -> 0.88*sqrt(20800) = 126.9154, (90,110) -> 0.88*sqrt(20200) = 125.0715,
    # carry 100; round 2 (100, 126.9154) -> 0.88*sqrt(10000+16107.5) = 142.2186, carry 125.0715;
    # round 3: 0.88*sqrt(125.0715^2 + 142.2186^2) = 166.6445
    a, b = 0.88 * math.sqrt(20800), 0.88 * math.sqrt(20200)
    c = 0.88 * math.sqrt(100.0 ** 2 + a ** 2)
    assert knudtson_crae(WIDTHS5) == pytest.approx(0.88 * math.sqrt(b ** 2 + c ** 2), rel=1e-12)
    assert knudtson_crae(WIDTHS5) == pytest.approx(166.644546, abs=1e-5)
    # venules: same pairing with 0.95; 0.95 / 0.88 scales each round, three rounds for 6 widths
    assert knudtson_crve(WIDTHS6) == pytest.approx(227.375378, abs=1e-5)
    assert knudtson_crve(WIDTHS5) == pytest.approx(199.719804, abs=1e-5)
    # one width is its own equivalent; two widths are one pair
    assert knudtson_crae([100.0]) == 100.0
    assert knudtson_crve([60.0, 80.0]) == pytest.approx(0.95 * 100.0)


def test_parr_hubbard_by_hand_even_and_odd():
    def art(w1, w2):  # w1 smaller, Hubbard et al. 1999 arterioles
        return math.sqrt(0.87 * w1 ** 2 + 1.01 * w2 ** 2 - 0.22 * w1 * w2 - 10.76)

    def ven(w1, w2):  # venules
        return math.sqrt(0.72 * w1 ** 2 + 0.91 * w2 ** 2 + 450.02)

    # arteriole pair (80,130): 0.87*6400 + 1.01*16900 - 0.22*10400 - 10.76 = 5568 + 17069 - 2288 - 10.76
    #   = 20338.24 -> 142.6122
    assert art(80, 130) == pytest.approx(math.sqrt(20338.24))
    # round 1 -> [135.9788 (100,110), 138.5794 (90,120), 142.6122 (80,130)]
    # round 2 -> art(135.9788, 142.6122), carry 138.5794; round 3 -> art(sorted pair)
    r1 = sorted([art(80, 130), art(90, 120), art(100, 110)])
    r2 = sorted([art(r1[0], r1[2]), r1[1]])
    assert parr_hubbard_crae(WIDTHS6) == pytest.approx(art(*r2), rel=1e-12)
    assert parr_hubbard_crae(WIDTHS6) == pytest.approx(209.494439, abs=1e-5)
    # venule pair (80,130): 0.72*6400 + 0.91*16900 + 450.02 = 4608 + 15379 + 450.02 = 20437.02 -> 142.9581
    assert ven(80, 130) == pytest.approx(math.sqrt(20437.02))
    assert parr_hubbard_crve(WIDTHS6) == pytest.approx(209.685644, abs=1e-5)
    # odd: round 1 (80,120), (90,110), carry 100
    o1 = sorted([art(80, 120), art(90, 110), 100.0])
    o2 = sorted([art(o1[0], o1[2]), o1[1]])
    assert parr_hubbard_crae(WIDTHS5) == pytest.approx(art(*o2), rel=1e-12)
    assert parr_hubbard_crae(WIDTHS5) == pytest.approx(185.874559, abs=1e-5)
    assert parr_hubbard_crve(WIDTHS5) == pytest.approx(186.822058, abs=1e-5)
    # order of the input does not matter
    assert parr_hubbard_crve(sorted(WIDTHS6)) == parr_hubbard_crve(WIDTHS6)


def test_avr_and_unit_helpers():
    assert avr(150.0, 200.0) == pytest.approx(0.75)  # eq. 25
    crae, crve = knudtson_crae(WIDTHS6), knudtson_crve(WIDTHS6)
    assert avr(crae, crve) == pytest.approx(185.949163 / 227.375378)
    scale = um_per_px_from_disc(120.0)  # 1800 um / 120 px = 15 um/px
    assert scale == pytest.approx(15.0)
    np.testing.assert_allclose(px_to_um([6.0, 8.0], scale), [90.0, 120.0])
    # Knudtson is homogeneous of degree 1 (unit-free), Parr-Hubbard is not (its constants are in um^2)
    px = np.array(WIDTHS6) / 15.0
    assert knudtson_crae(px) * 15.0 == pytest.approx(knudtson_crae(WIDTHS6))
    assert parr_hubbard_crve(px) * 15.0 != pytest.approx(parr_hubbard_crve(WIDTHS6), rel=1e-3)


def test_caliber_input_checks():
    for f in (parr_hubbard_crae, parr_hubbard_crve, knudtson_crae, knudtson_crve):
        with pytest.raises(ValueError, match="widths is empty"):
            f([])
        with pytest.raises(ValueError, match="finite and > 0"):
            f([100.0, -1.0])
    with pytest.raises(ValueError, match="micrometres"):
        parr_hubbard_crae([1.0, 2.0])  # px-sized widths make the radicand negative
    with pytest.raises(ValueError, match="crve"):
        avr(100.0, 0.0)
    with pytest.raises(ValueError, match="um_per_px"):
        px_to_um([1.0], 0.0)


# ---------------------------------------------------------------- GLCM (eqs. 17-20 + entropy)

def direct_glcm(levels_img: np.ndarray, n_levels: int, dr: int, dc: int) -> np.ndarray:
    """Count co-occurrences (a at (r, c), b at (r + dr, c + dc)) by loops, symmetric, normalised."""
    P = np.zeros((n_levels, n_levels))
    h, w = levels_img.shape
    for r in range(h):
        for c in range(w):
            r2, c2 = r + dr, c + dc
            if 0 <= r2 < h and 0 <= c2 < w:
                a, b = levels_img[r, c], levels_img[r2, c2]
                P[a, b] += 1
                P[b, a] += 1
    return P / P.sum()


def props_of(P: np.ndarray, homogeneity: str = "paper") -> dict[str, float]:
    i, j = np.indices(P.shape)
    mi, mj = (i * P).sum(), (j * P).sum()
    si, sj = np.sqrt(((i - mi) ** 2 * P).sum()), np.sqrt(((j - mj) ** 2 * P).sum())
    nz = P[P > 0]
    hom = (P / (1 + np.abs(i - j))).sum() if homogeneity == "paper" else (P / (1 + (i - j) ** 2)).sum()
    return {"contrast": ((i - j) ** 2 * P).sum(), "correlation": ((i - mi) * (j - mj) * P).sum() / (si * sj),
            "energy": (P ** 2).sum(), "homogeneity": hom, "entropy": -(nz * np.log2(nz)).sum()}


LEVELS4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]])


def test_glcm_matches_hand_count_on_4x4():
    gray = (LEVELS4 * 64).astype(np.uint8)  # quantises back to LEVELS4 with levels=4 (g * 4 // 256)
    f = glcm_features(gray, angles=(0.0,), levels=4)
    # horizontal pairs (a, b): (0,0)x2 (0,1)x2 (1,1)x2 (0,2)x1 (2,2)x3 (2,3)x1 (3,3)x1 = 12; symmetric: 24
    # contrast = [2*(0,1)x2*1 + 2*(0,2)x1*4 + 2*(2,3)x1*1] / 24 = (4 + 8 + 2) / 24
    assert f["contrast"] == pytest.approx(14 / 24)
    # energy: symmetric counts [[4,2,1,0],[2,4,0,0],[1,0,6,1],[0,0,1,2]] -> sum c^2 / 24^2
    assert f["energy"] == pytest.approx((16 + 4 + 1 + 4 + 16 + 1 + 36 + 1 + 1 + 4) / 576)
    # homogeneity, eq. 20: sum G / (1 + |i - j|): diagonal 4+4+6+2 = 16, |i-j| = 1: 2+2+1+1 = 6, |i-j| = 2: 1+1 = 2
    assert f["homogeneity"] == pytest.approx((16 + 6 / 2 + 2 / 3) / 24)  # 0.81944
    # scikit-image's variant sum G / (1 + (i - j)^2), by name: |i-j| = 2 now weighs 1/5
    sk = glcm_features(gray, angles=(0.0,), levels=4, homogeneity="skimage")
    assert sk["homogeneity"] == pytest.approx((16 + 6 / 2 + 2 / 5) / 24)  # 0.80833
    assert {k: v for k, v in sk.items() if k != "homogeneity"} == {k: v for k, v in f.items() if k != "homogeneity"}
    # entropy in bits: -sum G log2 G over the 10 non-zero cells
    counts = np.array([4, 2, 1, 2, 4, 1, 6, 1, 1, 2]) / 24
    assert f["entropy"] == pytest.approx(-(counts * np.log2(counts)).sum())
    ref = props_of(direct_glcm(LEVELS4, 4, 0, 1))
    for k in ref:
        assert f[k] == pytest.approx(ref[k], rel=1e-12), k
    with pytest.raises(ValueError, match="homogeneity must be one of paper, skimage"):
        glcm_features(gray, homogeneity="haralick")


def test_glcm_four_angles_average_direct_counts():
    rng = np.random.default_rng(1)
    lv = rng.integers(0, 8, (9, 7))
    gray = (lv * 32).astype(np.uint8)
    f = glcm_features(gray, levels=8)
    # skimage angles: 0 -> (0, +1), pi/4 -> (-1, +1), pi/2 -> (-1, 0), 3pi/4 -> (-1, -1)
    refs = [props_of(direct_glcm(lv, 8, dr, dc)) for dr, dc in ((0, 1), (-1, 1), (-1, 0), (-1, -1))]
    for k in f:
        assert f[k] == pytest.approx(np.mean([r[k] for r in refs]), rel=1e-10), k


def test_glcm_mask_equals_crop_and_empty_mask_is_nan():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    mask = np.zeros(gray.shape, bool)
    mask[2:9, 3:8] = True
    masked = glcm_features(gray, mask, levels=16)
    # the crop with the same quantisation (levels 1..15 inside the mask) gives the same pairs
    crop_levels = 1 + gray[2:9, 3:8].astype(int) * 15 // 256
    ref = props_of(np.mean([direct_glcm(crop_levels, 16, dr, dc) for dr, dc in ((0, 1), (-1, 1), (-1, 0), (-1, -1))],
                           axis=0))
    # averaging the normalised matrices and averaging the props differ for nonlinear props; compare linear ones
    assert masked["contrast"] == pytest.approx(ref["contrast"], rel=1e-10)
    assert masked["homogeneity"] == pytest.approx(ref["homogeneity"], rel=1e-10)
    gray2 = gray.copy()
    gray2[~mask] = 255 - gray2[~mask]  # outside pixels must not matter
    assert glcm_features(gray2, mask, levels=16) == pytest.approx(masked)
    assert all(math.isnan(v) for v in glcm_features(gray, np.zeros_like(mask)).values())
    with pytest.raises(ValueError, match="gray must be"):
        glcm_features(gray.astype(np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        glcm_features(gray, mask[:5])


def skimage_props(patch: np.ndarray, levels: int, distances=(1,)) -> dict[str, float]:
    """graycomatrix/graycoprops directly: props per (distance, angle), averaged (entropy and ASM by hand)."""
    from skimage.feature import graycomatrix, graycoprops
    q = (patch.astype(int) * levels // 256).astype(np.uint8)
    P = graycomatrix(q, distances=list(distances), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels,
                     symmetric=True).astype(float)
    tot = P.sum(axis=(0, 1))
    ok = tot > 0
    if not ok.any():
        return {k: float("nan") for k in (*GLCM_PROPS, "homogeneity_paper")}
    P = P / np.where(ok, tot, 1)
    out = {k: graycoprops(P, k)[ok].mean() for k in ("contrast", "correlation", "homogeneity")}
    i, j = np.indices((levels, levels))
    out["homogeneity_paper"] = ((P / (1 + np.abs(i - j))[:, :, None, None]).sum(axis=(0, 1)))[ok].mean()  # eq. 20
    out["energy"] = graycoprops(P, "ASM")[ok].mean()
    out["entropy"] = np.mean([-(p[p > 0] * np.log2(p[p > 0])).sum() for p in np.moveaxis(P, (2, 3), (0, 1))[ok]])
    return out


def test_vectorised_patch_glcm_equals_skimage_on_random_patches():
    """All patches in one bincount == graycomatrix/graycoprops on each (border-clipped) patch (homogeneity:
    skimage's variant against graycoprops, the default eq. 20 against the same matrices weighted by hand)."""
    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, (41, 53)).astype(np.uint8),  # noise
              np.full((41, 53), 77, np.uint8),  # constant: correlation 1 (skimage's convention)
              ((rng.random((41, 53)) < 0.5) * 200).astype(np.uint8),  # two levels
              (np.add.outer(np.arange(41), np.arange(53)) * 3 % 256).astype(np.uint8)]  # smooth ramp
    n_nan = 0
    for gray in images:
        centres = np.column_stack([rng.integers(0, 41, 40), rng.integers(0, 53, 40)])
        centres[:4] = [[0, 0], [40, 52], [0, 52], [40, 0]]  # corners: clipped patches
        # (7, 16, (9,)): only the diagonal offsets (6, 6) fit a full patch; clipped ones may have no pair
        for patch_px, levels, dist in ((15, 32, (1,)), (5, 8, (1, 2)), (3, 256, (1,)), (7, 16, (9,))):
            got = glcm_patch_features(gray, centres, patch_px, distances=dist, levels=levels, homogeneity="skimage")
            got["homogeneity_paper"] = glcm_patch_features(gray, centres, patch_px, distances=dist,
                                                           levels=levels)["homogeneity"]
            h = patch_px // 2
            for i, (r, c) in enumerate(centres):
                ref = skimage_props(gray[max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1], levels, dist)
                for k in (*GLCM_PROPS, "homogeneity_paper"):
                    if math.isnan(ref[k]):
                        assert math.isnan(got[k][i]), (k, patch_px, i)
                    else:
                        assert got[k][i] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), (k, patch_px, i)
            n_nan += int(np.isnan(got["contrast"]).sum())
    assert n_nan > 0  # the corner patches with the 9-px offset have no pair
    with pytest.raises(ValueError, match="inside"):
        glcm_patch_features(images[0], np.array([[41, 0]]), 15)
    assert glcm_patch_features(images[0], np.zeros((0, 2), int), 15)["contrast"].shape == (0,)


def direct_masked_glcm_props(gray: np.ndarray, mask: np.ndarray, levels: int,
                             homogeneity: str = "paper") -> dict[str, float]:
    """Loops: pairs of mask pixels at distance 1 in the 4 directions, quantised 1 + g * (levels - 1) // 256."""
    lv = np.where(mask, 1 + gray.astype(int) * (levels - 1) // 256, 0)
    per_angle = []
    for dr, dc in ((0, 1), (-1, 1), (-1, 0), (-1, -1)):
        P = np.zeros((levels, levels))
        for r in range(gray.shape[0]):
            for c in range(gray.shape[1]):
                r2, c2 = r + dr, c + dc
                if 0 <= r2 < gray.shape[0] and 0 <= c2 < gray.shape[1] and mask[r, c] and mask[r2, c2]:
                    P[lv[r, c], lv[r2, c2]] += 1
                    P[lv[r2, c2], lv[r, c]] += 1
        if P.sum():
            per_angle.append(props_of(P / P.sum(), homogeneity))
    return {k: float(np.mean([p[k] for p in per_angle])) for k in per_angle[0]}


def test_global_biomarkers_glcm_over_the_vasculature():
    rng = np.random.default_rng(9)
    mask = np.zeros((12, 14), bool)
    mask[3:6, 1:13] = True  # a horizontal vessel 3 px wide
    mask[5:11, 6:8] = True  # and a branch down
    img = rng.integers(0, 256, (12, 14, 3)).astype(np.uint8)
    g = vessel_graph(mask)
    bm = global_biomarkers(mask, g, image=img)
    ref = direct_masked_glcm_props(img[..., 1], mask, 32)
    for k in GLCM_PROPS:
        assert bm[f"glcm_{k}"].ok and bm[f"glcm_{k}"].value == pytest.approx(ref[k], rel=1e-10), k
    assert vessel_glcm(mask, img) == {k: bm[k] for k in bm if k.startswith("glcm_")}
    sk = global_biomarkers(mask, g, image=img, glcm_homogeneity="skimage")["glcm_homogeneity"].value
    assert sk == pytest.approx(direct_masked_glcm_props(img[..., 1], mask, 32, "skimage")["homogeneity"], rel=1e-10)
    assert sk != pytest.approx(bm["glcm_homogeneity"].value, rel=1e-3)  # the two definitions differ here
    # pixels outside the vessels do not matter; the FOV removes vessel pixels outside it
    img2 = img.copy()
    img2[~mask] = 255 - img2[~mask]
    assert global_biomarkers(mask, g, image=img2)["glcm_contrast"].value == pytest.approx(bm["glcm_contrast"].value)
    fov = np.ones_like(mask)
    fov[:, 10:] = False
    ref_fov = direct_masked_glcm_props(img[..., 1], mask & fov, 32)
    assert global_biomarkers(mask, g, fov, image=img)["glcm_entropy"].value == pytest.approx(ref_fov["entropy"])
    # without an image: the old keys only; no vessel pixels or no adjacent pair: None with a reason
    assert not any(k.startswith("glcm_") for k in global_biomarkers(mask, g))
    empty = global_biomarkers(np.zeros_like(mask), g, image=img)
    assert empty["glcm_energy"].value is None and "no vessel pixels" in empty["glcm_energy"].reason
    dots = np.zeros_like(mask)
    dots[2, 2] = dots[8, 8] = True
    assert vessel_glcm(dots, img)["glcm_contrast"].reason.startswith("no two adjacent vessel pixels")
    with pytest.raises(ValueError, match="image must be"):
        global_biomarkers(mask, g, image=img[..., 1])
    # a 12 x 14 vessel tree is too small for three box sizes: FD not measurable, with the reason
    assert bm["fractal_dimension"].value is None and "too small" in bm["fractal_dimension"].reason


# ---------------------------------------------------------------- global biomarkers

def test_vessel_density_and_not_measurable_reasons():
    m = np.zeros((10, 10), bool)
    m[:, :3] = True
    fov = np.zeros_like(m)
    fov[:, :6] = True
    assert vessel_density(m, fov).value == pytest.approx(30 / 60)
    assert vessel_density(m).value == pytest.approx(0.3)
    d = vessel_density(m, np.zeros_like(m))
    assert d == Measurement(None, "field-of-view mask is empty")
    with pytest.raises(ValueError, match="fov shape"):
        vessel_density(m, fov[:5])
    empty = np.zeros((64, 64), bool)
    g = vessel_graph(empty)
    bm = global_biomarkers(empty, g)
    assert bm["vessel_density"].value == 0.0
    assert bm["branch_points"].value == 0.0
    assert bm["fractal_dimension"].value is None and bm["fractal_dimension"].reason
    assert bm["mean_tortuosity"].value is None and "no vessel segment" in bm["mean_tortuosity"].reason


def test_mean_tortuosity_is_length_weighted():
    m = np.zeros((200, 300), bool)
    m[20, 10:290] = True  # straight: tortuosity 1
    xs = np.arange(10, 290)
    ys = np.round(120 + 20 * np.sin(2 * np.pi * xs / 70)).astype(int)
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):  # connected wavy curve
        lo, hi = sorted((y0, y1))
        m[lo:hi + 1, x0] = True
        m[y1, x1] = True
    g = vessel_graph(m)
    assert g.n_edges == 2
    t = mean_tortuosity(g)
    expected = np.average(g.tortuosity, weights=g.arc_length_px)
    assert t.value == pytest.approx(expected)
    assert 1.0 < t.value < g.tortuosity.max()
    assert mean_tortuosity(g, length_weighted=False).value == pytest.approx(g.tortuosity.mean())
