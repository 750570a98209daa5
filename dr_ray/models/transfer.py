"""Transfer of a lesion-segmentation encoder to another model (poster Table 2: the classifier's lesion
branch starts from the Swin U-Net encoder).

The exported state is the segmentation model's timm ``features_only`` encoder (``model.encoder``) as a
plain tensor dict; it loads unchanged into ``timm.create_model(<encoder>, features_only=True, **timm_kwargs)``
(:func:`build_encoder`) and, through :func:`load_encoder`, into the plain timm model of the same
architecture (timm's feature wrapper renames ``layers.0`` to ``layers_0``; the rename is undone).
Decoder, conv stem and head stay behind.

On disk (:func:`save_encoder`): ``<name>.pt`` (the tensor dict, read with ``weights_only=True``) and a
``<name>.json`` sidecar with keys:
    format_version: int (1)
    encoder: timm model name
    timm_kwargs: the other ``timm.create_model`` kwargs (in_chans, and for Swin img_size, window_size, ...)
    input_size: px, the segmentation model's training scale; mean / std: its normalisation
    source_model: the segmentation model's registry name; source_model_hash: sha256 of its full state dict
        (or the hash the caller passes, e.g. ``artifact_hash`` of its model directory)
    feature_channels / feature_reductions: the encoder's feature levels
    encoder_sha256: sha256 of ``<name>.pt``; checked before loading
    versions: {"torch", "timm"}
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from dr_ray.models.artifacts import file_sha256
from dr_ray.models.registry import ModelSpec, jsonable

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FLAT_TO_NESTED = re.compile(r"^([A-Za-z][A-Za-z0-9]*?)_(\d+)\.")  # timm FeatureListNet: layers_0. -> layers.0.
_NESTED_TO_FLAT = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)\.(\d+)\.")


@dataclass(frozen=True)
class EncoderLoadReport:
    """What :func:`load_encoder` did: keys of the target left untouched, state keys not used, and the key
    renaming applied ("none", "feature_net_to_model" or "model_to_feature_net")."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    renaming: str


def _encoder_module(model: nn.Module) -> nn.Module:
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, nn.Module) or not hasattr(enc, "feature_info"):
        raise ValueError(f"{type(model).__name__} has no timm features_only .encoder (expected a SwinUNet or "
                         f"TimmUNet from create_model('swin_unet' | 'lesion_unet' | 'unet', ...))")
    return enc


def encoder_info(model: nn.Module) -> dict[str, Any]:
    """Name, timm kwargs and feature levels of ``model``'s encoder (+ input size / normalisation if it has a spec)."""
    enc = _encoder_module(model)
    spec = getattr(model, "spec", None)
    name = getattr(model, "encoder_name", None)
    timm_kwargs = dict(getattr(model, "encoder_kwargs", {}) or {})
    if name is None:  # TimmUNet: the encoder name lives in the spec (or timm's pretrained_cfg)
        name = (spec.kwargs.get("encoder") if isinstance(spec, ModelSpec) else None) \
            or enc.pretrained_cfg["architecture"]
        first_conv = next(p for p in enc.parameters() if p.ndim == 4)
        timm_kwargs = {"in_chans": int(first_conv.shape[1])}
    info: dict[str, Any] = {
        "encoder": name,
        "timm_kwargs": jsonable(timm_kwargs),
        "feature_channels": [int(c) for c in enc.feature_info.channels()],
        "feature_reductions": [int(r) for r in enc.feature_info.reduction()],
        "input_size": None, "mean": None, "std": None, "source_model": None,
    }
    if isinstance(spec, ModelSpec):
        info.update(input_size=spec.input_size, mean=list(spec.mean), std=list(spec.std), source_model=spec.name)
    return info


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.encoder``'s state dict (CPU copies), keyed as in ``timm.create_model(<encoder>, features_only=True)``."""
    return {k: v.detach().to("cpu").clone() for k, v in _encoder_module(model).state_dict().items()}


def build_encoder(info: Mapping[str, Any], *, pretrained: bool = False) -> nn.Module:
    """A fresh ``timm.create_model(info["encoder"], features_only=True, **info["timm_kwargs"])``."""
    return timm.create_model(info["encoder"], features_only=True, pretrained=pretrained, **dict(info["timm_kwargs"]))


