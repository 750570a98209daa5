"""Ray-free training loops, data and metrics; ``ray_train.py`` (imported on its own) is the only Ray part."""

from dr_ray.training.data import (
    VesselImage,
    VesselRecord,
    augment,
    load_vessel_image,
    load_vessel_images,
    patch_batches,
    sample_patch_origins,
    split_by_patient,
    train_data_hash,
)
from dr_ray.training.lesion_losses import LesionLoss
from dr_ray.training.lesion_metrics import LesionMeter
from dr_ray.training.losses import DiceBCELoss
from dr_ray.training.loops import evaluate, predict_image, train_one_epoch
from dr_ray.training.metrics import SegmentationMeter, segmentation_metrics

__all__ = [
    "DiceBCELoss", "LesionLoss", "LesionMeter", "SegmentationMeter", "VesselImage", "VesselRecord", "augment", "evaluate", "load_vessel_image",
    "load_vessel_images", "patch_batches", "predict_image", "sample_patch_origins", "segmentation_metrics",
    "split_by_patient", "train_data_hash", "train_one_epoch",
]
