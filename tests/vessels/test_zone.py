"""zone_calibers / zone_vessels on drawn vessel maps with known widths around a known disc."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dr_ray.io import columns as C
from dr_ray.vessels import OpticDisc, vessel_graph, zone_calibers, zone_measurements, zone_vessels
from dr_ray.vessels.zone import ZONE_COUNT_KEYS, ZONE_KEYS

SHAPE = (400, 400)
DISC = OpticDisc(True, cx=200.0, cy=200.0, diameter_px=100.0, score=1.0)  # zone: 100..150 px from (200, 200)

# Ten straight, axis-aligned vessels leaving the disc (odd widths: 2 * EDT - 1 is then exact), 40 px apart.
SLOTS = [((160, 150), (160, 5)), ((200, 150), (200, 5)), ((240, 150), (240, 5)),  # up
         ((160, 250), (160, 395)), ((200, 250), (200, 395)), ((240, 250), (240, 395)),  # down
         ((150, 180), (5, 180)), ((150, 220), (5, 220)),  # left
         ((250, 180), (395, 180)), ((250, 220), (395, 220))]  # right


def tube(p0, p1, width):
    h, w = SHAPE
    yy, xx = np.mgrid[:h, :w].astype(float)
    p0, d = np.asarray(p0, float), np.asarray(p1, float) - np.asarray(p0, float)
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / (d @ d), 0, 1)
    return np.hypot(xx - p0[0] - t * d[0], yy - p0[1] - t * d[1]) <= width / 2


def drawn(vessels):
    """vessels: [(slot or (p0, p1), width px, av 1/2)] -> (mask, av_map, graph)."""
    mask = np.zeros(SHAPE, bool)
    av = np.zeros(SHAPE, np.uint8)
    for where, width, label in vessels:
        p0, p1 = SLOTS[where] if isinstance(where, int) else where
        m = tube(p0, p1, width)
        av[m & (av > 0) & (av != label)] = 3
        av[m & (av == 0)] = label
        mask |= m
    return mask, av, vessel_graph(mask, av_map=av)


# Hand formulas (Hubbard et al. 1999; Knudtson et al. 2003), written out independently of dr_ray.vessels.caliber
def ph_artery(a, b):
    a, b = min(a, b), max(a, b)
    return math.sqrt(0.87 * a * a + 1.01 * b * b - 0.22 * a * b - 10.76)


def ph_vein(a, b):
    a, b = min(a, b), max(a, b)
    return math.sqrt(0.72 * a * a + 0.91 * b * b + 450.02)


def kn(k):
    return lambda a, b: k * math.sqrt(a * a + b * b)


def big6(widths, pair):
    w = sorted(widths)
    while len(w) > 1:
        n = len(w)
        w = sorted([pair(w[i], w[n - 1 - i]) for i in range(n // 2)] + ([w[n // 2]] if n % 2 else []))
    return w[0]


def test_two_arterioles_two_venules_equal_the_hand_computed_values():
    mask, _, g = drawn([(0, 5, 1), (3, 7, 1), (6, 9, 2), (8, 11, 2)])
    zm = zone_measurements(g, DISC, um_per_px=10.0, mask=mask, n_vessels=2)
    z = zm.biomarkers
    assert set(z) == set(ZONE_KEYS) and all(m.ok and m.reason is None for m in z.values())
    assert zm.counts == {"crae_n_vessels": 2, "crve_n_vessels": 2}
    # with the default fixed count (6) the same values are kept but flagged: only 2 of 6 each
    z6 = zone_calibers(g, DISC, um_per_px=10.0, mask=mask)
    for k in ZONE_KEYS:
        assert z6[k].value == z[k].value, k
    assert "only 2 of 6 arterioles in the zone" in z6["crae_knudtson_um"].reason
    assert "only 2 of 6 venules in the zone" in z6["crve_parr_hubbard_um"].reason
    assert "arterioles" in z6["avr_knudtson"].reason and "venules" in z6["avr_knudtson"].reason
    # widths 50, 70 um (arterioles), 90, 110 um (venules)
    crae_ph = math.sqrt(0.87 * 50 ** 2 + 1.01 * 70 ** 2 - 0.22 * 50 * 70 - 10.76)  # 79.644
    crve_ph = math.sqrt(0.72 * 90 ** 2 + 0.91 * 110 ** 2 + 450.02)  # 131.503
    crae_kn, crve_kn = 0.88 * math.hypot(50, 70), 0.95 * math.hypot(90, 110)  # 75.700, 135.021
    assert z["crae_parr_hubbard_um"].value == pytest.approx(crae_ph, rel=1e-9)
    assert z["crve_parr_hubbard_um"].value == pytest.approx(crve_ph, rel=1e-9)
    assert z["crae_knudtson_um"].value == pytest.approx(crae_kn, rel=1e-9)
    assert z["crve_knudtson_um"].value == pytest.approx(crve_kn, rel=1e-9)
    assert z["crae_parr_hubbard_um"].value == pytest.approx(79.644, abs=1e-3)
    assert z["avr_parr_hubbard"].value == pytest.approx(crae_ph / crve_ph, rel=1e-9)
    assert z["avr_knudtson"].value == pytest.approx(crae_kn / crve_kn, rel=1e-9)


def test_widest_six_with_the_big6_pairing_and_scale_from_the_disc():
    arteries = [3, 5, 7, 9, 11, 13, 15]  # the 3-px one is the 7th: left out
    veins = [17, 19, 21]
    vessels = [(i, w, 1) for i, w in enumerate(arteries)] + [(7 + i, w, 2) for i, w in enumerate(veins)]
    mask, _, g = drawn(vessels)
    zv = zone_vessels(g, DISC, mask=mask)
    assert sorted(round(v.width_px, 6) for v in zv if v.av == 1) == arteries
    assert sorted(round(v.width_px, 6) for v in zv if v.av == 2) == veins
    zm = zone_measurements(g, DISC, mask=mask)  # um_per_px None: 1800 um / 100 px = 18 um/px
    z = zm.biomarkers
    assert zm.counts == {"crae_n_vessels": 6, "crve_n_vessels": 3}  # 6 of 7 arterioles used; 3 venules only
    assert z["crae_knudtson_um"].reason is None and z["crae_parr_hubbard_um"].reason is None
    assert "only 3 of 6 venules" in z["crve_knudtson_um"].reason and z["crve_knudtson_um"].ok
    a_um = [18.0 * w for w in arteries[1:]]
    v_um = [18.0 * w for w in veins]
    assert z["crae_knudtson_um"].value == pytest.approx(big6(a_um, kn(0.88)), rel=1e-9)
    assert z["crve_knudtson_um"].value == pytest.approx(big6(v_um, kn(0.95)), rel=1e-9)
    assert z["crae_parr_hubbard_um"].value == pytest.approx(big6(a_um, ph_artery), rel=1e-9)
    assert z["crve_parr_hubbard_um"].value == pytest.approx(big6(v_um, ph_vein), rel=1e-9)
    # an explicit disc diameter assumption scales Knudtson (homogeneous of degree 1) linearly
    z2 = zone_calibers(g, DISC, mask=mask, disc_diameter_um=900.0)
    assert z2["crae_knudtson_um"].value == pytest.approx(0.5 * z["crae_knudtson_um"].value, rel=1e-9)
    assert z2["avr_knudtson"].value == pytest.approx(z["avr_knudtson"].value, rel=1e-9)
    # n_vessels=2: the two widest of each, nothing flagged
    z3 = zone_measurements(g, DISC, mask=mask, n_vessels=2)
    assert z3.biomarkers["crae_knudtson_um"].value == pytest.approx(0.88 * math.hypot(18 * 13, 18 * 15), rel=1e-9)
    assert z3.counts == {"crae_n_vessels": 2, "crve_n_vessels": 2}
    assert all(m.reason is None for m in z3.biomarkers.values())


def test_the_vessel_count_alone_moves_crae_by_40_percent_so_it_is_fixed_stored_and_flagged():
    # identical widths (9 px arterioles, 11 px venules); image A has 2 of each in the zone, image B 6 arterioles
    few = drawn([(0, 9, 1), (3, 9, 1), (6, 11, 2), (8, 11, 2)])
    many = drawn([(i, 9, 1) for i in range(6)] + [(6, 11, 2), (8, 11, 2)])
    za = zone_measurements(few[2], DISC, um_per_px=10.0, mask=few[0])
    zb = zone_measurements(many[2], DISC, um_per_px=10.0, mask=many[0])
    a, b = za.biomarkers, zb.biomarkers
    # by hand: Knudtson over 2 x 90 um vs over 6 x 90 um (big-6 pairing)
    assert a["crae_knudtson_um"].value == pytest.approx(0.88 * math.sqrt(2) * 90, rel=1e-9)
    assert b["crae_knudtson_um"].value == pytest.approx(big6([90.0] * 6, kn(0.88)), rel=1e-9)
    assert b["crae_parr_hubbard_um"].value == pytest.approx(big6([90.0] * 6, ph_artery), rel=1e-9)
    ratio = b["crae_knudtson_um"].value / a["crae_knudtson_um"].value
    assert ratio == pytest.approx(1.405, abs=0.001)  # +40% from the count alone
    assert b["crae_parr_hubbard_um"].value / a["crae_parr_hubbard_um"].value > 1.35
    # so the count is stored and the short image is flagged (value kept)
    assert (za.counts["crae_n_vessels"], zb.counts["crae_n_vessels"]) == (2, 6)
    assert a["crae_knudtson_um"].ok and "only 2 of 6 arterioles" in a["crae_knudtson_um"].reason
    assert b["crae_knudtson_um"].reason is None
    # a fixed count both images reach makes the values equal again
    za2 = zone_calibers(few[2], DISC, um_per_px=10.0, mask=few[0], n_vessels=2)
    zb2 = zone_calibers(many[2], DISC, um_per_px=10.0, mask=many[0], n_vessels=2)
    for k in ("crae_knudtson_um", "crae_parr_hubbard_um", "avr_knudtson", "avr_parr_hubbard"):
        assert za2[k].value == pytest.approx(zb2[k].value, rel=1e-12), k


def test_vessel_split_by_a_branch_and_a_crossing_in_the_zone_is_counted_once():
    # artery straight up at x = 200 (width 9) with a side branch leaving left at (200, 75) (125 px from the
    # centre, inside the zone); a vein crosses it horizontally at y = 60 (140 px, inside the zone); plus one
    # more artery and one more vein elsewhere.
    vessels = [(((200, 150), (200, 5)), 9, 1), (((200, 75), (120, 75)), 3, 1),
               (((120, 60), (280, 60)), 7, 2),
               (3, 5, 1), (6, 11, 2)]
    mask, _, g = drawn(vessels)
    assert np.count_nonzero(g.av_label == 1) >= 4  # the main artery is cut into several segments
    zv = zone_vessels(g, DISC, mask=mask)
    arteries = sorted((v for v in zv if v.av == 1), key=lambda v: -v.width_px)
    veins = sorted((v for v in zv if v.av == 2), key=lambda v: -v.width_px)
    assert [round(v.width_px, 6) for v in arteries] == [9, 5]  # trunk width, branch merged into it
    assert len(arteries[0].edges) >= 3
    assert abs(arteries[0].angle_deg - (-90.0)) < 20  # straight up from the disc (y down)
    assert [round(v.width_px, 6) for v in veins] == [11, 7]
    z = zone_calibers(g, DISC, um_per_px=10.0, mask=mask)
    assert z["crae_knudtson_um"].value == pytest.approx(0.88 * math.hypot(90, 50), rel=1e-9)


def test_without_mask_segment_means_are_used():
    mask, _, g = drawn([(0, 5, 1), (3, 7, 1), (6, 9, 2), (8, 11, 2)])
    with_mask = zone_calibers(g, DISC, um_per_px=10.0, mask=mask)
    without = zone_calibers(g, DISC, um_per_px=10.0)
    for k in ZONE_KEYS:  # the whole-segment mean includes the thinner ends: close, not equal
        assert without[k].value == pytest.approx(with_mask[k].value, rel=0.1)


def test_not_measurable_cases_give_reasons():
    mask, _, g = drawn([(0, 5, 1), (6, 9, 2), (8, 11, 2)])  # one arteriole only
    zm = zone_measurements(g, DISC, um_per_px=10.0, mask=mask)
    z = zm.biomarkers
    for k in ("crae_parr_hubbard_um", "crae_knudtson_um", "avr_parr_hubbard", "avr_knudtson"):
        assert z[k].value is None and "only 1 of 6 arterioles" in z[k].reason and "need >= 2" in z[k].reason
    assert z["crve_knudtson_um"].ok and z["crve_parr_hubbard_um"].ok
    assert zm.counts == {"crae_n_vessels": 1, "crve_n_vessels": 2}

    lost = OpticDisc(False, reason="no compact bright region")
    zm = zone_measurements(g, lost)
    z = zm.biomarkers
    assert all(m.value is None and "optic disc not found: no compact bright region" in m.reason for m in z.values())
    assert zm.counts == {"crae_n_vessels": None, "crve_n_vessels": None}

    corner = OpticDisc(True, cx=0.0, cy=0.0, diameter_px=300.0)  # ring radius 375 px: mostly off the frame
    zm = zone_measurements(g, corner)
    assert all(m.value is None and "outside the image" in m.reason for m in zm.biomarkers.values())
    assert set(zm.counts.values()) == {None}

    unlabelled = vessel_graph(mask)  # no A/V labels at all
    zm = zone_measurements(unlabelled, DISC, um_per_px=10.0)
    z = zm.biomarkers
    assert all(m.value is None for m in z.values())
    assert "only 0 of 6 arterioles" in z["crae_knudtson_um"].reason and "0 of 6 venules" in z["crve_knudtson_um"].reason
    assert zm.counts == {"crae_n_vessels": 0, "crve_n_vessels": 0}
    assert ZONE_COUNT_KEYS == C.ZONE_VESSEL_COUNTS


def test_bad_arguments_raise():
    mask, _, g = drawn([(0, 5, 1), (3, 7, 1)])
    with pytest.raises(ValueError, match="n_vessels"):
        zone_calibers(g, DISC, n_vessels=1)
    with pytest.raises(ValueError, match="n_vessels"):
        zone_measurements(g, DISC, n_vessels=6.0)
    with pytest.raises(ValueError, match="um_per_px"):
        zone_calibers(g, DISC, um_per_px=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        zone_vessels(g, DISC, mask=mask[:10])
    with pytest.raises(ValueError, match="not found"):
        zone_vessels(g, OpticDisc(False, reason="x"))
