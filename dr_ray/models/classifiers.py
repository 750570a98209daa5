"""DR classifiers: timm baselines and three multimodal fusion models, all behind ``create_model``.

Every classifier is an ``nn.Module`` whose ``forward(batch: dict) -> logits (B, num_classes) float32`` reads
    "image":  (B, 3, S, S) float32, normalised ``(x / 255 - spec.mean) / spec.std``, S = ``spec.input_size``;
    "lesion": (B, K, M, M) float32 lesion probability maps in [0, 1] (K = ``lesion_kinds``, M = ``lesion_size``);
    "graph":  a torch_geometric ``Batch`` of B vascular graphs (``x`` (N, node_features), ``edge_index`` (2, E),
              ``batch`` (N,)); graphs may have no node;
    "stats":  (B, stats_dim) float32 global vascular biomarkers (standardised, with missing-value indicators);
only the keys of the modalities it uses (``.modalities``, in ``MODALITIES`` order); a missing one raises
ValueError naming the key; other keys ("label", ...) are ignored. Softmax over the logits is the caller's
(``spec.output == "softmax"``). Other attributes: ``.spec`` (:class:`ModelSpec`; ``kwargs`` rebuild the
architecture), ``.image_encoder`` (the timm net applied to the image; ``lesion_encoder`` where there is one),
``.gradcam_layer`` (module whose output is the image branch's last spatial feature map) and
``.gradcam_layout`` ("NCHW", "NHWC" or "NLC", see :mod:`dr_ray.models.gradcam`).

Registered builders (common kwargs: ``num_classes=2`` (2 = referable DR, 5 = ICDR grade), ``pretrained=False``,
``input_size=512`` px, ``dropout=0.1``, ``backbone=""`` (model default), ``modalities=None`` (all supported)):

    "resnet50", "efficientnet_b0", "vit_b" (vit_base_patch16_224, input_size % 16 == 0), "swin_t"
        (swin_tiny_patch4_window7_224; ``window_size=7``; input_size 448 default: every Swin stage grid must be
        <= window or a multiple of it, i.e. multiples of 224 for window 7), "timm_classifier" (any timm name as
        the required ``backbone``): :class:`TimmClassifier`, image only.
    "cross_feature_fusion"  :class:`CrossFeatureFusion`, cross-feature-fusion poster (Mok et al.): image tokens
        attend to tokens of the generated lesion maps; both branches any timm backbone (``backbone``,
        ``lesion_backbone``, extra timm kwargs in ``backbone_kwargs`` / ``lesion_backbone_kwargs``), Swin at its
        branch's own input size (window 8 for 512 px), the lesion branch loadable from a Swin U-Net encoder.
    "dcat"  :class:`DualCrossAttention`, DCAT: EfficientNet-B4 and ResNet34 feature maps attend to each other,
        CBAM refinement; :func:`mc_dropout_predict` gives its (and every other classifier's) predictive entropy.
    "graph_fusion"  :class:`GraphFusion`, graph-enhanced vascular fusion paper sec. 3.4-3.10: MobileNetV3 +
        dilated conv + CBAM image embedding (``blocks``: any subset of se / dilated / cbam, Table 6),
        GCN vascular-graph embedding, biomarker vector, transformer fusion
        over [cls; img; graph; stats] tokens (eqs. 26-33).

Fusion kwargs: ``hidden_dim=256`` (token width d), ``heads=4``, ``fusion_layers=2``.

Dropout is always an ``nn.Dropout`` module in front of the linear head (not timm's ``drop_rate``: timm's
ResNet/EfficientNet apply it functionally, following the whole model's train flag, which Monte-Carlo dropout
cannot switch on while BatchNorm stays in eval mode).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import timm
import torch
from timm.data import resolve_data_config
from timm.layers import resize_rel_pos_bias_table
from torch import nn
from torch_geometric.data import Batch

from dr_ray.models.blocks import (
    CBAM,
    CrossAttentionBlock,
    DilatedConvBlock,
    FeatureTokens,
    SqueezeExcite,
    tokens_to_map,
)
from dr_ray.models.gnn import GraphEncoder
from dr_ray.models.registry import ModelSpec, register_model
from dr_ray.models.swin_unet import check_swin_input_size
from dr_ray.models.transfer import EncoderLoadReport, _rename, load_encoder
from dr_ray.models import unet as _unet
from dr_ray.models.unet import create_encoder

logger = logging.getLogger(__name__)

MODALITIES = ("image", "lesion", "graph", "stats")
DEFAULT_LESION_SIZE = 128
DEFAULT_SWIN_T_INPUT_SIZE = 448  # 2 x 224: the smallest window-7-compatible size above ImageNet's (as swin_unet)
_MIN_INPUT_SIZE = 32  # one cell at the stride-32 last level of every backbone used here


# ----------------------------------------------------------------------------------------------- validation

def _check_int(name: str, v: object, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def _check_dropout(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {v!r}")
    return float(v)


def _check_timm_name(name: str, param: str) -> str:
    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        raise ValueError(f"{param} must be a timm model name, got {name!r}"
                         + (f"; did you mean {close}?" if close else "") + " (see timm.list_models())")
    return name


def _check_modalities(modalities: Sequence[str] | None, supported: tuple[str, ...],
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


def _check_fusion(hidden_dim: int, heads: int, fusion_layers: int, *, sincos: bool) -> None:
    _check_int("hidden_dim", hidden_dim)
    _check_int("heads", heads)
    _check_int("fusion_layers", fusion_layers)
    if hidden_dim % heads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by heads ({heads})")
    if sincos and hidden_dim % 4:
        raise ValueError(f"hidden_dim must be divisible by 4 (2-D sine-cosine position codes), got {hidden_dim}")


def _require(batch: Mapping[str, Any], key: str, modalities: tuple[str, ...]) -> Any:
    if not isinstance(batch, Mapping):
        raise ValueError(f"batch must be a dict of modality tensors, got {type(batch).__name__}")
    v = batch.get(key)
    if v is None:
        raise ValueError(f"batch is missing {key!r}: this model uses the modalities {list(modalities)} "
                         f"(batch keys: {sorted(batch)})")
    return v


def _check_tensor(key: str, v: Any, shape: tuple[int | None, ...], what: str) -> torch.Tensor:
    """v must be a floating tensor of ``shape`` (None = any size)."""
    if not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point or v.ndim != len(shape) \
            or any(s is not None and s != d for s, d in zip(shape, v.shape)):
        got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"batch[{key!r}] must be {what} float, got {got}")
    return v


def _batch_size(sizes: dict[str, int]) -> int:
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch entries disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def _image(batch: Mapping[str, Any], modalities: tuple[str, ...], input_size: int) -> torch.Tensor:
    x = _require(batch, "image", modalities)
    return _check_tensor("image", x, (None, 3, input_size, input_size), f"(B, 3, {input_size}, {input_size})")


def _graph(batch: Mapping[str, Any], modalities: tuple[str, ...]) -> Batch:
    g = _require(batch, "graph", modalities)
    if not isinstance(g, Batch):
        raise ValueError(f"batch['graph'] must be a torch_geometric.data.Batch (Batch.from_data_list), "
                         f"got {type(g).__name__}")
    return g


def _spec_mean_std(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = resolve_data_config({}, model=encoder)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def _spec(name: str, model: nn.Module, num_classes: int, input_size: int, kwargs: dict[str, Any]) -> ModelSpec:
    mean, std = _spec_mean_std(model.image_encoder)
    return ModelSpec(name=name, in_channels=3, out_channels=num_classes, input_size=input_size, mean=mean, std=std,
                     output="softmax", kwargs=kwargs)


# ----------------------------------------------------------------------------------------------- timm models

def create_timm_model(name: str, *, pretrained: bool, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=..., **timm_kwargs)`` that fails fast offline.

    :func:`dr_ray.models.unet.create_encoder` forces ``features_only=True``; this is the same weight-host
    probe (``_weights_host`` / ``_reachable``, skipped with ``HF_HUB_OFFLINE=1``) for a full timm model.
    """
    _check_timm_name(name, "backbone")
    if not pretrained:
        return timm.create_model(name, pretrained=False, **timm_kwargs)
    host, source = _unet._weights_host(name)
    if host is None:
        raise RuntimeError(f"timm has no pretrained weights for {name}; set pretrained=False")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        reason = _unet._reachable(host)  # via the module: tests mock it there
        if reason is not None:
            raise _unet._offline_error(name, source, reason)
    try:
        return timm.create_model(name, pretrained=True, **timm_kwargs)
    except (OSError, ConnectionError) as e:  # huggingface_hub's errors are OSError subclasses
        raise _unet._offline_error(name, source, f"{type(e).__name__}: {e}") from e


