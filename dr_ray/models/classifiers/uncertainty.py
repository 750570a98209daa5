"""Predictive uncertainty of any DR classifier: :func:`mc_dropout_predict` (Monte-Carlo dropout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dr_ray.models.classifiers._common import check_int

# Modules whose train flag only switches dropout: their own attention dropout, and for the transformer layers
# the inference fast path, which skips the (train-mode) dropout submodules altogether.
_DROPOUT_GATED = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def mc_dropout_predict(model: nn.Module, batch: Mapping[str, Any], samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo dropout (Gal & Ghahramani 2016): mean softmax over ``samples`` stochastic passes.

    Dropout modules (``nn.Dropout*``, and ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` whose
    flag gates attention dropout and the dropout-free fast path) run in train mode; everything else, BatchNorm
    above all, in eval mode. Passes run under ``torch.no_grad``; every module's train flag is restored after.

    Returns ``(mean_probs (B, C) float32, entropy (B,) float32 in nats)``, entropy = -sum_c p_c log p_c of the
    mean probabilities (predictive entropy, in [0, log C]). Raises ValueError when ``samples < 1`` or the model
    has no dropout with p > 0 (every pass would be identical).
    """
    check_int("samples", samples)
    modes = {m: m.training for m in model.modules()}
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout with p > 0; MC dropout needs one")
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, (nn.modules.dropout._DropoutNd, *_DROPOUT_GATED)):
                m.training = True
        with torch.no_grad():
            probs = torch.stack([torch.softmax(model(batch).float(), dim=1) for _ in range(samples)]).mean(dim=0)
    finally:
        for m, mode in modes.items():
            m.training = mode
    entropy = torch.special.entr(probs).sum(dim=1)
    return probs.cpu().numpy().astype(np.float32), entropy.cpu().numpy().astype(np.float32)
