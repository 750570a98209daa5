"""The classification epoch and prediction, Ray-free: they take any iterable of :func:`collate` batches.

:func:`dr_ray.training.fit.fit` runs the epoch (``dr_ray.training.ray_fusion`` on Ray Train workers: data shards,
DDP, reports, checkpoints); tests and the evaluation stage call them directly. The segmentation epoch is
:mod:`dr_ray.training.segmentation`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dr_ray.training.fusion_data import to_device
from dr_ray.training.fit import autocast


class _Timed:
    """Wraps a batch iterator and adds up the time spent waiting for the next batch (the input pipeline)."""

    def __init__(self, it: Iterable) -> None:
        self.it: Iterator = iter(it)
        self.wait_s = 0.0

    def __iter__(self) -> "_Timed":
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.wait_s += time.perf_counter() - t0


def train_classifier_epoch(model: nn.Module, batches: Iterable[Mapping[str, Any]],
                           optimizer: torch.optim.Optimizer,
                           loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device | str,
                           *, mean: Sequence[float], std: Sequence[float], amp: bool = False) -> dict[str, float]:
    """One pass over :func:`collate` batches. Returns mean ``loss``, ``accuracy`` (of the argmax), ``rows``,
    ``steps``, ``seconds``, ``wait_seconds`` (blocked on the input pipeline) and ``busy_fraction`` =
    1 - wait / total: the share of the epoch the device had work (CUDA is synchronised per step)."""
    device = torch.device(device)
    model.train()
    timed = _Timed(batches)
    total_loss, correct, rows, steps = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    channels_last = device.type == "cuda"
    # BatchNorm cannot train on one sample: a trailing one-row batch (rows % batch_size == 1, common once the
    # inner validation split takes its patients) is skipped, like drop_last for that remainder only. Ray Train's
    # shards are equal-sized, so every DDP rank skips the same step.
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    skipped = 0
    for batch in timed:
        if has_bn and int(batch["label"].shape[0]) < 2:
            skipped += 1
            continue
        b = to_device(batch, device, mean=mean, std=std, channels_last=channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(b)
        loss = loss_fn(logits.float(), b["label"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {steps}; lower train.lr")
        loss.backward()
        optimizer.step()
        n = int(b["label"].shape[0])
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == b["label"]).sum())
        rows += n
        steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if steps == 0:
        raise ValueError("batches: empty, no training step was taken (no training rows in this shard, or only "
                         f"{skipped} one-row batch(es), which BatchNorm cannot train on)")
    seconds = time.perf_counter() - t0
    return {"loss": total_loss / rows, "accuracy": correct / rows, "rows": float(rows), "steps": float(steps),
            "seconds": seconds, "wait_seconds": timed.wait_s,
            "busy_fraction": max(0.0, 1.0 - timed.wait_s / seconds) if seconds > 0 else float("nan")}


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[Mapping[str, Any]], device: torch.device | str, *,
            mean: Sequence[float], std: Sequence[float], amp: bool = False
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Deterministic (eval-mode) predictions: (image ids, labels (N,) int64, softmax probabilities (N, C) float32)."""
    device = torch.device(device)
    model.eval()
    ids: list[str] = []
    labels, probs = [], []
    for batch in batches:
        b = to_device(batch, device, mean=mean, std=std, channels_last=device.type == "cuda")
        with autocast(device, amp):
            logits = model(b)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(b["label"].cpu().numpy())
        ids += list(batch["image_id"])
    if not ids:
        return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return ids, np.concatenate(labels).astype(np.int64), np.concatenate(probs).astype(np.float32)


def weighted_nll(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The loss of :func:`train_classifier_epoch` (class-weighted cross-entropy, weighted mean as in ``nn.CrossEntropyLoss``)
    computed from probabilities: the validation loss from predictions gathered over all workers."""
    labels = np.asarray(labels, np.int64)
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(labels)), labels], 1e-12, 1.0)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)[labels]
    if w.sum() <= 0:
        raise ValueError("weights of the labelled classes sum to 0")
    return float(-(w * np.log(p)).sum() / w.sum())


def loss_function(weights: Sequence[float] | None, device: torch.device | str) -> nn.Module:
    """Cross-entropy (eq. 33's softmax + categorical cross-entropy, paper 4.2), class-weighted when ``weights``."""
    w = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32), device=device)
    return nn.CrossEntropyLoss(weight=w)


__all__ = ["loss_function", "predict", "train_classifier_epoch", "weighted_nll"]