def _features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
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
    relative-position tables of pretrained weights, and :meth:`CrossFeatureFusion.load_segmentation_encoder`
    those of an exported encoder, to another window).
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


def _feature_encoder(name: str, param: str, *, pretrained: bool, in_chans: int, input_size: int,
                     timm_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """timm ``features_only`` net for a branch seeing (B, in_chans, input_size, input_size) inputs."""
    _check_timm_name(name, param)
    enc = create_encoder(name, pretrained=pretrained, in_chans=in_chans,
                         **branch_timm_kwargs(name, param, input_size, timm_kwargs))
    fmt = getattr(enc, "output_fmt", "NCHW")
    if fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"{param} {name!r} gives {fmt} features; need a CNN/Swin-like feature map")
    if enc.feature_info.reduction()[-1] != 32:
        logger.warning("%s %s has last-level stride %d (expected 32)", param, name, enc.feature_info.reduction()[-1])
    return enc


# ----------------------------------------------------------------------------------------------- baselines

class TimmClassifier(nn.Module):
    """timm image classifier: ``image_encoder`` (timm model, ``num_classes=0`` -> pooled features) ->
    Dropout -> Linear head.

    Args:
        backbone: timm name; models with a fixed input size (ViT, Swin) are built with ``img_size=input_size``.
        num_classes / pretrained / input_size / dropout: as in the module doc.
        window_size: Swin attention window (None: the backbone's own).

    ``gradcam_layer``: the last stage (``feature_info[-1]``; EfficientNet: ``bn2``, the map after ``conv_head``;
    ViT: ``norm1`` of the last block, since with class-token pooling the last block's patch-token outputs do not
    reach the logits); layout NCHW for CNNs, NHWC for Swin, NLC with ``gradcam_prefix_tokens`` class tokens for ViT.
    forward(batch): "image" (B, 3, S, S) -> logits (B, num_classes).
    """

    def __init__(self, backbone: str, *, num_classes: int, pretrained: bool, input_size: int, dropout: float,
                 window_size: int | None = None) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = ("image",)
        self.input_size = input_size
        cfg = timm.models.get_pretrained_cfg(backbone)
        kw: dict[str, Any] = dict(num_classes=0, in_chans=3)
        if cfg is not None and cfg.fixed_input_size:
            kw["img_size"] = input_size
        if window_size is not None:
            kw["window_size"] = window_size
        self.image_encoder = create_timm_model(backbone, pretrained=pretrained, **kw)
        self.drop = nn.Dropout(dropout)
        # pre-logits width: MobileNetV3's conv_head after the pooling widens num_features (576 -> 1024)
        width = getattr(self.image_encoder, "head_hidden_size", None) or self.image_encoder.num_features
        self.head = nn.Linear(int(width), num_classes)
        enc = self.image_encoder
        if isinstance(enc, timm.models.efficientnet.EfficientNet):
            self._gradcam_name = "bn2"
        else:
            self._gradcam_name = str(enc.feature_info[-1]["module"])
        self.gradcam_prefix_tokens = 0
        if getattr(enc, "output_fmt", "NCHW") == "NHWC":
            self.gradcam_layout = "NHWC"
        elif hasattr(enc, "num_prefix_tokens") and hasattr(enc, "patch_embed"):
            self.gradcam_layout = "NLC"
            self.gradcam_prefix_tokens = int(enc.num_prefix_tokens)
            # class-token pooling: after the last block the patch tokens no longer reach the logits (zero
            # gradient, empty map), so hook the last block's first norm, the tokens its attention reads
            last_norm = f"{self._gradcam_name}.norm1"
            if isinstance(getattr(enc.get_submodule(self._gradcam_name), "norm1", None), nn.Module):
                self._gradcam_name = last_norm
        else:
            self.gradcam_layout = "NCHW"

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.image_encoder.get_submodule(self._gradcam_name)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = _image(batch, self.modalities, self.input_size)
        return self.head(self.drop(self.image_encoder(x))).float()  # float32 under autocast too


