"""Grad-CAM (Selvaraju et al. 2017) for the DR classifiers of :mod:`dr_ray.models.classifiers`.

Written by hand with a forward hook on ``model.gradcam_layer`` and ``torch.autograd.grad`` rather than taken
from the ``grad-cam`` pip package: that package depends on ``opencv-python``, which would be installed next to
our ``opencv-python-headless`` (two copies of cv2 in one environment, the GUI one pulling X11 libraries).

For the target class c with logit y_c and the hooked feature map A (K channels, u x v grid):
    α_k = mean_{i,j} ∂y_c / ∂A_k(i, j)                        (Selvaraju et al. eq. 1)
    L_c = ReLU(sum_k α_k A_k)                                 (eq. 2)
then bilinearly upsampled to the input image size and min-max scaled to [0, 1] per sample (an all-zero map
stays 0).

Feature layouts (``model.gradcam_layout``, default "NCHW"):
    "NCHW"  CNN feature maps (B, C, h, w).
    "NHWC"  Swin stage outputs (B, h, w, C).
    "NLC"   ViT tokens (B, N, C): the first ``model.gradcam_prefix_tokens`` tokens (class / register tokens;
            default N - floor(sqrt(N))^2) are dropped and the rest reshaped row-major to a square g x g grid
            (square inputs; a non-square count raises ValueError).

The model runs in eval mode (BatchNorm running statistics, no dropout) and is put back in the train/eval mode
of every module afterwards; the hook is removed even on error; parameter ``.grad`` are left untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

LAYOUTS = ("NCHW", "NHWC", "NLC")


def _to_nchw(t: torch.Tensor, layout: str, prefix_tokens: int | None) -> torch.Tensor:
    if layout == "NCHW":
        if t.ndim != 4:
            raise ValueError(f"gradcam_layer output must be (B, C, h, w) for layout NCHW, got {tuple(t.shape)}")
        return t
    if layout == "NHWC":
        if t.ndim != 4:
            raise ValueError(f"gradcam_layer output must be (B, h, w, C) for layout NHWC, got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2)
    if t.ndim != 3:
        raise ValueError(f"gradcam_layer output must be (B, N, C) tokens for layout NLC, got {tuple(t.shape)}")
    n = t.shape[1]
    prefix = n - math.isqrt(n) ** 2 if prefix_tokens is None else int(prefix_tokens)
    g = math.isqrt(max(n - prefix, 0))
    if prefix < 0 or g == 0 or g * g != n - prefix:
        raise ValueError(f"{n} tokens minus {prefix} prefix tokens is not a square grid")
    return t[:, prefix:].reshape(t.shape[0], g, g, t.shape[2]).permute(0, 3, 1, 2)


def _targets(target_class: int | Sequence[int] | None, logits: torch.Tensor) -> torch.Tensor:
    b, c = logits.shape
    if target_class is None:
        return logits.argmax(dim=1)
    if isinstance(target_class, (int, np.integer)) and not isinstance(target_class, bool):
        t = torch.full((b,), int(target_class), dtype=torch.long, device=logits.device)
    elif isinstance(target_class, Sequence) and not isinstance(target_class, str) and len(target_class) == b \
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in target_class):
        t = torch.tensor([int(v) for v in target_class], dtype=torch.long, device=logits.device)
    else:
        raise ValueError(f"target_class must be None, an int or {b} ints (one per sample), got {target_class!r}")
    if bool(((t < 0) | (t >= c)).any()):
        raise ValueError(f"target_class must be in [0, {c}) (num_classes), got {target_class!r}")
    return t


def grad_cam(model: nn.Module, batch: Mapping[str, Any], target_class: int | Sequence[int] | None = None
             ) -> np.ndarray:
    """Grad-CAM heat maps of ``model`` for ``batch`` (a classifier batch dict with "image" (B, 3, H, W)).

    ``target_class``: None (each sample's predicted class), one int for all samples, or B ints.
    Returns ``(B, H, W) float32`` in [0, 1] at the input image size (1 = most evidence for the target class).
    Raises ValueError when the model has no ``gradcam_layer`` (e.g. graph_fusion without the image modality),
    the batch has no "image", or the hooked output does not match ``model.gradcam_layout``.
    """
    layer = getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{type(model).__name__} has no gradcam_layer module (got {layer!r}); Grad-CAM needs the "
                         f"image branch")
    layout = getattr(model, "gradcam_layout", "NCHW")
    if layout not in LAYOUTS:
        raise ValueError(f"model.gradcam_layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(batch, Mapping) or not isinstance(batch.get("image"), torch.Tensor) or batch["image"].ndim != 4 \
            or not batch["image"].dtype.is_floating_point:
        raise ValueError("batch must be a dict with 'image' (B, 3, H, W) float")
    image = batch["image"]
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output)

    modes = {m: m.training for m in model.modules()}
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        # a fresh leaf that requires grad: the hooked map is in the graph even when every parameter is frozen
        run = dict(batch, image=image.detach().clone().requires_grad_(True))
        with torch.enable_grad():
            logits = model(run)
            if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
                raise ValueError(f"gradcam_layer ran {len(captured)} times in one forward pass or gave a "
                                 f"non-tensor output; Grad-CAM needs exactly one feature map")
            act = captured[0]
            targets = _targets(target_class, logits)
            score = logits.gather(1, targets[:, None]).sum()  # samples are independent in eval mode
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    prefix = getattr(model, "gradcam_prefix_tokens", None)
    a = _to_nchw(act.detach(), layout, prefix).float()
    g = _to_nchw(grad, layout, prefix).float()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))  # eqs. (1), (2)
    cam = F.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def overlay(image_rgb_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a Grad-CAM map over an image: ``(1 - alpha) · image + alpha · jet(cam)``.

    image_rgb_uint8: (H, W, 3) uint8 RGB. cam: (H, W) float in [0, 1] (one map of :func:`grad_cam`).
    alpha: weight of the heat map in [0, 1]. Returns (H, W, 3) uint8 RGB; jet runs blue (0) -> red (1)
    (``cv2.applyColorMap`` with ``COLORMAP_JET`` on round(255 · cam), converted from BGR).
    """
    img = np.asarray(image_rgb_uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image_rgb_uint8 must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    c = np.asarray(cam)
    if c.shape != img.shape[:2] or not np.issubdtype(c.dtype, np.floating):
        raise ValueError(f"cam must be a float (H, W) = {img.shape[:2]} map, got {c.shape} {c.dtype}")
    if not np.all(np.isfinite(c)) or c.min(initial=0.0) < 0.0 or c.max(initial=0.0) > 1.0:
        raise ValueError("cam values must be finite and in [0, 1]")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    heat = cv2.applyColorMap(np.round(c * 255.0).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


__all__ = ["LAYOUTS", "grad_cam", "overlay"]
