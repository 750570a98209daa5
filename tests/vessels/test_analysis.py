"""analyse_vessels: the per-image composition the vessels stage stores (mask -> graph -> A/V -> disc -> biomarkers)."""

from __future__ import annotations

import numpy as np
import pytest

from dr_ray.io import columns as C
from dr_ray.testing import make_fundus
from dr_ray.vessels import vessel_graph
from dr_ray.vessels.analysis import analyse_vessels, probability_to_mask
from dr_ray.vessels.av import load_default_av_classifier
from dr_ray.vessels.graph import AV_ARTERY, AV_VEIN


@pytest.fixture(scope="module")
def fundus():
    return make_fundus(seed=3, width=512, height=512, lesions=False)


@pytest.fixture(scope="module")
def analysis(fundus):
    prob = fundus.vessel_mask.astype(np.float32)  # a perfect segmentation
    return analyse_vessels(prob, fundus.image, fundus.fov_mask, av_classifier=load_default_av_classifier())


def test_every_stored_biomarker_is_returned_with_a_value_or_a_reason(analysis):
    assert set(analysis.biomarkers) == set(C.BIOMARKERS)
    for name, m in analysis.biomarkers.items():
        assert m.ok or m.reason, name
    # reasons: every null, and every flagged value (a value with a caveat)
    assert set(analysis.reasons()) == {k for k, m in analysis.biomarkers.items() if not m.ok or m.reason}
    assert set(analysis.zone_counts) == set(C.ZONE_VESSEL_COUNTS)


def test_zone_counts_are_stored_and_fewer_than_six_are_flagged(fundus, analysis):
    b, n = analysis.biomarkers, analysis.zone_counts
    assert all(isinstance(v, int) and 2 <= v <= 6 for v in n.values()), n
    for prefix, name in (("crae", "arterioles"), ("crve", "venules")):
        k = n[f"{prefix}_n_vessels"]
        for formula in ("parr_hubbard", "knudtson"):
            m = b[f"{prefix}_{formula}_um"]
            assert m.ok
            assert (m.reason is None) == (k == 6), (k, m.reason)
            if k < 6:
                assert f"only {k} of 6 {name}" in analysis.reasons()[f"{prefix}_{formula}_um"]
    # a smaller fixed count: both counts reach it, nothing is flagged
    two = analyse_vessels(fundus.vessel_mask.astype(np.float32), fundus.image, fundus.fov_mask,
                          av_classifier=load_default_av_classifier(), crx_vessels=2, glcm_homogeneity="skimage")
    assert two.zone_counts == {"crae_n_vessels": 2, "crve_n_vessels": 2}
    assert not any(k.startswith(("crae", "crve", "avr")) for k in two.reasons())
    assert two.biomarkers["glcm_homogeneity"].value != analysis.biomarkers["glcm_homogeneity"].value
    assert two.biomarkers["glcm_contrast"].value == analysis.biomarkers["glcm_contrast"].value


def test_known_tree_disc_av_and_calibers(fundus, analysis):
    # the graph is the one vessel_graph builds from the same mask, now with A/V labels
    ref = vessel_graph(fundus.vessel_mask & fundus.fov_mask, image=fundus.image)
    g = analysis.graph
    assert (g.n_nodes, g.n_edges) == (ref.n_nodes, ref.n_edges) and g.n_edges > 10
    np.testing.assert_array_equal(g.edges, ref.edges)
    # optic disc where the generator drew it
    d = analysis.disc
    assert d.found, d.reason
    dx, dy = d.cx - fundus.disc_center[0], d.cy - fundus.disc_center[1]
    assert np.hypot(dx, dy) < 0.25 * 2 * fundus.disc_radius
    assert abs(d.diameter_px - 2 * fundus.disc_radius) < 0.25 * 2 * fundus.disc_radius
    # A/V: the predicted labels agree with the drawn ones on most of the vessel length
    truth = vessel_graph(fundus.vessel_mask & fundus.fov_mask, av_map=fundus.av_map).av_label
    known = np.isin(truth, (AV_ARTERY, AV_VEIN))
    agree = np.average(g.av_label[known] == truth[known], weights=g.arc_length_px[known])
    assert agree > 0.7, agree
    # the synthetic generator draws veins wider than arteries: CRVE > CRAE, AVR < 1 (both formulas)
    b = analysis.biomarkers
    for formula in ("parr_hubbard", "knudtson"):
        crae, crve, avr = (b[f"crae_{formula}_um"], b[f"crve_{formula}_um"], b[f"avr_{formula}"])
        assert crae.ok and crve.ok and avr.ok, (crae.reason, crve.reason, avr.reason)
        assert avr.value == pytest.approx(crae.value / crve.value)
        assert 0.2 < avr.value < 1.0  # drawn A/V diameters ~3.5-4.9 vs 4.6-5.9 px; a few px wide at 512 px
    assert 0 < b["vessel_density"].value < 0.3
    assert 1.2 < b["fractal_dimension"].value < 1.9


def test_no_vessels_gives_reasons_not_crashes(fundus):
    res = analyse_vessels(np.zeros(fundus.vessel_mask.shape, np.float32), fundus.image, fundus.fov_mask,
                          av_classifier=load_default_av_classifier())
    assert res.graph.n_edges == 0
    reasons = res.reasons()
    assert "fractal_dimension" in reasons and "no vessel" in reasons["fractal_dimension"]
    assert "mean_tortuosity" in reasons and "crae_knudtson_um" in reasons
    assert res.biomarkers["vessel_density"].value == 0.0


def test_no_visible_disc_and_no_classifier_give_reasons():
    grey = np.full((256, 256, 3), 90, np.uint8)
    yy, xx = np.mgrid[:256, :256]
    fov = np.hypot(xx - 128, yy - 128) < 120
    prob = np.zeros((256, 256), np.float32)
    prob[128:131, 20:236] = 1.0  # one horizontal vessel
    res = analyse_vessels(prob, grey, fov, av_classifier=load_default_av_classifier())
    assert not res.disc.found and res.disc.reason
    assert "optic disc not found" in res.reasons()["crae_parr_hubbard_um"]
    assert res.biomarkers["branch_points"].value == 0.0

    fundus = make_fundus(seed=4, width=256, height=256, lesions=False)
    res = analyse_vessels(fundus.vessel_mask.astype(np.float32), fundus.image, fundus.fov_mask, av_classifier=None)
    assert "no artery/vein classifier" in res.reasons()["avr_knudtson"]
    assert res.zone_counts == {"crae_n_vessels": None, "crve_n_vessels": None}
    assert set(np.unique(res.graph.av_label)) <= {-1}


def test_probability_to_mask_thresholds_float_and_uint8_alike():
    p = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    u8 = np.round(p * 255).astype(np.uint8)
    fov = np.ones((16, 16), bool)
    fov[:, :2] = False
    np.testing.assert_array_equal(probability_to_mask(p, 0.5, fov), probability_to_mask(u8, 0.5, fov))
    assert not probability_to_mask(p, 0.5, fov)[:, :2].any()
    with pytest.raises(ValueError, match="threshold"):
        probability_to_mask(p, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        probability_to_mask(np.zeros((2, 2, 2)), 0.5)
    with pytest.raises(ValueError, match="differ in size"):
        analyse_vessels(np.zeros((8, 8)), np.zeros((9, 9, 3), np.uint8), np.ones((8, 8), bool))