def _patch_size(backbone: str) -> int | None:
    m = re.search(r"patch(\d+)", backbone)
    return int(m.group(1)) if m else None


def _build_timm_classifier(name: str, *, backbone: str, num_classes: int, pretrained: bool, input_size: int,
                           dropout: float, modalities: Sequence[str] | None,
                           window_size: int | None = None) -> TimmClassifier:
    _check_timm_name(backbone, "backbone")
    _check_int("num_classes", num_classes, 2)
    _check_int("input_size", input_size, _MIN_INPUT_SIZE)
    _check_dropout(dropout)
    mods = _check_modalities(modalities, ("image",))
    cfg = timm.models.get_pretrained_cfg(backbone)
    if backbone.startswith("swin_"):  # Swin v1: window-aligned grids at every stage (see swin_unet)
        named = re.search(r"window(\d+)", backbone)
        win = window_size if window_size is not None else (int(named.group(1)) if named else None)
        if win is not None:
            check_swin_input_size(input_size, win)
    elif cfg is not None and cfg.fixed_input_size and _patch_size(backbone) and input_size % _patch_size(backbone):
        raise ValueError(f"input_size must be a multiple of the patch size {_patch_size(backbone)} of "
                         f"{backbone}, got {input_size}")
    model = TimmClassifier(backbone, num_classes=num_classes, pretrained=pretrained, input_size=input_size,
                           dropout=dropout, window_size=window_size)
    kwargs: dict[str, Any] = dict(backbone=backbone, num_classes=num_classes, input_size=input_size,
                                  dropout=float(dropout), modalities=list(mods))
    if name == "swin_t":
        kwargs["window_size"] = window_size
    model.spec = _spec(name, model, num_classes, input_size, kwargs)
    return model


@register_model("timm_classifier")
def timm_classifier(backbone: str, num_classes: int = 2, pretrained: bool = False, input_size: int = 512,
                    dropout: float = 0.1, modalities: Sequence[str] | None = None) -> TimmClassifier:
    """Any timm classifier (``backbone`` required, e.g. "resnet18", "convnext_tiny") on the image."""
    return _build_timm_classifier("timm_classifier", backbone=backbone, num_classes=num_classes,
                                  pretrained=pretrained, input_size=input_size, dropout=dropout, modalities=modalities)


@register_model("resnet50")
def resnet50(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
             backbone: str = "", modalities: Sequence[str] | None = None) -> TimmClassifier:
    """ResNet-50 baseline (poster Table 1)."""
    return _build_timm_classifier("resnet50", backbone=backbone or "resnet50", num_classes=num_classes,
                                  pretrained=pretrained, input_size=input_size, dropout=dropout, modalities=modalities)


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
                    backbone: str = "", modalities: Sequence[str] | None = None) -> TimmClassifier:
    """EfficientNet-B0 baseline (graph-enhanced vascular fusion paper, Fig. 9)."""
    return _build_timm_classifier("efficientnet_b0", backbone=backbone or "efficientnet_b0", num_classes=num_classes,
                                  pretrained=pretrained, input_size=input_size, dropout=dropout, modalities=modalities)


