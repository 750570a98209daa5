"""Tiny segmentation models for tests, benchmarks and CPU dry runs of ``dr-ray label`` / the model stages: a
vessel U-Net and a 4-lesion sigmoid U-Net on ``mobilenetv3_small_100`` encoders with 16-channel decoders, fixed
random weights (seeds 0 and 1), ``pretrained=False`` (nothing is downloaded). Their outputs are meaningless;
their cost per image and their interfaces are those of the real models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

TINY = {"encoder": "mobilenetv3_small_100", "decoder_channels": (16, 16, 16, 16, 16)}


def tiny_label_models(root: str | Path, *, lesion_input_size: int | None = None) -> tuple[Path, Path]:
    """Save the two tiny models under ``root/vessel`` and ``root/lesion`` (model directories as
    :func:`~dr_ray.models.save_model_dir` writes them); ``lesion_input_size``: the lesion model's input side
    (default: the registry's). Returns the two directories."""
    import torch

    from dr_ray.models.artifacts import save_model_dir
    from dr_ray.models.registry import create_model

    root = Path(root)
    torch.manual_seed(0)
    v = create_model("vessel_unet", **TINY)
    torch.manual_seed(1)
    extra = {"input_size": lesion_input_size} if lesion_input_size else {}
    les = create_model("unet", classes=4, **TINY, **extra)
    les.spec = dataclasses.replace(les.spec, output="sigmoid")
    return (Path(save_model_dir(v.eval(), root / "vessel", config={}, train_data_hash=None)),
            Path(save_model_dir(les.eval(), root / "lesion", config={}, train_data_hash=None)))


__all__ = ["TINY", "tiny_label_models"]
