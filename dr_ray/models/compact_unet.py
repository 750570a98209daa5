"""A compact full-resolution U-Net for vessel segmentation (SA-UNet's layout, no timm encoder).

Registered builder:
    "compact_vessel_unet"  4 levels of (conv 3x3 - BN - ReLU) x 2 at widths ``channels`` (16, 32, 64, 128 by
                           default: 0.5 M parameters, ~2 MB), a bottleneck with spatial attention, dropout2d
                           between the two convolutions of every block, 1 sigmoid output.

Why not a timm encoder: timm backbones halve the resolution in their stem, and DRIVE-scale capillaries are
1-2 px wide; SA-UNet (Guo et al., ICPR 2020: DRIVE F1 0.826 with 0.54 M parameters) keeps a full-resolution
first level and is small enough to train on a CPU. The spatial attention is CBAM's (Woo et al. 2018): a 7x7
convolution over the channel-wise mean and max, as in SA-UNet. Inputs are normalised with mean 0.5, std 0.25
per channel (no ImageNet statistics: the model is trained from scratch).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dr_ray.models.registry import ModelSpec, register_model

DEFAULT_CHANNELS = (16, 32, 64, 128)


class ConvBlock(nn.Sequential):
    """conv 3x3 - BN - ReLU - dropout2d - conv 3x3 - BN - ReLU."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([mean_c(x), max_c(x)]))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(a))


class CompactUNet(nn.Module):
    """forward: ``x: (N, in_chans, H, W)`` float, H and W divisible by ``2 ** (len(channels) - 1)``
    -> logits ``(N, classes, H, W)``."""

    def __init__(self, in_chans: int = 3, classes: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS,
                 dropout: float = 0.1) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be >= 2 positive widths, got {channels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.max_reduction = 2 ** (len(channels) - 1)
        self.down = nn.ModuleList()
        cin = in_chans
        for c in channels[:-1]:
            self.down.append(ConvBlock(cin, c, dropout))
            cin = c
        self.bottleneck = nn.Sequential(ConvBlock(cin, channels[-1], dropout), SpatialAttention())
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        cin = channels[-1]
        for c in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.fuse.append(ConvBlock(2 * c, c, dropout))
            cin = c
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.max_reduction or w % self.max_reduction:
            raise ValueError(f"input size {h}x{w} is not divisible by {self.max_reduction}; resize or pad it")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips)):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register_model("compact_vessel_unet")
def compact_vessel_unet(in_chans: int = 3, classes: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS,
                        dropout: float = 0.1, input_size: int = 512, pretrained: bool = False) -> CompactUNet:
    """The shipped vessel model's architecture; ``input_size`` records the scale it is trained at. There are no
    published weights for it (``pretrained=True`` is an error; ``pretrained_file`` loads a state dict)."""
    if pretrained:
        raise ValueError("compact_vessel_unet has no published pretrained weights; train it "
                         "(dr-ray train-vessels) or pass pretrained_file")
    model = CompactUNet(in_chans=in_chans, classes=classes, channels=channels, dropout=dropout)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size % model.max_reduction:
        raise ValueError(f"input_size must be an int divisible by {model.max_reduction}, got {input_size!r}")
    model.spec = ModelSpec(
        name="compact_vessel_unet", in_channels=in_chans, out_channels=classes, input_size=input_size,
        mean=(0.5,) * in_chans, std=(0.25,) * in_chans, output="sigmoid" if classes == 1 else "softmax",
        kwargs=dict(in_chans=in_chans, classes=classes, channels=[int(c) for c in channels],
                    dropout=float(dropout), input_size=input_size))
    return model


__all__ = ["CompactUNet", "DEFAULT_CHANNELS", "compact_vessel_unet"]