@register_model("swin_t")
def swin_t(num_classes: int = 2, pretrained: bool = False, input_size: int = DEFAULT_SWIN_T_INPUT_SIZE,
           dropout: float = 0.1, backbone: str = "", modalities: Sequence[str] | None = None,
           window_size: int = 7) -> TimmClassifier:
    """Swin-T baseline (poster Table 1) at ``img_size=input_size``: every stage grid ``input_size / 4·2^s``
    must be <= ``window_size`` or a multiple of it (window 7: multiples of 224; default 448 px, not 512;
    window 8 allows multiples of 256)."""
    return _build_timm_classifier("swin_t", backbone=backbone or "swin_tiny_patch4_window7_224",
                                  num_classes=num_classes, pretrained=pretrained, input_size=input_size,
                                  dropout=dropout, modalities=modalities, window_size=window_size)


@register_model("vit_b")
def vit_b(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
          backbone: str = "", modalities: Sequence[str] | None = None) -> TimmClassifier:
    """ViT-B/16 baseline at ``img_size=input_size`` (a multiple of 16; timm resamples the position table)."""
    return _build_timm_classifier("vit_b", backbone=backbone or "vit_base_patch16_224", num_classes=num_classes,
                                  pretrained=pretrained, input_size=input_size, dropout=dropout, modalities=modalities)


# ----------------------------------------------------------------------------------------------- cross feature fusion

class CrossFeatureFusion(nn.Module):
    """Cross feature fusion of the fundus image and its generated lesion maps (Mok et al. poster, Fig. (b), (c)).

        F_img = image_encoder(X)[last]            (B, C, h, w), timm features_only, stride 32
        X_tok = LN(P_img F_img) + pos             1x1 conv to d, (B, h·w, d) queries; pos: 2-D sine-cosine codes
        F_les = lesion_encoder(Y)[last]           Y = lesion maps (B, K, M, M), K input channels
        Y_tok = LN(P_les F_les) + pos             (B, h'·w', d) keys / values
        X_tok <- CrossAttentionBlock(X_tok, Y_tok)     ``fusion_layers`` times (Y_tok fixed)
        logits = W · Dropout(LayerNorm(mean_tokens(X_tok))) + b

    With ``modalities=("image",)`` (the poster's Table 2 rows without fusion) the lesion encoder and the
    cross-attention blocks are not built: image encoder + projection + pooled head.

    ``gradcam_layer`` is ``image_tokens.proj`` (NCHW): Grad-CAM on a 1x1 convolution of the last encoder stage equals
    Grad-CAM on that stage up to the constant the conv bias adds before the ReLU.
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 lesion_backbone: str, lesion_kinds: int, lesion_size: int, hidden_dim: int, heads: int,
                 fusion_layers: int, modalities: tuple[str, ...], backbone_kwargs: Mapping[str, Any] | None = None,
                 lesion_backbone_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.modalities = modalities
        self.input_size, self.lesion_kinds, self.lesion_size = input_size, lesion_kinds, lesion_size
        self.gradcam_layout = "NCHW"
        self.image_encoder = _feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                              input_size=input_size, timm_kwargs=backbone_kwargs)
        self.image_tokens = FeatureTokens(self.image_encoder.feature_info.channels()[-1], hidden_dim)
        if "lesion" in modalities:
            self.lesion_encoder: nn.Module | None = _feature_encoder(
                lesion_backbone, "lesion_backbone", pretrained=pretrained, in_chans=lesion_kinds,
                input_size=lesion_size, timm_kwargs=lesion_backbone_kwargs)
            self.lesion_tokens: nn.Module | None = FeatureTokens(self.lesion_encoder.feature_info.channels()[-1],
                                                                 hidden_dim)
            self.fusion = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        else:
            self.lesion_encoder = self.lesion_tokens = None
            self.fusion = nn.ModuleList()
        self.norm = nn.LayerNorm(hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.image_tokens.proj

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = _image(batch, self.modalities, self.input_size)
        q = self.image_tokens(_features(self.image_encoder, x))
        if self.lesion_encoder is not None:
            k, m = self.lesion_kinds, self.lesion_size
            y = _check_tensor("lesion", _require(batch, "lesion", self.modalities), (None, k, m, m),
                              f"(B, {k}, {m}, {m}) (lesion_kinds, lesion_size)")
            _batch_size({"image": x.shape[0], "lesion": y.shape[0]})
            kv = self.lesion_tokens(_features(self.lesion_encoder, y))
            for block in self.fusion:
                q = block(q, kv)
        return self.head(self.drop(self.norm(q.mean(dim=1)))).float()

    def load_segmentation_encoder(self, state: Mapping[str, torch.Tensor], branch: str) -> EncoderLoadReport:
        """Load an exported lesion-segmentation encoder into the "image" or the "lesion" branch.

        ``state``: a timm ``features_only`` state dict of an RGB encoder, as written by
        :func:`dr_ray.models.transfer.save_encoder` (read with ``load_encoder_file``), e.g. the encoder of
        ``create_model("lesion_unet", encoder="resnet34")``; it must be the same architecture as the branch
        (strict: every tensor of the branch filled, every state tensor used), else ValueError.

        Both branches are supported because the sources disagree: the poster's Table 2 row "transfer
        learning, no cross feature fusion" has no lesion branch, so its transfer goes into the image branch;
        the project brief transfers into the lesion branch. For the lesion branch (K = ``lesion_kinds`` input
        channels, not 3) every 3-channel input convolution is adapted with ``timm.models.adapt_input_conv(K, w)``
        (K = 1: RGB filters summed; otherwise repeated over the K channels and rescaled by 3 / K) before loading.
        The segmentation encoder saw normalised RGB fundus images, the lesion branch sees probability maps in
        [0, 1]: the adapted stem is a warm start, not an equivalent network.

        A Swin encoder trained with another attention window (e.g. a window-7 Swin U-Net into a window-8
        branch at 512 px) has its relative-position bias tables resampled to the branch's window with
        ``timm.layers.resize_rel_pos_bias_table`` (what timm does to ImageNet weights; logged as a warning);
        every other tensor must match in shape.

        Returns the :class:`~dr_ray.models.transfer.EncoderLoadReport`.
        """
        if branch not in ("image", "lesion"):
            raise ValueError(f"branch must be 'image' or 'lesion', got {branch!r}")
        target = self.image_encoder if branch == "image" else self.lesion_encoder
        if target is None:
            raise ValueError(f"branch 'lesion' needs the lesion modality; this model has modalities "
                             f"{list(self.modalities)}")
        if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("state must be a non-empty dict of tensors (from load_encoder_file)")
        if branch == "lesion" and self.lesion_kinds != 3:
            state = _adapt_input_convs(state, target, self.lesion_kinds)
        state = _fit_rel_pos_tables(state, target)
        report = load_encoder(target, state, strict=True)
        logger.info("loaded a %d-tensor segmentation encoder into the %s branch", len(state), branch)
        return report


def _adapt_input_convs(state: Mapping[str, torch.Tensor], target: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    """``state`` (keyed as ``target``) with each 3-input-channel conv weight whose target has ``in_chans`` input
    channels (the stem) replaced by ``timm.models.adapt_input_conv(in_chans, w)``."""
    own = target.state_dict()
    renamed, _ = _rename(state, set(own))
    out = dict(renamed)
    adapted = []
    for key, w in renamed.items():
        t = own.get(key)
        if t is not None and w.ndim == 4 and t.ndim == 4 and w.shape[1] == 3 and t.shape[1] == in_chans \
                and w.shape[0] == t.shape[0] and w.shape[2:] == t.shape[2:]:
            out[key] = timm.models.adapt_input_conv(in_chans, w)
            adapted.append(key)
    if not adapted:
        raise ValueError(f"state has no 3-channel input convolution matching the lesion encoder's {in_chans}-channel "
                         f"stem (different architecture?)")
    logger.info("adapted %s from 3 to %d input channels", adapted, in_chans)
    return out


def _fit_rel_pos_tables(state: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (keyed as ``target``) with each Swin ``relative_position_bias_table`` whose shape differs from the
    target's resampled to the target attention's window (``timm.layers.resize_rel_pos_bias_table``)."""
    own = target.state_dict()
    renamed, _ = _rename(state, set(own))
    out, resized = dict(renamed), []
    for key, v in renamed.items():
        t = own.get(key)
        if key.endswith("relative_position_bias_table") and t is not None and t.shape != v.shape \
                and v.ndim == 2 and t.ndim == 2 and v.shape[1] == t.shape[1]:
            window = tuple(target.get_submodule(key.rsplit(".", 1)[0]).window_size)
            out[key] = resize_rel_pos_bias_table(v, new_window_size=window, new_bias_shape=tuple(t.shape))
            resized.append(f"{key} {tuple(v.shape)}->{tuple(t.shape)}")
    if resized:
        logger.warning("resampled %d Swin relative-position tables to the branch's window: %s", len(resized),
                       resized[:2])
    return out


