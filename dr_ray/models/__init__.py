"""Model registry and builders (timm backbones), and saved-model directories.

``create_model(name, **kw)`` builds a registered model (``list_models()`` names them); every model has a
``.spec`` (:class:`ModelSpec`) with its input size, normalisation and output activation.
``save_model_dir`` / ``load_model_dir`` write and read ``model.pt`` + ``metadata.json``.
``save_encoder`` / ``load_encoder_file`` / ``load_encoder`` move a segmentation encoder into another model.
"""

from dr_ray.models.registry import ModelSpec, create_model, list_models, register_model
from dr_ray.models import unet as _unet  # noqa: F401  (registers "unet", "vessel_unet")
from dr_ray.models import compact_unet as _compact_unet  # noqa: F401  (registers "compact_vessel_unet")
from dr_ray.models import swin_unet as _swin_unet  # noqa: F401  (registers "swin_unet", "lesion_unet")
from dr_ray.models import classifiers as _classifiers  # noqa: F401  (registers the DR classifiers)
from dr_ray.models.unet import TimmUNet
from dr_ray.models.swin_unet import DEFAULT_LESION_KINDS, SwinUNet
from dr_ray.models.artifacts import artifact_hash, load_model_dir, read_metadata, save_model_dir
from dr_ray.models.transfer import (
    EncoderLoadReport,
    build_encoder,
    encoder_info,
    encoder_state_dict,
    load_encoder,
    load_encoder_file,
    save_encoder,
)

__all__ = [
    "DEFAULT_LESION_KINDS",
    "EncoderLoadReport",
    "ModelSpec",
    "SwinUNet",
    "TimmUNet",
    "artifact_hash",
    "build_encoder",
    "create_model",
    "encoder_info",
    "encoder_state_dict",
    "list_models",
    "load_encoder",
    "load_encoder_file",
    "load_model_dir",
    "read_metadata",
    "register_model",
    "save_encoder",
    "save_model_dir",
]
