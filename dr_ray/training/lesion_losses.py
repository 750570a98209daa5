"""Loss for multi-label lesion segmentation (tiny, rare structures): soft Dice + focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LesionLoss(nn.Module):
    """``dice_weight * mean_c(1 - softDice_c) + focal_weight * mean_c(focal_c)``, over FOV pixels only.

    Soft Dice of class c is one ratio over the whole batch (a patch without that lesion does not get its
    own 0/0 Dice): ``(2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``. A class absent from the batch
    (``sum(t) = 0``) gives ``smooth / (sum(p) + smooth)``: 1 - that pushes its probabilities to 0 and
    stays finite.

    Focal loss (Lin et al. 2017, eq. (5)) per pixel and class, averaged over FOV pixels:
    ``-alpha_t (1 - p_t)**gamma log(p_t)`` with ``alpha_t = alpha`` on positives and ``1 - alpha`` on
    negatives (``alpha=None``: no alpha weighting; ``gamma=0, alpha=None`` is plain BCE). ``pos_weight``
    (one value per class) further multiplies the positive pixels' term, as in BCE's ``pos_weight``.

    forward(logits (N, C, H, W) float, target (N, C, H, W) 0/1 float, fov (N, 1, H, W) or (N, C, H, W)
    0/1 or None) -> scalar.
    """

    def __init__(self, dice_weight: float = 1.0, focal_weight: float = 1.0, alpha: float | None = 0.25,
                 gamma: float = 2.0, pos_weight: Sequence[float] | None = None, smooth: float = 1.0) -> None:
        super().__init__()
        if dice_weight < 0 or focal_weight < 0 or dice_weight + focal_weight == 0:
            raise ValueError(f"dice_weight, focal_weight: need >= 0 and not both 0, got {dice_weight}, {focal_weight}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if smooth <= 0:
            raise ValueError(f"smooth must be > 0 (it keeps the Dice of an absent class finite), got {smooth!r}")
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.alpha, self.gamma, self.smooth = alpha, float(gamma), float(smooth)
        if pos_weight is not None:
            pw = torch.as_tensor(pos_weight, dtype=torch.float32)
            if pw.ndim != 1 or len(pw) == 0 or not torch.all(pw > 0):
                raise ValueError(f"pos_weight must be one positive value per class, got {pos_weight!r}")
            self.register_buffer("pos_weight", pw, persistent=False)
        else:
            self.pos_weight = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
        if logits.ndim != 4:
            raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        n, c, h, w = logits.shape
        if self.pos_weight is not None and len(self.pos_weight) != c:
            raise ValueError(f"pos_weight has {len(self.pos_weight)} values, logits have {c} classes")
        logits, target = logits.float(), target.float()
        if fov is None:
            wgt = torch.ones((n, 1, h, w), dtype=logits.dtype, device=logits.device)
        else:
            if fov.ndim != 4 or fov.shape[0] != n or fov.shape[1] not in (1, c) or fov.shape[2:] != (h, w):
                raise ValueError(f"fov must be (N, 1, H, W) or (N, C, H, W) = ({n}, 1|{c}, {h}, {w}), "
                                 f"got {tuple(fov.shape)}")
            wgt = fov.float()
        wgt = wgt.expand(n, c, h, w)
        dims = (0, 2, 3)  # per class, over the batch
        loss = logits.new_zeros(())
        if self.dice_weight:
            p = torch.sigmoid(logits) * wgt
            t = target * wgt
            dice = (2 * (p * t).sum(dims) + self.smooth) / (p.sum(dims) + t.sum(dims) + self.smooth)
            loss = loss + self.dice_weight * (1 - dice).mean()
        if self.focal_weight:
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # -log(p_t)
            p_t = torch.exp(-ce)
            focal = ce * (1 - p_t) ** self.gamma if self.gamma else ce
            if self.alpha is not None:
                focal = focal * (self.alpha * target + (1 - self.alpha) * (1 - target))
            if self.pos_weight is not None:
                focal = focal * (1 + (self.pos_weight.view(1, c, 1, 1) - 1) * target)
            per_class = (focal * wgt).sum(dims) / wgt.sum(dims).clamp_min(1.0)
            loss = loss + self.focal_weight * per_class.mean()
        return loss


__all__ = ["LesionLoss"]