@register_model("cross_feature_fusion")
def cross_feature_fusion(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
                         backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256,
                         heads: int = 4, fusion_layers: int = 2, lesion_backbone: str = "",
                         lesion_kinds: int = 4, lesion_size: int = DEFAULT_LESION_SIZE,
                         backbone_kwargs: Mapping[str, Any] | None = None,
                         lesion_backbone_kwargs: Mapping[str, Any] | None = None) -> CrossFeatureFusion:
    """:class:`CrossFeatureFusion`: image encoder ``backbone`` (default "resnet34") queries, lesion-map encoder
    ``lesion_backbone`` (default "resnet34"; the poster's is the Swin U-Net encoder, e.g.
    "swin_tiny_patch4_window7_224" with ``lesion_backbone_kwargs={"window_size": 8}`` at 512 px) on
    ``lesion_kinds`` maps of ``lesion_size`` px keys/values; modalities ("image", "lesion") or ("image",).
    ``backbone_kwargs`` / ``lesion_backbone_kwargs``: extra timm kwargs of each branch (:func:`branch_timm_kwargs`;
    Swin branches are built for their own input size, ``input_size`` / ``lesion_size``)."""
    backbone = _check_timm_name(backbone or "resnet34", "backbone")
    lesion_backbone = _check_timm_name(lesion_backbone or "resnet34", "lesion_backbone")
    _check_int("num_classes", num_classes, 2)
    _check_int("input_size", input_size, _MIN_INPUT_SIZE)
    _check_int("lesion_kinds", lesion_kinds)
    _check_int("lesion_size", lesion_size, _MIN_INPUT_SIZE)
    _check_dropout(dropout)
    _check_fusion(hidden_dim, heads, fusion_layers, sincos=True)
    mods = _check_modalities(modalities, ("image", "lesion"), required=("image",))
    # validated (and Swin sizes checked) before any weights are built
    branch_timm_kwargs(backbone, "backbone", input_size, backbone_kwargs)
    if "lesion" in mods:
        branch_timm_kwargs(lesion_backbone, "lesion_backbone", lesion_size, lesion_backbone_kwargs)
    model = CrossFeatureFusion(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                               backbone=backbone, lesion_backbone=lesion_backbone, lesion_kinds=lesion_kinds,
                               lesion_size=lesion_size, hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers, modalities=mods, backbone_kwargs=backbone_kwargs,
                               lesion_backbone_kwargs=lesion_backbone_kwargs)
    model.spec = _spec("cross_feature_fusion", model, num_classes, input_size, dict(
        num_classes=num_classes, input_size=input_size, dropout=float(dropout), backbone=backbone,
        modalities=list(mods), hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers,
        lesion_backbone=lesion_backbone, lesion_kinds=lesion_kinds, lesion_size=lesion_size,
        backbone_kwargs=dict(backbone_kwargs or {}), lesion_backbone_kwargs=dict(lesion_backbone_kwargs or {})))
    return model


