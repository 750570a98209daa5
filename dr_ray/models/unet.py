"""U-Net with a timm encoder (any ``features_only`` backbone) for vessel / lesion segmentation.

Registered builders:
    "unet"         TimmUNet with any timm encoder (kwargs: encoder, in_chans, classes, decoder_channels, input_size).
    "vessel_unet"  resnet18 encoder, 1 class (binary vessel mask), trained at 512 px.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import logging
import math
import socket
from typing import Any, Sequence
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn

from dr_ray.models.registry import ModelSpec, register_model

logger = logging.getLogger(__name__)

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
# Seconds allowed for resolving + connecting to the weight host before declaring the machine offline.
# huggingface_hub itself retries a failed HEAD 5 times with back-off (~45 s per model on an offline box).
_PROBE_TIMEOUT_S = 3.0


def weights_host(encoder: str) -> tuple[str | None, str | None]:
    """(host, source description) timm would download ``encoder``'s weights from; (None, None) if it has none."""
    cfg = timm.models.get_pretrained_cfg(encoder)
    if cfg is None:
        return None, None
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname, f"Hugging Face Hub {cfg.hf_hub_id}"
    if cfg.url:
        return urlparse(cfg.url).hostname, cfg.url
    return None, None


def reachable(host: str, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if ``host:443`` accepts a TCP connection within ``timeout`` s, else the reason.

    DNS resolution runs in a worker thread because ``getaddrinfo`` ignores socket timeouts.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, 443, 0, socket.SOCK_STREAM).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"resolving {host} timed out after {timeout:g} s"
    except OSError as e:
        return f"cannot resolve {host}: {e}"
    finally:
        pool.shutdown(wait=False)
    family, socktype, proto, _, addr = infos[0]
    try:
        with socket.socket(family, socktype, proto) as s:
            s.settimeout(timeout)
            s.connect(addr)
    except OSError as e:
        return f"cannot connect to {host}: {e}"
    return None


def offline_error(encoder: str, source: str, reason: str) -> RuntimeError:
    """The RuntimeError raised when ``encoder``'s pretrained weights (from ``source``) cannot be fetched for
    ``reason``; it says how to get past it (pretrained=False, or a pre-filled cache and ``HF_HUB_OFFLINE=1``)."""
    return RuntimeError(
        f"could not download pretrained weights for {encoder} ({source}): {reason}; "
        f"set pretrained=False, or pre-download the weights into the Hugging Face cache on a machine with "
        f"network access (e.g. timm.create_model({encoder!r}, pretrained=True)) and run with HF_HUB_OFFLINE=1")


