"""Pure vessel functions: mask -> skeleton graph (skan), calibres, CRAE/CRVE/AVR, FD, GLCM, tortuosity.

No Ray, no torch, no file I/O: arrays in, arrays/dataclasses out.
"""

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
from dr_ray.vessels.graph import EDGE_FEATURES, NODE_FEATURES, VesselGraph, vessel_graph
from dr_ray.vessels.texture import GLCM_PROPS, glcm_features

__all__ = [
    "Measurement", "vessel_density", "branch_point_count", "mean_tortuosity", "fractal_dimension",
    "global_biomarkers",
    "DEFAULT_DISC_DIAMETER_UM", "parr_hubbard_crae", "parr_hubbard_crve", "knudtson_crae", "knudtson_crve",
    "avr", "px_to_um", "um_per_px_from_disc",
    "box_counting_fd", "box_counts",
    "NODE_FEATURES", "EDGE_FEATURES", "VesselGraph", "vessel_graph",
    "GLCM_PROPS", "glcm_features",
]