def rename_state_keys(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the key naming of ``state`` (as is, or with timm's feature-net renaming undone/applied) that
    overlaps most with the target's keys.

    Returns ``(renamed state, how)``, ``how`` one of ``"none"``, ``"feature_net_to_model"``,
    ``"model_to_feature_net"`` (ties go to ``"none"``).
    """
    candidates = {
        "none": dict(state),
        "feature_net_to_model": {_FLAT_TO_NESTED.sub(r"\1.\2.", k): v for k, v in state.items()},
        "model_to_feature_net": {_NESTED_TO_FLAT.sub(r"\1_\2.", k): v for k, v in state.items()},
    }
    best = max(candidates, key=lambda c: (len(target_keys & set(candidates[c])), c == "none"))
    return candidates[best], best


def load_encoder(target: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> EncoderLoadReport:
    """Copy an exported encoder state into ``target`` (a timm features_only net, the plain timm model of the
    same architecture, or a model whose ``.encoder`` is one of those).

    ``strict=True`` raises ValueError unless every target key is filled and every state key used; with
    ``strict=False`` the matching keys are loaded and the rest reported (e.g. a classifier's own head and
    final norm). A shape mismatch (another variant, window size or input size) always raises ValueError.
    Returns an :class:`EncoderLoadReport`.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("state must be a dict of tensors (from encoder_state_dict / load_encoder_file)")
    if not state:
        raise ValueError("state is empty")
    module = target.encoder if isinstance(getattr(target, "encoder", None), nn.Module) else target
    own = module.state_dict()
    renamed, how = rename_state_keys(state, set(own))
    missing = sorted(set(own) - set(renamed))
    unexpected = sorted(set(renamed) - set(own))
    shapes = [f"{k}: state {tuple(renamed[k].shape)} vs target {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(renamed)) if renamed[k].shape != own[k].shape]
    where = type(module).__name__ + (f" ({module.pretrained_cfg.get('architecture')})"
                                     if isinstance(getattr(module, "pretrained_cfg", None), dict) else "")
    if not set(own) & set(renamed):
        raise ValueError(f"encoder state does not match {where}: no key in common (different architecture?); "
                         f"state keys e.g. {list(state)[:3]}, target keys e.g. {list(own)[:3]}")
    if shapes:
        raise ValueError(f"encoder state does not fit {where}: {len(shapes)} tensors differ in shape (another "
                         f"variant, window size or input size?): {shapes[:5]}")
    if strict and (missing or unexpected):
        raise ValueError(f"encoder state does not match {where} (strict=True): {len(missing)} missing keys "
                         f"{missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}; pass strict=False "
                         f"to load the common keys and keep the target's own for the rest")
    module.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=False)
    if missing or unexpected:
        logger.warning("encoder loaded into %s with %d missing and %d unexpected keys (renaming %s)",
                       where, len(missing), len(unexpected), how)
    return EncoderLoadReport(missing_keys=missing, unexpected_keys=unexpected, renaming=how)


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 hex over ``model.state_dict()`` (sorted keys, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_encoder(model: nn.Module, path: str | Path, *, source_model_hash: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``model``'s encoder to ``path`` (a ``.pt`` file) and its ``.json`` sidecar; returns ``path``.

    ``source_model_hash``: identifies the segmentation model (e.g. ``artifact_hash(model_dir)``); default: the
    sha256 of its state dict (:func:`state_dict_sha256`).
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"path must name a .pt file (the sidecar is the same name with .json), got {path}")
    if (path.exists() or _sidecar(path).exists()) and not overwrite:
        raise FileExistsError(f"{path} or {_sidecar(path)} already exists; pass overwrite=True to replace them")
    info = encoder_info(model)
    state = encoder_state_dict(model)
    meta = {"format_version": FORMAT_VERSION, **info,
            "source_model_hash": source_model_hash or state_dict_sha256(model),
            "encoder_sha256": None,
            "versions": {"torch": torch.__version__, "timm": timm.__version__}}
    json.dumps(meta)  # fail on a non-JSON value before writing anything
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    meta["encoder_sha256"] = file_sha256(path)
    _sidecar(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    logger.info("saved %s encoder (%d tensors, from %s) to %s", info["encoder"], len(state), info["source_model"], path)
    return path


def load_encoder_file(path: str | Path, *, map_location: str | torch.device = "cpu"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an encoder written by :func:`save_encoder`: (tensor state dict, sidecar dict).

    Raises FileNotFoundError for a missing file or sidecar, ValueError when the sha256 differs from the
    sidecar or the file is not a plain tensor dict (refused by ``weights_only=True``).
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if not side.is_file():
        raise FileNotFoundError(f"{side} (the sidecar of {path.name}) not found")
    meta = json.loads(side.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{side}: format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    actual = file_sha256(path)
    if actual != meta.get("encoder_sha256"):
        raise ValueError(f"{path}: sha256 {actual} does not match {side.name}'s encoder_sha256 "
                         f"{meta.get('encoder_sha256')} (file modified or truncated)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a plain tensor dict (refused by weights_only=True): {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a dict of tensors")
    return state, meta


__all__ = ["EncoderLoadReport", "build_encoder", "encoder_info", "encoder_state_dict", "load_encoder",
           "load_encoder_file", "rename_state_keys", "save_encoder", "state_dict_sha256"]
