"""Training and evaluation loops, Ray-free: they take any iterable of batches / images.

``ray_train.py`` wraps them with Ray Train (workers, reports, checkpoints); tests run them directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dr_ray.training.data import VesselImage, normalise
from dr_ray.training.metrics import SegmentationMeter

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 ``torch.autocast`` on a CUDA ``device`` when ``amp``, else a no-op context."""
    # bf16 needs no loss scaling; on CPU autocast is slower than fp32 for convs, so GPU only.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[..., torch.Tensor], device: torch.device | str, amp: bool = False
                    ) -> dict[str, float]:
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


def evaluate(model: nn.Module, images: Iterable[VesselImage], *, mean: Sequence[float], std: Sequence[float],
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


# --- training state (what a checkpoint holds) ---------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_training_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, epoch: int, history: list[dict]) -> Path:
    """Write ``state.pt`` (model/optimizer/scheduler state dicts, epochs done) + ``history.json`` into ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
               out / STATE_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1, allow_nan=True))
    return out


def load_training_state(path: str | Path) -> tuple[dict, list[dict]]:
    """(state dict written by :func:`save_training_state`, history list)."""
    d = Path(path)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    history = json.loads((d / HISTORY_FILE).read_text())
    return state, history


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN -> None so that the dict is strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
