"""Image-only timm baselines: :class:`TimmClassifier` and the registered "timm_classifier", "resnet50",
"efficientnet_b0", "swin_t" and "vit_b" (see :mod:`dr_ray.models.classifiers`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from dr_ray.models.classifiers._common import (
    DEFAULT_SWIN_T_INPUT_SIZE,
    MIN_INPUT_SIZE,
    batch_image,
    check_dropout,
    check_int,
    check_modalities,
    check_timm_name,
    classifier_spec,
    create_timm_model,
)
from dr_ray.models.registry import register_model
from dr_ray.models.swin_unet import check_swin_input_size


class TimmClassifier(nn.Module):
    """timm image classifier: ``image_encoder`` (timm model, ``num_classes=0`` -> pooled features) ->
    Dropout -> Linear head.

    Args:
        backbone: timm name; models with a fixed input size (ViT, Swin) are built with ``img_size=input_size``.
        num_classes / pretrained / input_size / dropout: as in the package doc (:mod:`dr_ray.models.classifiers`).
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
        x = batch_image(batch, self.modalities, self.input_size)
        return self.head(self.drop(self.image_encoder(x))).float()  # float32 under autocast too


def _patch_size(backbone: str) -> int | None:
    m = re.search(r"patch(\d+)", backbone)
    return int(m.group(1)) if m else None


def _build_timm_classifier(name: str, *, backbone: str, num_classes: int, pretrained: bool, input_size: int,
                           dropout: float, modalities: Sequence[str] | None,
                           window_size: int | None = None) -> TimmClassifier:
    check_timm_name(backbone, "backbone")
    check_int("num_classes", num_classes, 2)
    check_int("input_size", input_size, MIN_INPUT_SIZE)
    check_dropout(dropout)
    mods = check_modalities(modalities, ("image",))
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
    model.spec = classifier_spec(name, model, num_classes, input_size, kwargs)
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
