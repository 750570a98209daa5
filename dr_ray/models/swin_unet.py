"""Multi-label lesion segmentation: Swin-T U-Net (the poster's segmentation model) and a CNN U-Net.

Registered builders (both: one sigmoid channel per lesion kind, ``lesion_kinds`` in ``spec.kwargs``
names the channels, in :data:`dr_ray.io.columns.LESION_KINDS` order):
    "swin_unet"    :class:`SwinUNet`, timm Swin encoder (default ``swin_tiny_patch4_window7_224``) at a fixed
                   input size + U-shaped conv decoder with skips at strides 4, 8, 16, 32 (and a shallow conv
                   stem at strides 1, 2 so that 1-3 px microaneurysms are not lost below the stride-4 patch grid).
    "lesion_unet"  :class:`~dr_ray.models.unet.TimmUNet` with a resnet34 encoder (any timm encoder works).

Swin input size: timm's Swin is built for one ``img_size`` and refuses any other input size. Each
stage ``s`` (s = 0..3) sees a ``input_size / 2**(s+2)`` token grid; timm shrinks the attention window
to the grid when the grid is smaller than the window and otherwise zero-pads the grid up to a multiple of
the window, which lets padding tokens take part in unmasked attention. :func:`check_swin_input_size`
therefore requires ``input_size % 32 == 0`` and every stage grid either ``<= window_size`` or divisible
by it: with the ImageNet window 7 that means multiples of 224 (224, 448, 672, ...); window 8 allows
multiples of 256 (256, 512, ...; timm interpolates the pretrained relative-position tables).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from dr_ray.io.columns import LESION_KINDS
from dr_ray.models.registry import ModelSpec, jsonable, register_model
from dr_ray.models.unet import (
    DEFAULT_DECODER_CHANNELS,
    ConvBNReLU,
    DecoderBlock,
    TimmUNet,
    create_encoder,
    spec_stats,
)

logger = logging.getLogger(__name__)

DEFAULT_LESION_KINDS = ("ma", "he", "ex", "se")  # the four kinds IDRiD and FGADR both annotate
SWIN_ENCODER = "swin_tiny_patch4_window7_224"
SWIN_STRIDES = (4, 8, 16, 32)
DEFAULT_SWIN_INPUT_SIZE = 448  # 2 x 224: the smallest window-7-compatible size above ImageNet's
DEFAULT_STEM_CHANNELS = (16, 32)  # conv stem skips at strides 1 and 2
HEAD_PRIOR = 0.01  # initial lesion probability per pixel (lesions cover ~0.01-1 % of a fundus)


def check_lesion_kinds(lesion_kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate ``lesion_kinds``: 1-6 distinct kinds from LESION_KINDS, in LESION_KINDS (channel) order."""
    if isinstance(lesion_kinds, str) or not isinstance(lesion_kinds, Sequence):
        raise ValueError(f"lesion_kinds must be a sequence of kinds from {LESION_KINDS}, got {lesion_kinds!r}")
    kinds = tuple(lesion_kinds)
    unknown = [k for k in kinds if k not in LESION_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"lesion_kinds must be 1-{len(LESION_KINDS)} distinct kinds from {LESION_KINDS}, "
                         f"got {lesion_kinds!r}" + (f" (unknown: {unknown})" if unknown else ""))
    ordered = tuple(k for k in LESION_KINDS if k in kinds)
    if kinds != ordered:
        raise ValueError(f"lesion_kinds must follow the channel order of LESION_KINDS {LESION_KINDS}: "
                         f"use {list(ordered)}, got {list(kinds)}")
    return kinds


