"""Shared pieces of the DR classifiers (:mod:`dr_ray.models.classifiers`): argument checks, batch-entry
checks, the model spec, and the timm helpers every family builds its branches with (:func:`create_timm_model`
for a full timm model, :func:`branch_timm_kwargs` / :func:`feature_encoder` for a ``features_only`` branch).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn
from torch_geometric.data import Batch

from dr_ray.models.registry import ModelSpec
from dr_ray.models.swin_unet import check_swin_input_size
from dr_ray.models import unet as _unet
from dr_ray.models.unet import create_encoder

logger = logging.getLogger(__name__)

MODALITIES = ("image", "lesion", "graph", "stats")
DEFAULT_LESION_SIZE = 128
DEFAULT_SWIN_T_INPUT_SIZE = 448  # 2 x 224: the smallest window-7-compatible size above ImageNet's (as swin_unet)
MIN_INPUT_SIZE = 32  # one cell at the stride-32 last level of every backbone used here


# ----------------------------------------------------------------------------------------------- validation

def check_int(name: str, v: object, minimum: int = 1) -> int:
    """``v`` if it is an int (not a bool) >= ``minimum``, else ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def check_dropout(v: object) -> float:
    """``v`` as a float if it is a number (not a bool) in [0, 1), else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {v!r}")
    return float(v)


def check_timm_name(name: str, param: str) -> str:
    """``name`` if timm knows the model, else ValueError naming ``param`` (with close matches)."""
    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        raise ValueError(f"{param} must be a timm model name, got {name!r}"
                         + (f"; did you mean {close}?" if close else "") + " (see timm.list_models())")
    return name


def check_modalities(modalities: Sequence[str] | None, supported: tuple[str, ...],
                     required: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``modalities`` as a tuple in MODALITIES order (None -> all ``supported``)."""
    if modalities is None:
        return supported
    if isinstance(modalities, str) or not isinstance(modalities, Sequence):
        raise ValueError(f"modalities must be a sequence of names from {supported} (or None), got {modalities!r}")
    mods = tuple(modalities)
    bad = [m for m in mods if m not in supported]
    if bad or not mods or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct names from {supported}, non-empty, got {list(mods)}"
                         + (f" (not supported by this model: {bad})" if bad else ""))
    missing = [m for m in required if m not in mods]
    if missing:
        raise ValueError(f"modalities must include {missing} for this model, got {list(mods)}")
    return tuple(m for m in MODALITIES if m in mods)


def check_fusion(hidden_dim: int, heads: int, fusion_layers: int, *, sincos: bool) -> None:
    """ValueError unless the fusion transformer's sizes are ints >= 1, ``heads`` divides ``hidden_dim`` and,
    with 2-D sine-cosine position codes (``sincos``), 4 divides ``hidden_dim``."""
    check_int("hidden_dim", hidden_dim)
    check_int("heads", heads)
    check_int("fusion_layers", fusion_layers)
    if hidden_dim % heads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by heads ({heads})")
    if sincos and hidden_dim % 4:
        raise ValueError(f"hidden_dim must be divisible by 4 (2-D sine-cosine position codes), got {hidden_dim}")


