"""Model registry and builders (timm backbones), and saved-model directories.

``create_model(name, **kw)`` builds a registered model (``list_models()`` names them); every model has a
``.spec`` (:class:`ModelSpec`) with its input size, normalisation and output activation.
``save_model_dir`` / ``load_model_dir`` write and read ``model.pt`` + ``metadata.json``.
"""

from dr_ray.models.registry import ModelSpec, create_model, list_models, register_model
from dr_ray.models import unet as _unet  # noqa: F401  (registers "unet", "vessel_unet")
from dr_ray.models.unet import TimmUNet
from dr_ray.models.artifacts import artifact_hash, load_model_dir, save_model_dir

__all__ = [
    "ModelSpec",
    "TimmUNet",
    "artifact_hash",
    "create_model",
    "list_models",
    "load_model_dir",
    "register_model",
    "save_model_dir",
]