def check_swin_input_size(input_size: int, window_size: int) -> None:
    """Raise ValueError unless ``input_size`` (px) gives window-aligned grids at every Swin stage (module doc)."""
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0 or input_size % 32:
        raise ValueError(f"input_size must be a positive int divisible by 32 (px), got {input_size!r}")
    grids = [input_size // s for s in SWIN_STRIDES]
    bad = [g for g in grids if g > window_size and g % window_size]
    if bad:
        ok = [s for s in range(32, 4 * input_size + 1, 32)
              if all(g <= window_size or g % window_size == 0 for g in (s // r for r in SWIN_STRIDES))][:4]
        raise ValueError(f"input_size {input_size} gives Swin token grids {grids} (strides {SWIN_STRIDES}); "
                         f"grids {bad} are larger than window_size {window_size} but not multiples of it "
                         f"(timm would zero-pad them). Use e.g. input_size in {ok} or another window_size")


def _create_swin_encoder(encoder: str, *, pretrained: bool, in_chans: int, img_size: int,
                         window_size: int, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(encoder, features_only=True, img_size=..., window_size=...)``.

    Checks the name is a Swin, then :func:`dr_ray.models.unet.create_encoder` (fast offline failure).
    """
    if not isinstance(encoder, str) or not encoder.startswith("swin") or not timm.is_model(encoder):
        raise ValueError(f"encoder must be a timm Swin (v1) model name such as {SWIN_ENCODER!r}, got {encoder!r} "
                         f"(timm.list_models('swin*'))")
    return create_encoder(encoder, pretrained=pretrained, in_chans=in_chans, img_size=img_size,
                          window_size=window_size, **timm_kwargs)


class SwinUNet(nn.Module):
    """Swin encoder (timm ``features_only``) + U-Net conv decoder + 1x1 head; logits per class.

    Args:
        encoder: timm Swin v1 name (4 stages at strides 4, 8, 16, 32).
        in_chans: input channels.
        classes: output channels (logits; sigmoid per channel for multi-label lesions).
        input_size: px, the one square size the encoder accepts (see :func:`check_swin_input_size`).
        window_size: Swin attention window (7 for the ImageNet checkpoints).
        pretrained: load the encoder's ImageNet weights through timm.
        decoder_channels: 5 entries, the x2 upsampling steps from stride 32 down to stride 1.
        stem_channels: () or 2 entries, channels of a conv stem on the image giving skips at strides 1 and 2
            (the Swin patch embedding has nothing finer than stride 4).
        encoder_kwargs: further ``timm.create_model`` kwargs of the Swin (e.g. ``depths``, ``embed_dim``,
            ``num_heads`` for a lighter variant; JSON-serialisable). Pretrained weights need the defaults.

    Attributes ``encoder`` (the timm feature net, the part :mod:`dr_ray.models.transfer` exports),
    ``encoder_name`` and ``encoder_kwargs`` (the timm kwargs besides ``features_only``/``pretrained``).

    forward: ``x: (N, in_chans, input_size, input_size)`` float -> logits ``(N, classes, input_size, input_size)``.
    """

    def __init__(self, encoder: str = SWIN_ENCODER, in_chans: int = 3, classes: int = len(DEFAULT_LESION_KINDS),
                 input_size: int = DEFAULT_SWIN_INPUT_SIZE, window_size: int = 7, pretrained: bool = False,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                 stem_channels: Sequence[int] = DEFAULT_STEM_CHANNELS,
                 encoder_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for pname, v in (("in_chans", in_chans), ("classes", classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{pname} must be a positive int, got {v!r}")
        check_swin_input_size(input_size, window_size)
        decoder_channels = tuple(int(c) for c in decoder_channels)
        stem_channels = tuple(int(c) for c in stem_channels)
        if len(decoder_channels) != 5 or any(c < 1 for c in decoder_channels):
            raise ValueError(f"decoder_channels needs 5 positive entries (strides 16, 8, 4, 2, 1), "
                             f"got {decoder_channels!r}")
        if len(stem_channels) not in (0, 2) or any(c < 1 for c in stem_channels):
            raise ValueError(f"stem_channels must be () or 2 positive entries (strides 1, 2), got {stem_channels!r}")
        self.encoder_name = encoder
        extra = dict(encoder_kwargs or {})
        try:
            json.dumps(extra)
        except TypeError as e:
            raise ValueError(f"encoder_kwargs must be JSON-serialisable (they go into the spec), got {extra!r}") from e
        reserved = sorted(set(extra) & {"features_only", "pretrained", "in_chans", "img_size", "window_size",
                                        "out_indices", "num_classes"})
        if reserved:
            raise ValueError(f"encoder_kwargs must not set {reserved} (use the SwinUNet arguments)")
        self.encoder_kwargs = dict(in_chans=in_chans, img_size=input_size, window_size=window_size, **extra)
        self.encoder = _create_swin_encoder(encoder, pretrained=pretrained, **self.encoder_kwargs)
        chans = list(self.encoder.feature_info.channels())
        reds = tuple(self.encoder.feature_info.reduction())
        if reds != SWIN_STRIDES:
            raise ValueError(f"encoder {encoder!r} has feature strides {reds}, expected {SWIN_STRIDES}")
        self.input_size = input_size
        # Swin stages end without a norm (the full model has one norm after the last stage only)
        self.feature_norms = nn.ModuleList(nn.LayerNorm(c) for c in chans)
        if stem_channels:
            self.stem = nn.ModuleList([ConvBNReLU(in_chans, stem_channels[0]),
                                       nn.Sequential(nn.MaxPool2d(2), ConvBNReLU(stem_channels[0], stem_channels[1]))])
        else:
            self.stem = nn.ModuleList()
        skip = {16: chans[2], 8: chans[1], 4: chans[0]}
        if stem_channels:
            skip.update({2: stem_channels[1], 1: stem_channels[0]})
        blocks, cin = [], chans[3]
        for r, cout in zip((16, 8, 4, 2, 1), decoder_channels):
            blocks.append(DecoderBlock(cin, skip.get(r, 0), cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, classes, kernel_size=1)
        init_head_prior(self.head)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, NCHW, at strides 4, 8, 16, 32 (before the decoder's LayerNorms)."""
        # timm >= 0.9 Swin feature nets return NHWC (feature_info output_fmt "NHWC")
        return [f.permute(0, 3, 1, 2) for f in self.encoder(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"input size {x.shape[-2]}x{x.shape[-1]} differs from the model's input_size "
                             f"{self.input_size}x{self.input_size} (Swin is built for one size); resize first")
        feats = [norm(f).permute(0, 3, 1, 2) for norm, f in zip(self.feature_norms, self.encoder(x))]
        by_stride = dict(zip(SWIN_STRIDES, feats))
        if len(self.stem):
            s1 = self.stem[0](x)
            by_stride.update({1: s1, 2: self.stem[1](s1)})
        y = feats[-1]
        for block, r in zip(self.decoder, (16, 8, 4, 2, 1)):
            y = block(y, by_stride.get(r))
        return self.head(y)


@register_model("swin_unet")
def swin_unet(lesion_kinds: Sequence[str] = DEFAULT_LESION_KINDS, encoder: str = SWIN_ENCODER, in_chans: int = 3,
              input_size: int = DEFAULT_SWIN_INPUT_SIZE, window_size: int = 7, pretrained: bool = False,
              decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
              stem_channels: Sequence[int] = DEFAULT_STEM_CHANNELS,
              encoder_kwargs: Mapping[str, Any] | None = None) -> SwinUNet:
    """Lesion Swin U-Net: one sigmoid channel per entry of ``lesion_kinds`` (LESION_KINDS order),
    Swin-T at ``input_size`` px (448 default: window 7 needs multiples of 224; see the module doc)."""
    kinds = check_lesion_kinds(lesion_kinds)
    model = SwinUNet(encoder=encoder, in_chans=in_chans, classes=len(kinds), input_size=input_size,
                     window_size=window_size, pretrained=pretrained, decoder_channels=decoder_channels,
                     stem_channels=stem_channels, encoder_kwargs=encoder_kwargs)
    mean, std = spec_stats(model.encoder, in_chans)
    model.spec = ModelSpec(
        name="swin_unet", in_channels=in_chans, out_channels=len(kinds), input_size=input_size, mean=mean, std=std,
        output="sigmoid",
        kwargs=dict(lesion_kinds=list(kinds), encoder=encoder, in_chans=in_chans, input_size=input_size,
                    window_size=window_size, decoder_channels=list(model_decoder_channels(model)),
                    stem_channels=[int(c) for c in stem_channels], encoder_kwargs=jsonable(dict(encoder_kwargs or {}))))
    return model


def init_head_prior(head: nn.Conv2d, prior: float = HEAD_PRIOR) -> None:
    """Bias the head so that every pixel starts at probability ``prior`` (RetinaNet's init, Lin et al. 2017
    sec. 4.1): with p = 0.5 at init the loss of thousands of background pixels swamps the rare lesions."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior!r}")
    with torch.no_grad():
        head.bias.fill_(-math.log((1 - prior) / prior))


def model_decoder_channels(model: nn.Module) -> tuple[int, ...]:
    """Output channels of each decoder block of a SwinUNet / TimmUNet."""
    return tuple(int(blk.conv2[0].out_channels) for blk in model.decoder)


@register_model("lesion_unet")
def lesion_unet(lesion_kinds: Sequence[str] = DEFAULT_LESION_KINDS, encoder: str = "resnet34", in_chans: int = 3,
                pretrained: bool = False, decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
                input_size: int = 512) -> TimmUNet:
    """CNN lesion U-Net (TimmUNet, resnet34 by default: stride-2 skip for microaneurysms), one sigmoid channel
    per entry of ``lesion_kinds``; ``input_size`` (px, divisible by the encoder's max reduction) is the scale
    it is trained at."""
    kinds = check_lesion_kinds(lesion_kinds)
    model = TimmUNet(encoder=encoder, in_chans=in_chans, classes=len(kinds), pretrained=pretrained,
                     decoder_channels=decoder_channels)
    init_head_prior(model.head)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size % model.max_reduction:
        raise ValueError(f"input_size must be an int divisible by {model.max_reduction}, got {input_size!r}")
    mean, std = spec_stats(model.encoder, in_chans)
    model.spec = ModelSpec(
        name="lesion_unet", in_channels=in_chans, out_channels=len(kinds), input_size=input_size, mean=mean,
        std=std, output="sigmoid",
        kwargs=dict(lesion_kinds=list(kinds), encoder=encoder, in_chans=in_chans,
                    decoder_channels=list(model_decoder_channels(model)), input_size=input_size))
    return model


__all__ = ["DEFAULT_LESION_KINDS", "SWIN_ENCODER", "SwinUNet", "check_lesion_kinds", "check_swin_input_size",
           "init_head_prior", "lesion_unet", "model_decoder_channels", "swin_unet"]
