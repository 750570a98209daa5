"""Pure vessel functions: mask -> skeleton graph (skan), calibers, CRAE/CRVE/AVR, FD, GLCM, tortuosity.

No Ray, no torch, no file I/O: arrays in, arrays/dataclasses out.
"""

from dr_ray.vessels.av import FEATURE_NAMES as AV_FEATURE_NAMES
from dr_ray.vessels.av import (
    AVClassifier,
    apply_av_labels,
    av_links,
    fit_av_classifier,
    load_default_av_classifier,
    predict_av,
    segment_features,
    smooth_av_logits,
)
from dr_ray.vessels.biomarkers import (
    Measurement,
    branch_point_count,
    fractal_dimension,
    global_biomarkers,
    mean_tortuosity,
    vessel_density,
)
from dr_ray.vessels.caliber import (
    DEFAULT_DISC_DIAMETER_UM,
    avr,
    knudtson_crae,
    knudtson_crve,
    parr_hubbard_crae,
    parr_hubbard_crve,
    px_to_um,
    um_per_px_from_disc,
)
from dr_ray.vessels.fractal import box_counting_fd, box_counts
from dr_ray.vessels.graph import EDGE_FEATURES, NODE_FEATURES, VesselGraph
from dr_ray.vessels.graph_build import vessel_graph
from dr_ray.vessels.optic_disc import OpticDisc, detect_optic_disc
from dr_ray.vessels.texture import GLCM_PROPS, HOMOGENEITY_VARIANTS, glcm_features
from dr_ray.vessels.zone import (
    DEFAULT_CRX_VESSELS,
    ZONE_COUNT_KEYS,
    ZONE_KEYS,
    ZoneMeasurements,
    ZoneVessel,
    zone_calibers,
    zone_measurements,
    zone_vessels,
)

__all__ = [
    "Measurement", "vessel_density", "branch_point_count", "mean_tortuosity", "fractal_dimension",
    "global_biomarkers",
    "DEFAULT_DISC_DIAMETER_UM", "parr_hubbard_crae", "parr_hubbard_crve", "knudtson_crae", "knudtson_crve",
    "avr", "px_to_um", "um_per_px_from_disc",
    "box_counting_fd", "box_counts",
    "NODE_FEATURES", "EDGE_FEATURES", "VesselGraph", "vessel_graph",
    "GLCM_PROPS", "HOMOGENEITY_VARIANTS", "glcm_features",
    "OpticDisc", "detect_optic_disc",
    "AV_FEATURE_NAMES", "AVClassifier", "segment_features", "fit_av_classifier", "load_default_av_classifier",
    "apply_av_labels", "av_links", "smooth_av_logits", "predict_av",
    "ZONE_KEYS", "ZONE_COUNT_KEYS", "DEFAULT_CRX_VESSELS", "ZoneMeasurements", "ZoneVessel", "zone_calibers",
    "zone_measurements", "zone_vessels",
]
