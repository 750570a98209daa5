"""Training: one Ray-free loop (``fit.py``), the segmentation and classification epochs, data and metrics;
``ray_train.py``, ``ray_fusion.py`` and ``tune.py`` (imported on their own) are the only Ray parts.

The names below are re-exported lazily (PEP 562): every Ray Train worker and Ray Data task that unpickles a function
of a ``dr_ray.training`` submodule imports this package first, and eager re-exports would pull scikit-learn and
OpenCV into each of those processes (seconds of CPU per process on a small node).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy re-export below provides, for type checkers and IDEs (never run)
    from dr_ray.training.data import (VesselImage, VesselRecord, augment, load_vessel_image, load_vessel_images,
                                      patch_batches, sample_patch_origins, split_by_patient, train_data_hash)
    from dr_ray.training.lesion_losses import LesionLoss
    from dr_ray.training.lesion_metrics import LesionMeter
    from dr_ray.training.segmentation import evaluate_vessels, predict_image, train_segmentation_epoch
    from dr_ray.training.losses import DiceBCELoss
    from dr_ray.training.metrics import SegmentationMeter, segmentation_metrics

_EXPORTS = {
    "dr_ray.training.data": ("VesselImage", "VesselRecord", "augment", "load_vessel_image", "load_vessel_images",
                             "patch_batches", "sample_patch_origins", "split_by_patient", "train_data_hash"),
    "dr_ray.training.lesion_losses": ("LesionLoss",),
    "dr_ray.training.lesion_metrics": ("LesionMeter",),
    "dr_ray.training.losses": ("DiceBCELoss",),
    "dr_ray.training.segmentation": ("evaluate_vessels", "predict_image", "train_segmentation_epoch"),
    "dr_ray.training.metrics": ("SegmentationMeter", "segmentation_metrics"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dr_ray.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