# ----------------------------------------------------------------------------------------------- DCAT

class DualCrossAttention(nn.Module):
    """DCAT: dual (bidirectional) cross-attention fusion of two CNN backbones with CBAM refinement.

        A = P_a enc_a(X)[last], B = P_b enc_b(X)[last]     1x1 convs to d; both pooled (adaptive average) to the
                                                          smaller grid; per-token LayerNorm + 2-D sine-cosine codes
        A', B' = CA(A <- B), CA(B <- A)                    ``fusion_layers`` times, both from the previous A, B
        r_a, r_b = GAP(CBAM_a(A')), GAP(CBAM_b(B'))        channel + spatial attention per branch
        logits = W · Dropout([r_a ; r_b]) + b

    ``image_encoder`` is the first backbone (default EfficientNet-B4), ``image_encoder2`` the second (ResNet34).
    The image is normalised with the first backbone's mean/std (a warning is logged when the second one's
    differs). ``gradcam_layer`` = ``cbam_a`` (NCHW). Uncertainty: :func:`mc_dropout_predict`.
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 backbone2: str, hidden_dim: int, heads: int, fusion_layers: int) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = ("image",)
        self.input_size = input_size
        self.gradcam_layout = "NCHW"
        self.image_encoder = _feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                              input_size=input_size)
        self.image_encoder2 = _feature_encoder(backbone2, "backbone2", pretrained=pretrained, in_chans=3,
                                               input_size=input_size)
        if _spec_mean_std(self.image_encoder) != _spec_mean_std(self.image_encoder2):
            logger.warning("dcat: %s and %s expect different normalisation; using %s's %s", backbone, backbone2,
                           backbone, _spec_mean_std(self.image_encoder))
        self.tokens_a = FeatureTokens(self.image_encoder.feature_info.channels()[-1], hidden_dim)
        self.tokens_b = FeatureTokens(self.image_encoder2.feature_info.channels()[-1], hidden_dim)
        self.cross_ab = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        self.cross_ba = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        self.cbam_a = CBAM(hidden_dim)
        self.cbam_b = CBAM(hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_dim, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.cbam_a

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = _image(batch, self.modalities, self.input_size)
        fa, fb = _features(self.image_encoder, x), _features(self.image_encoder2, x)
        h, w = min(fa.shape[2], fb.shape[2]), min(fa.shape[3], fb.shape[3])  # the smaller grid
        ta, tb = self.tokens_a(fa, (h, w)), self.tokens_b(fb, (h, w))
        for ab, ba in zip(self.cross_ab, self.cross_ba):
            ta, tb = ab(ta, tb), ba(tb, ta)
        ra = self.cbam_a(tokens_to_map(ta, h, w)).mean(dim=(2, 3))
        rb = self.cbam_b(tokens_to_map(tb, h, w)).mean(dim=(2, 3))
        return self.head(self.drop(torch.cat([ra, rb], dim=1))).float()


@register_model("dcat")
def dcat(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
         backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256, heads: int = 4,
         fusion_layers: int = 2, backbone2: str = "resnet34") -> DualCrossAttention:
    """:class:`DualCrossAttention` over ``backbone`` (default "efficientnet_b4") and ``backbone2``; image only."""
    backbone = _check_timm_name(backbone or "efficientnet_b4", "backbone")
    _check_timm_name(backbone2, "backbone2")
    _check_int("num_classes", num_classes, 2)
    _check_int("input_size", input_size, _MIN_INPUT_SIZE)
    _check_dropout(dropout)
    _check_fusion(hidden_dim, heads, fusion_layers, sincos=True)
    mods = _check_modalities(modalities, ("image",))
    model = DualCrossAttention(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                               backbone=backbone, backbone2=backbone2, hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers)
    model.spec = _spec("dcat", model, num_classes, input_size, dict(
        num_classes=num_classes, input_size=input_size, dropout=float(dropout), backbone=backbone,
        modalities=list(mods), hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers, backbone2=backbone2))
    return model


# ----------------------------------------------------------------------------------------------- graph fusion

GRAPH_FUSION_BLOCKS = ("se", "dilated", "cbam")  # GraphFusion's image enhancement blocks, in application order


def check_graph_fusion_blocks(blocks: Sequence[str]) -> tuple[str, ...]:
    """``blocks`` as a tuple in ``GRAPH_FUSION_BLOCKS`` order; ValueError for unknown or repeated names."""
    if isinstance(blocks, str) or not isinstance(blocks, Sequence):
        raise ValueError(f"blocks must be a list of names from {GRAPH_FUSION_BLOCKS} (any subset), got {blocks!r}")
    bad = [b for b in blocks if b not in GRAPH_FUSION_BLOCKS]
    if bad or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks must be distinct names from {GRAPH_FUSION_BLOCKS}, got {list(blocks)}"
                         + (f" (unknown: {bad})" if bad else ""))
    return tuple(b for b in GRAPH_FUSION_BLOCKS if b in blocks)


class GraphFusion(nn.Module):
    """Graph-enhanced vascular fusion (paper sec. 3.4-3.10).

    Image (sec. 3.4): MobileNetV3 features_only last level -> 1x1 conv-BN-ReLU to d (keeps the dilated block at
        d x d instead of 960 x d weights) -> the enhancement blocks of ``blocks``, in this order:
        "se"      SqueezeExcite (eqs. 6-8) on the d-channel map: the paper's SE augmentation (sec. 3.3, 4.4
                  "MobileNetV3 without SE augmentation"); MobileNetV3's own inverted-residual SE layers are
                  part of the backbone and stay in every configuration;
        "dilated" DilatedConvBlock (eq. 5, dilations 1, 2, 3; sec. 3.4.1);
        "cbam"    CBAM (channel + spatial attention);
        -> global average pool = z_img (d). ``blocks=()`` is Table 6's "MobileNetV3 baseline"; any subset is one
        of its ablation rows (a block not in ``blocks`` is not built: no parameters).
    Graph (sec. 3.8): GraphEncoder (BatchNorm, ``gnn_layers`` GCN layers eq. 27, attention pooling ρ) -> ρ(h) (d).
    Stats: s (``stats_dim``), eq. (28).
        z_G = ρ(h) ∥ s with stats on (eq. 28 and the text after it), else ρ(h)
        t_img = P_img z_img, t_G = P_G z_G, t_stat = P_stat s                    eq. (29)
        T0 = [t_cls; t_img; t_G; t_stat] + E_type                               eq. (30), one learned type
                                                                                embedding per token
        T_B = TransformerEncoder(T0) (pre-norm MHSA + FFN, ``fusion_layers``)   eq. (31)
        t_fused = T_B[0] (the cls token)                                        eq. (32)
        logits = W_c Dropout(t_fused) + b_c                                     eq. (33), softmax by callers

    Any non-empty subset of ("image", "graph", "stats") works: absent modalities have no branch and no token.
    ``gradcam_layer`` = the last image block built (``cbam``, ``dilated``, ``se`` or ``reduce``; NCHW); None
    without the image modality. Edge attributes are not used (eq. 27).
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 hidden_dim: int, heads: int, fusion_layers: int, node_features: int, gnn_layers: int,
                 stats_dim: int, modalities: tuple[str, ...],
                 blocks: tuple[str, ...] = GRAPH_FUSION_BLOCKS) -> None:
        super().__init__()
        d = hidden_dim
        self.modalities = modalities
        self.input_size, self.node_features, self.stats_dim = input_size, node_features, stats_dim
        self.gradcam_layout = "NCHW"
        self.blocks = blocks
        self.image_encoder: nn.Module | None = None
        self.se: nn.Module | None = None
        self.dilated: nn.Module | None = None
        self.cbam: nn.Module | None = None
        if "image" in modalities:
            self.image_encoder = _feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                                  input_size=input_size)
            c = self.image_encoder.feature_info.channels()[-1]
            self.reduce = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
            if "se" in blocks:
                self.se = SqueezeExcite(d)
            if "dilated" in blocks:
                self.dilated = DilatedConvBlock(d, d, dilations=(1, 2, 3))
            if "cbam" in blocks:
                self.cbam = CBAM(d)
            self.proj_img = nn.Linear(d, d)
        self.gnn: GraphEncoder | None = None
        if "graph" in modalities:
            self.gnn = GraphEncoder(node_features, d, gnn_layers, dropout)
            self.proj_graph = nn.Linear(d + (stats_dim if "stats" in modalities else 0), d)
        if "stats" in modalities:
            self.proj_stats = nn.Linear(stats_dim, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.type_embed = nn.Parameter(torch.zeros(1, 1 + len(modalities), d))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, fusion_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module | None:
        if self.image_encoder is None:
            return None
        return next(m for m in (self.cbam, self.dilated, self.se, self.reduce) if m is not None)

    def image_map(self, x: torch.Tensor) -> torch.Tensor:
        """The enhanced image feature map (B, d, h, w): backbone -> reduce -> the ``blocks`` (se, dilated, cbam)."""
        m = self.reduce(_features(self.image_encoder, x))
        for block in (self.se, self.dilated, self.cbam):
            if block is not None:
                m = block(m)
        return m

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        tokens: list[torch.Tensor] = []
        sizes: dict[str, int] = {}
        s = None
        if "stats" in self.modalities:
            s = _check_tensor("stats", _require(batch, "stats", self.modalities), (None, self.stats_dim),
                              f"(B, {self.stats_dim}) (stats_dim)")
            sizes["stats"] = s.shape[0]
        if self.image_encoder is not None:
            x = _image(batch, self.modalities, self.input_size)
            sizes["image"] = x.shape[0]
            tokens.append(self.proj_img(self.image_map(x).mean(dim=(2, 3))))  # t_img, eq. (29)
        if self.gnn is not None:
            g = _graph(batch, self.modalities)
            sizes["graph"] = int(g.num_graphs)
            _batch_size(sizes)
            z_g = self.gnn(g)  # ρ(h), eq. (28)
            if s is not None:
                z_g = torch.cat([z_g, s.to(z_g.dtype)], dim=1)  # z_G = ρ(h) ∥ s
            tokens.append(self.proj_graph(z_g))  # t_G, eq. (29)
        if s is not None:
            tokens.append(self.proj_stats(s))  # t_stat, eq. (29)
        b = _batch_size(sizes)
        t0 = torch.cat([self.cls_token.expand(b, -1, -1), torch.stack(tokens, dim=1)], dim=1) + self.type_embed
        return self.head(self.drop(self.fusion(t0)[:, 0])).float()  # eqs. (30)-(33)


@register_model("graph_fusion")
def graph_fusion(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
                 backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256, heads: int = 4,
                 fusion_layers: int = 2, node_features: int = 6, gnn_layers: int = 3,
                 stats_dim: int = 8, blocks: Sequence[str] = GRAPH_FUSION_BLOCKS) -> GraphFusion:
    """:class:`GraphFusion`: image backbone (default "mobilenetv3_large_100"), GCN over ``node_features`` node
    columns with ``gnn_layers`` layers, ``stats_dim`` biomarkers; modalities any non-empty subset of
    ("image", "graph", "stats"); ``blocks`` any subset of ``GRAPH_FUSION_BLOCKS`` ("se", "dilated", "cbam";
    paper Table 6 ablations; default all three, the full model)."""
    blocks = check_graph_fusion_blocks(blocks)
    backbone = _check_timm_name(backbone or "mobilenetv3_large_100", "backbone")
    _check_int("num_classes", num_classes, 2)
    _check_int("input_size", input_size, _MIN_INPUT_SIZE)
    _check_int("node_features", node_features)
    _check_int("gnn_layers", gnn_layers)
    _check_int("stats_dim", stats_dim)
    _check_dropout(dropout)
    _check_fusion(hidden_dim, heads, fusion_layers, sincos=False)
    mods = _check_modalities(modalities, ("image", "graph", "stats"))
    model = GraphFusion(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                        backbone=backbone, hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers,
                        node_features=node_features, gnn_layers=gnn_layers, stats_dim=stats_dim, modalities=mods,
                        blocks=blocks)
    if model.image_encoder is not None:
        mean, std = _spec_mean_std(model.image_encoder)
    else:  # no image branch: the backbone's default normalisation still goes into the spec (callers may load images)
        cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(backbone).to_dict())
        mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    model.spec = ModelSpec(name="graph_fusion", in_channels=3, out_channels=num_classes, input_size=input_size,
                           mean=mean, std=std, output="softmax", kwargs=dict(
                               num_classes=num_classes, input_size=input_size, dropout=float(dropout),
                               backbone=backbone, modalities=list(mods), hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers, node_features=node_features, gnn_layers=gnn_layers,
                               stats_dim=stats_dim, blocks=list(blocks)))
    return model