def batch_entry(batch: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Any:
    """``batch[key]``; ValueError (naming the model's ``modalities``) if ``batch`` is no mapping or lacks it."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"batch must be a dict of modality tensors, got {type(batch).__name__}")
    v = batch.get(key)
    if v is None:
        raise ValueError(f"batch is missing {key!r}: this model uses the modalities {list(modalities)} "
                         f"(batch keys: {sorted(batch)})")
    return v


def check_tensor(key: str, v: Any, shape: tuple[int | None, ...], what: str) -> torch.Tensor:
    """v must be a floating tensor of ``shape`` (None = any size)."""
    if not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point or v.ndim != len(shape) \
            or any(s is not None and s != d for s, d in zip(shape, v.shape)):
        got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"batch[{key!r}] must be {what} float, got {got}")
    return v


def agreed_batch_size(sizes: dict[str, int]) -> int:
    """The one batch size of ``sizes`` (batch entry -> its size); ValueError if the entries disagree."""
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch entries disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def batch_image(batch: Mapping[str, Any], modalities: tuple[str, ...], input_size: int) -> torch.Tensor:
    """``batch["image"]``, checked to be a (B, 3, input_size, input_size) float tensor."""
    x = batch_entry(batch, "image", modalities)
    return check_tensor("image", x, (None, 3, input_size, input_size), f"(B, 3, {input_size}, {input_size})")


def batch_graph(batch: Mapping[str, Any], modalities: tuple[str, ...]) -> Batch:
    """``batch["graph"]``, checked to be a ``torch_geometric.data.Batch``."""
    g = batch_entry(batch, "graph", modalities)
    if not isinstance(g, Batch):
        raise ValueError(f"batch['graph'] must be a torch_geometric.data.Batch (Batch.from_data_list), "
                         f"got {type(g).__name__}")
    return g


def spec_mean_std(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a timm net's input normalisation (``resolve_data_config``), as float tuples."""
    cfg = resolve_data_config({}, model=encoder)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def classifier_spec(name: str, model: nn.Module, num_classes: int, input_size: int,
                    kwargs: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of an RGB softmax classifier, normalised as its ``image_encoder``."""
    mean, std = spec_mean_std(model.image_encoder)
    return ModelSpec(name=name, in_channels=3, out_channels=num_classes, input_size=input_size, mean=mean, std=std,
                     output="softmax", kwargs=kwargs)


# ----------------------------------------------------------------------------------------------- timm models

def create_timm_model(name: str, *, pretrained: bool, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=..., **timm_kwargs)`` that fails fast offline.

    :func:`dr_ray.models.unet.create_encoder` forces ``features_only=True``; this is the same weight-host
    probe (:func:`~dr_ray.models.unet.weights_host` / :func:`~dr_ray.models.unet.reachable`, skipped with
    ``HF_HUB_OFFLINE=1``) for a full timm model.
    """
    check_timm_name(name, "backbone")
    if not pretrained:
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    host, source = _unet.weights_host(name)
    if host is None:
        raise RuntimeError(f"timm has no pretrained weights for {name}; set pretrained=False")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        reason = _unet.reachable(host)  # via the module: tests mock it there
        if reason is not None:
            raise _unet.offline_error(name, source, reason)
    try:
        return timm.create_model(name, pretrained=True, **timm_kwargs)
    except (OSError, ConnectionError) as e:  # huggingface_hub's errors are OSError subclasses
        raise _unet.offline_error(name, source, f"{type(e).__name__}: {e}") from e


def last_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last feature level of a timm ``features_only`` net, NCHW."""
    f = encoder(x)[-1]
    fmt = getattr(encoder, "output_fmt", "NCHW")
    return f.permute(0, 3, 1, 2) if fmt == "NHWC" else f


# timm kwargs a branch sets itself (features_only net of the branch's own input size and channels)
_RESERVED_TIMM_KWARGS = ("features_only", "pretrained", "in_chans", "img_size", "out_indices", "num_classes")


def _swin_window(name: str, timm_kwargs: Mapping[str, Any]) -> int:
    """The attention window a Swin v1 named ``name`` is built with: ``timm_kwargs["window_size"]`` or the name's."""
    if "window_size" in timm_kwargs:
        return int(timm_kwargs["window_size"])
    named = re.search(r"window(\d+)", name)
    return int(named.group(1)) if named else 7


def branch_timm_kwargs(name: str, param: str, input_size: int,
                       timm_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``timm.create_model`` kwargs of a feature branch ``name`` that sees ``input_size`` px inputs.

    ``timm_kwargs``: extra kwargs of the branch (JSON-serialisable; e.g. ``window_size``, or ``embed_dim`` /
    ``depths`` / ``num_heads`` of a lighter Swin, as a ``train-lesions`` encoder.json records them); the keys in
    ``_RESERVED_TIMM_KWARGS`` are set by the branch itself and refused. Models with a fixed input size get
    ``img_size=input_size``; a Swin v1 also gets its window (the name's unless given), checked by
    :func:`~dr_ray.models.swin_unet.check_swin_input_size`: every stage grid ``input_size / 4·2^s`` must be
    <= the window or a multiple of it, since timm zero-pads other grids into unmasked attention. Window 7 (the
    ImageNet checkpoints) allows multiples of 224 px; window 8 allows 256, 512, 1024 (timm resamples the
    relative-position tables of pretrained weights, and
    :meth:`~dr_ray.models.classifiers.cross_feature_fusion.CrossFeatureFusion.load_segmentation_encoder` those
    of an exported encoder, to another window).
    """
    kw = dict(timm_kwargs or {})
    try:
        json.dumps(kw)
    except TypeError as e:
        raise ValueError(f"{param}_kwargs must be JSON-serialisable (they go into the model spec), got {kw!r}") from e
    reserved = sorted(set(kw) & set(_RESERVED_TIMM_KWARGS))
    if reserved:
        raise ValueError(f"{param}_kwargs must not set {reserved}: the branch sets them (input size / channels)")
    cfg = timm.models.get_pretrained_cfg(name)
    if name.startswith("swin_"):  # Swin v1 (swinv2_* names do not match)
        kw["img_size"] = input_size
        kw["window_size"] = _swin_window(name, kw)
        try:
            check_swin_input_size(input_size, kw["window_size"])
        except ValueError as e:
            raise ValueError(f"{param} {name!r} at {input_size} px: {e} (window via train.swin_window)") from None
    elif cfg is not None and cfg.fixed_input_size:
        kw["img_size"] = input_size
    return kw


def feature_encoder(name: str, param: str, *, pretrained: bool, in_chans: int, input_size: int,
                     timm_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """timm ``features_only`` net for a branch seeing (B, in_chans, input_size, input_size) inputs."""
    check_timm_name(name, param)
    enc = create_encoder(name, pretrained=pretrained, in_chans=in_chans,
                         **branch_timm_kwargs(name, param, input_size, timm_kwargs))
    fmt = getattr(enc, "output_fmt", "NCHW")
    if fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"{param} {name!r} gives {fmt} features; need a CNN/Swin-like feature map")
    if enc.feature_info.reduction()[-1] != 32:
        logger.warning("%s %s has last-level stride %d (expected 32)", param, name, enc.feature_info.reduction()[-1])
    return enc
