"""Pure image functions (NumPy/OpenCV): bytes in, arrays out. No Ray, no torch, no file I/O.

``preprocess_image`` is the per-image chain the preprocess stage runs; it raises ``ImageDecodeError``
(a ``ValueError``) with a human-readable reason for every unusable input.
"""

from dr_ray.imaging.decode import (
    ImageDecodeError,
    ImageHeader,
    check_header,
    choose_reduction,
    decode,
    decoded_shape,
    plan_decode,
    probe,
)
from dr_ray.imaging.enhance import canny_edges, clahe, graham_normalise, vessel_tophat
from dr_ray.imaging.lesion_maps import (
    decode_lesion_maps,
    encode_lesion_maps,
    lesion_statistics,
    quantise,
    reduce_maps,
)
from dr_ray.imaging.fov import FovGeometry, circle_mask, crop_fov_mask, crop_to_fov, find_fov, fov_mask
from dr_ray.imaging.preprocess import (
    PreprocessResult,
    decode_png,
    encode_png,
    preprocess_decoded,
    preprocess_image,
    preprocess_naive,
)
from dr_ray.imaging.quality import QualityMeasures, is_gradable, measure_quality, quality_issues

__all__ = [
    "ImageDecodeError", "ImageHeader", "probe", "check_header", "choose_reduction", "plan_decode", "decoded_shape",
    "decode",
    "FovGeometry", "fov_mask", "find_fov", "crop_to_fov", "crop_fov_mask", "circle_mask",
    "clahe", "graham_normalise", "canny_edges", "vessel_tophat",
    "QualityMeasures", "measure_quality", "is_gradable", "quality_issues",
    "PreprocessResult", "preprocess_image", "preprocess_decoded", "preprocess_naive", "encode_png", "decode_png",
    "quantise", "reduce_maps", "encode_lesion_maps", "decode_lesion_maps", "lesion_statistics",
]
