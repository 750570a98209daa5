"""Segmentation epochs (vessels, lesions), Ray-free: they take any iterable of batches / images.

:func:`dr_ray.training.fit.fit` runs them epoch after epoch (``dr_ray.training.ray_train`` on Ray Train workers);
tests and benchmarks call them directly. The classification epoch is :mod:`dr_ray.training.classify`.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dr_ray.training.data import VesselImage, normalise
from dr_ray.training.fit import autocast
from dr_ray.training.metrics import SegmentationMeter

log = logging.getLogger(__name__)


def train_segmentation_epoch(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                             optimizer: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor],
                             device: torch.device | str, amp: bool = False) -> dict[str, float]:
    """One pass over ``batches`` ({"image", "mask", "fov"} tensors); returns {"loss": mean over steps, "steps"}."""
    device = torch.device(device)
    model.train()
    total, steps = 0.0, 0
    for batch in batches:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        fov = batch.get("fov")
        fov = fov.to(device, non_blocking=True) if fov is not None else None
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y, fov)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {steps}; lower train_vessels.lr")
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    if steps == 0:
        raise ValueError("batches: empty, no training step was taken")
    return {"loss": total / steps, "steps": float(steps)}


@torch.inference_mode()
def predict_image(model: nn.Module, image: np.ndarray, *, mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str = "cpu", amp: bool = False, multiple: int = 32) -> np.ndarray:
    """Whole-image vessel probability: image (H, W, 3) uint8 at the trained scale -> (H, W) float32 in 0..1.

    The image is reflect-padded to a multiple of ``multiple`` (the U-Net's stride) and the output cropped back.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    device = torch.device(device)
    h, w = image.shape[:2]
    x = torch.from_numpy(normalise(image, mean, std))[None].to(device)
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
    model.eval()
    with autocast(device, amp):
        logits = model(x)
    return torch.sigmoid(logits.float())[0, 0, :h, :w].cpu().numpy()


def evaluate_vessels(model: nn.Module, images: Iterable[VesselImage], *, mean: Sequence[float], std: Sequence[float],
             device: torch.device | str = "cpu", amp: bool = False, threshold: float = 0.5,
             seed: int = 0) -> dict[str, float]:
    """Whole-image metrics inside the FOV, pooled over ``images`` (dice, sensitivity, specificity, accuracy, auc)."""
    meter = SegmentationMeter(threshold=threshold, seed=seed)
    n = 0
    for im in images:
        prob = predict_image(model, im.image, mean=mean, std=std, device=device, amp=amp)
        meter.update(prob, im.mask, im.fov)
        n += 1
    if n == 0:
        raise ValueError("images: empty, nothing to evaluate")
    return meter.compute()


def lesion_batches(batches):
    """Lesion patch batches -> the {"image", "mask", "fov"} batches :func:`train_segmentation_epoch` takes: the
    FOV of each channel is zeroed where that lesion kind was not annotated for the image (unknown, not absent)."""
    for b in batches:
        fov = b["fov"] * b["present"][:, :, None, None]
        yield {"image": b["image"], "mask": b["masks"], "fov": fov}


def evaluate_lesions(model: nn.Module, batches, kinds, *, device, amp: bool, seed: int) -> dict[str, float]:
    """Per-lesion AUPR, Dice, IoU and precision (:class:`LesionMeter`, one per kind) over validation patch
    batches; a kind is scored only on the images where it was annotated. Also ``<metric>_mean`` over the kinds."""
    from dr_ray.training.lesion_metrics import LesionMeter

    meters = [LesionMeter((k,), seed=seed) for k in kinds]
    model.eval()
    with torch.inference_mode():
        for b in batches:
            with autocast(torch.device(device), amp):
                prob = torch.sigmoid(model(b["image"].to(device)).float()).cpu().numpy()
            masks, fov, present = b["masks"].numpy() > 0, b["fov"].numpy()[:, 0] > 0, b["present"].numpy() > 0
            for i in range(len(prob)):
                for k, meter in enumerate(meters):
                    if present[i, k]:
                        meter.update(prob[i, k:k + 1], masks[i, k:k + 1], fov[i])
    out: dict[str, float] = {}
    for meter in meters:
        out.update({k: v for k, v in meter.compute().items() if not k.endswith("_mean")})
    for m in ("aupr", "dice", "iou", "precision"):
        vals = [out[f"{m}_{k}"] for k in kinds if np.isfinite(out[f"{m}_{k}"])]
        out[f"{m}_mean"] = float(np.mean(vals)) if vals else float("nan")
    return out