# ----------------------------------------------------------------------------------------------- MC dropout

# Modules whose train flag only switches dropout: their own attention dropout, and for the transformer layers
# the inference fast path, which skips the (train-mode) dropout submodules altogether.
_DROPOUT_GATED = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def mc_dropout_predict(model: nn.Module, batch: Mapping[str, Any], samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo dropout (Gal & Ghahramani 2016): mean softmax over ``samples`` stochastic passes.

    Dropout modules (``nn.Dropout*``, and ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` whose
    flag gates attention dropout and the dropout-free fast path) run in train mode; everything else, BatchNorm
    above all, in eval mode. Passes run under ``torch.no_grad``; every module's train flag is restored after.

    Returns ``(mean_probs (B, C) float32, entropy (B,) float32 in nats)``, entropy = -sum_c p_c log p_c of the
    mean probabilities (predictive entropy, in [0, log C]). Raises ValueError when ``samples < 1`` or the model
    has no dropout with p > 0 (every pass would be identical).
    """
    _check_int("samples", samples)
    modes = {m: m.training for m in model.modules()}
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout with p > 0; MC dropout needs one")
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, (nn.modules.dropout._DropoutNd, *_DROPOUT_GATED)):
                m.training = True
        with torch.no_grad():
            probs = torch.stack([torch.softmax(model(batch).float(), dim=1) for _ in range(samples)]).mean(dim=0)
    finally:
        for m, mode in modes.items():
            m.training = mode
    entropy = torch.special.entr(probs).sum(dim=1)
    return probs.cpu().numpy().astype(np.float32), entropy.cpu().numpy().astype(np.float32)


__all__ = ["GRAPH_FUSION_BLOCKS", "MODALITIES", "CrossFeatureFusion", "DualCrossAttention", "GraphFusion", "TimmClassifier",
           "branch_timm_kwargs", "check_graph_fusion_blocks", "create_timm_model", "cross_feature_fusion", "dcat", "efficientnet_b0", "graph_fusion",
           "mc_dropout_predict", "resnet50", "swin_t", "timm_classifier", "vit_b"]
