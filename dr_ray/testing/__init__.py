"""Synthetic fundus images with known ground truth, an EyePACS-like sample writer and broken files.

Used by the demo (a generated EyePACS-layout sample) and by the tests of every image/vessel/lesion stage.
"""

from dr_ray.testing.badfiles import BAD_FILE_KINDS, make_bad_files
from dr_ray.testing.dataset import eyepacs_like_grades, write_eyepacs_like_dataset
from dr_ray.testing.fundus import SyntheticFundus, encode_jpeg, make_fundus
from dr_ray.testing.segmentation_sets import write_synthetic_set

__all__ = [
    "BAD_FILE_KINDS",
    "SyntheticFundus",
    "encode_jpeg",
    "eyepacs_like_grades",
    "make_bad_files",
    "make_fundus",
    "write_eyepacs_like_dataset",
    "write_synthetic_set",
]
