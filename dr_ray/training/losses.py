"""Segmentation losses, restricted to the field of view when a FOV mask is given."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DiceBCELoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``, both over FOV pixels only.

    forward(logits (N, 1, H, W) float, target (N, 1, H, W) 0/1 float, fov (N, 1, H, W) 0/1 or None) -> scalar.
    Soft Dice is computed over the whole batch (one ratio), so patches without vessels do not dominate.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(f"bce_weight, dice_weight: need >= 0 and not both 0, got {bce_weight}, {dice_weight}")
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        logits, target = logits.float(), target.float()
        w = torch.ones_like(target) if fov is None else fov.float()
        n = w.sum().clamp_min(1.0)
        bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / n
        p = torch.sigmoid(logits) * w
        t = target * w
        dice = (2 * (p * t).sum() + self.smooth) / (p.sum() + t.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)
