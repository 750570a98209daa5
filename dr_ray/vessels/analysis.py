"""One image's vessel analysis: probability map -> mask -> graph (+ A/V) -> optic disc -> biomarkers.

The composition the vessels stage runs per image, kept pure (arrays in, dataclasses out) so that it can be
tested and benchmarked without Ray or a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dr_ray.vessels.av import AVClassifier, apply_av_labels, predict_av
from dr_ray.vessels.biomarkers import Measurement, global_biomarkers
from dr_ray.vessels.caliber import DEFAULT_DISC_DIAMETER_UM
from dr_ray.vessels.graph import VesselGraph
from dr_ray.vessels.graph_build import vessel_graph
from dr_ray.vessels.optic_disc import OpticDisc, detect_optic_disc
from dr_ray.vessels.zone import DEFAULT_CRX_VESSELS, ZONE_COUNT_KEYS, zone_measurements


@dataclass(frozen=True)
class VesselAnalysis:
    """``mask`` (H, W) bool vessel mask inside the FOV; ``graph`` with A/V labels from the classifier (or
    unknown without one); ``disc``; ``biomarkers`` name -> :class:`Measurement` (value None + reason when
    not measurable; a value with a reason is a flagged one, e.g. CRAE over fewer than the fixed count);
    ``zone_counts``: {``crae_n_vessels``, ``crve_n_vessels``: arterioles / venules combined into CRAE /
    CRVE, None when the zone was not measured (no disc, zone off the frame, no A/V classifier)}."""

    mask: np.ndarray
    graph: VesselGraph
    disc: OpticDisc
    biomarkers: dict[str, Measurement]
    zone_counts: dict[str, int | None]

    def reasons(self) -> dict[str, str]:
        """{biomarker: reason} for the biomarkers that could not be measured and those whose value is
        flagged (a value with a reason)."""
        return {k: m.reason or "not measured" for k, m in self.biomarkers.items() if not m.ok or m.reason}


def probability_to_mask(prob: np.ndarray, threshold: float, fov: np.ndarray | None = None) -> np.ndarray:
    """(H, W) probability (float in 0..1, or uint8 p * 255) -> (H, W) bool mask ``p >= threshold`` inside ``fov``."""
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob must be a 2-D (H, W) array, got shape {prob.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if prob.dtype == np.uint8:
        mask = prob >= int(np.ceil(threshold * 255.0))
    else:
        mask = prob >= threshold
    if fov is not None:
        fov = np.asarray(fov, bool)
        if fov.shape != prob.shape:
            raise ValueError(f"fov shape {fov.shape} does not match prob shape {prob.shape}")
        mask &= fov
    return mask


def analyse_vessels(prob: np.ndarray, image: np.ndarray, fov: np.ndarray, *, threshold: float = 0.5,
                    prune_spur_px: float = 10.0, patch_px: int = 15, av_classifier: AVClassifier | None = None,
                    disc_diameter_um: float = DEFAULT_DISC_DIAMETER_UM, crx_vessels: int = DEFAULT_CRX_VESSELS,
                    glcm_homogeneity: str = "paper") -> VesselAnalysis:
    """Everything the vessels stage stores for one image.

    Args:
        prob: (H, W) vessel probability, float 0..1 or uint8 (p * 255).
        image: (H, W, 3) uint8 RGB, the image the probabilities were predicted on.
        fov: (H, W) bool field of view; vessels outside it are ignored.
        threshold: probability threshold of the vessel mask.
        prune_spur_px, patch_px: :func:`vessel_graph` settings (px).
        av_classifier: labels the graph's segments artery/vein; None leaves them unknown (CRAE/CRVE then
            have a reason instead of a value).
        disc_diameter_um: assumed optic disc diameter that sets the um scale of CRAE/CRVE.
        crx_vessels: the fixed number of widest arterioles / venules combined into CRAE / CRVE (Knudtson's 6;
            fewer in the zone: value kept, flagged in :meth:`VesselAnalysis.reasons`).
        glcm_homogeneity: ``"paper"`` (eq. 20, 1 / (1 + |i - j|)) or ``"skimage"`` (1 / (1 + (i - j)^2)).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if image.shape[:2] != np.shape(prob):
        raise ValueError(f"image {image.shape[:2]} and prob {np.shape(prob)} differ in size")
    fov = np.asarray(fov, bool)
    mask = probability_to_mask(prob, threshold, fov)
    graph = vessel_graph(mask, prune_spur_px=prune_spur_px, image=image, patch_px=patch_px)
    if av_classifier is not None and graph.n_edges:
        graph = apply_av_labels(graph, predict_av(graph, image, mask, av_classifier))
    disc = detect_optic_disc(image, fov, vessel_mask=mask)
    biomarkers = dict(global_biomarkers(mask, graph, fov, image=image, glcm_homogeneity=glcm_homogeneity))
    zone = zone_measurements(graph, disc, disc_diameter_um=disc_diameter_um, n_vessels=crx_vessels, mask=mask)
    zone_bm, counts = zone.biomarkers, zone.counts
    if av_classifier is None:
        zone_bm = {k: Measurement(None, "no artery/vein classifier: arteries and veins unknown") for k in zone_bm}
        counts = {k: None for k in ZONE_COUNT_KEYS}
    biomarkers.update(zone_bm)
    return VesselAnalysis(mask=mask, graph=graph, disc=disc, biomarkers=biomarkers, zone_counts=dict(counts))