def create_encoder(encoder: str, *, pretrained: bool, in_chans: int, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(encoder, features_only=True, in_chans=..., **timm_kwargs)``; a failed weight download
    raises quickly.

    With ``pretrained=True`` the weight host is probed first (``_PROBE_TIMEOUT_S``) unless
    ``HF_HUB_OFFLINE=1`` (then timm loads from the local cache or fails at once).
    """
    if not isinstance(encoder, str) or not timm.is_model(encoder):
        close = difflib.get_close_matches(str(encoder), timm.list_models(), n=3)
        raise ValueError(f"unknown timm encoder {encoder!r}" + (f"; did you mean {close}?" if close else "")
                         + " (see timm.list_models())")
    kw: dict[str, Any] = dict(features_only=True, pretrained=pretrained, in_chans=in_chans, **timm_kwargs)
    if not pretrained:
        enc = timm.create_model(encoder, **kw)
        # how to rebuild the plain timm model, for weights from a file (dr_ray.models.pretrained)
        enc.timm_build = {"name": encoder, "kwargs": dict(in_chans=in_chans, **timm_kwargs)}
        return enc
    host, source = weights_host(encoder)
    if host is None:
        raise RuntimeError(f"timm has no pretrained weights for {encoder}; set pretrained=False")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        reason = reachable(host)
        if reason is not None:
            raise offline_error(encoder, source, reason)
    try:
        return timm.create_model(encoder, **kw)
    except (OSError, ConnectionError) as e:  # huggingface_hub's errors are OSError subclasses
        raise offline_error(encoder, source, f"{type(e).__name__}: {e}") from e


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin + cskip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv2(self.conv1(x))


class TimmUNet(nn.Module):
    """U-Net: timm ``features_only`` encoder + decoder with skip connections + 1x1 head.

    Args:
        encoder: timm model name (``timm.list_models()``); its feature levels and strides come from
            ``feature_info.reduction()`` (e.g. resnet18: 2, 4, 8, 16, 32; convnext: 4, 8, 16, 32).
        in_chans: input channels.
        classes: output channels (logits).
        pretrained: load the encoder's ImageNet weights through timm (network or HF cache).
        decoder_channels: one entry per x2 upsampling step from the deepest stride back to stride 1,
            i.e. ``log2(max reduction)`` entries (5 for the usual stride-32 encoders).

    forward: ``x: (N, in_chans, H, W)`` float, H and W divisible by the encoder's max reduction (32)
        -> logits ``(N, classes, H, W)`` float.
    """

    def __init__(self, encoder: str = "resnet18", in_chans: int = 3, classes: int = 1, pretrained: bool = False,
                 decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS) -> None:
        super().__init__()
        for pname, v in (("in_chans", in_chans), ("classes", classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{pname} must be a positive int, got {v!r}")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if any(c < 1 for c in decoder_channels):
            raise ValueError(f"decoder_channels must be positive, got {decoder_channels!r}")
        self.encoder = create_encoder(encoder, pretrained=pretrained, in_chans=in_chans)
        chans = list(self.encoder.feature_info.channels())
        reds = list(self.encoder.feature_info.reduction())
        if any(r & (r - 1) for r in reds) or reds != sorted(set(reds)):
            raise ValueError(f"encoder {encoder!r} has feature reductions {reds}; need increasing powers of 2")
        self.max_reduction = reds[-1]
        n_steps = int(math.log2(self.max_reduction))
        if len(decoder_channels) != n_steps:
            raise ValueError(f"decoder_channels needs {n_steps} entries for encoder {encoder!r} "
                             f"(max reduction {self.max_reduction}), got {len(decoder_channels)}: {decoder_channels}")
        skip_for_reduction = {r: c for r, c in zip(reds[:-1], chans[:-1])}
        self.reductions = tuple(reds)
        blocks = []
        cin = chans[-1]
        r = self.max_reduction
        for cout in decoder_channels:
            r //= 2
            blocks.append(DecoderBlock(cin, skip_for_reduction.get(r, 0), cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        # reduction each decoder block lands at, and whether it takes a skip
        self._block_reductions = tuple(self.max_reduction // 2 ** (i + 1) for i in range(n_steps))
        self.head = nn.Conv2d(cin, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.max_reduction or w % self.max_reduction:
            raise ValueError(f"input size {h}x{w} is not divisible by {self.max_reduction} "
                             f"(the encoder's max reduction); resize or pad it")
        feats = self.encoder(x)
        by_reduction = dict(zip(self.reductions, feats))
        y = feats[-1]
        for block, r in zip(self.decoder, self._block_reductions):
            y = block(y, by_reduction.get(r))
        return self.head(y)


def spec_stats(encoder: nn.Module, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Encoder's normalisation (timm ``resolve_data_config``), adapted to ``in_chans`` channels.

    timm's mean/std are RGB; for another channel count the channel average is repeated (as timm's
    ``adapt_input_conv`` averages/repeats the RGB filters).
    """
    cfg = resolve_data_config({}, model=encoder)
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return mean, std


def _build_unet(name: str, *, encoder: str, in_chans: int, classes: int, pretrained: bool,
                decoder_channels: Sequence[int], input_size: int) -> TimmUNet:
    model = TimmUNet(encoder=encoder, in_chans=in_chans, classes=classes, pretrained=pretrained,
                     decoder_channels=decoder_channels)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size % model.max_reduction:
        raise ValueError(f"input_size must be an int divisible by {model.max_reduction}, got {input_size!r}")
    mean, std = spec_stats(model.encoder, in_chans)
    model.spec = ModelSpec(
        name=name, in_channels=in_chans, out_channels=classes, input_size=input_size, mean=mean, std=std,
        output="sigmoid" if classes == 1 else "softmax",
        kwargs=dict(encoder=encoder, in_chans=in_chans, classes=classes,
                    decoder_channels=list(int(c) for c in decoder_channels), input_size=input_size))
    return model


@register_model("unet")
def unet(encoder: str = "resnet18", in_chans: int = 3, classes: int = 1, pretrained: bool = False,
         decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, input_size: int = 512) -> TimmUNet:
    """TimmUNet with any timm encoder; ``input_size`` (px) records the scale it is trained at."""
    return _build_unet("unet", encoder=encoder, in_chans=in_chans, classes=classes, pretrained=pretrained,
                       decoder_channels=decoder_channels, input_size=input_size)


@register_model("vessel_unet")
def vessel_unet(encoder: str = "resnet18", in_chans: int = 3, classes: int = 1, pretrained: bool = False,
                decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS, input_size: int = 512) -> TimmUNet:
    """Binary vessel segmentation default: resnet18 encoder (stride-2 features kept for thin vessels,
    11 M parameters, ImageNet weights on the HF hub), 1 sigmoid output, 512 px input (a 1024 px FOV
    halved keeps ~1 px capillaries visible; override with ``input_size``)."""
    return _build_unet("vessel_unet", encoder=encoder, in_chans=in_chans, classes=classes, pretrained=pretrained,
                       decoder_channels=decoder_channels, input_size=input_size)
