"""DCAT: :class:`DualCrossAttention`, two CNN backbones' feature maps attending to each other with CBAM
refinement, and its registered builder "dcat" (see :mod:`dr_ray.models.classifiers`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dr_ray.models.blocks import CBAM, CrossAttentionBlock, FeatureTokens, tokens_to_map
from dr_ray.models.classifiers._common import (
    MIN_INPUT_SIZE,
    batch_image,
    check_dropout,
    check_fusion,
    check_int,
    check_modalities,
    check_timm_name,
    classifier_spec,
    feature_encoder,
    last_features,
    spec_mean_std,
)
from dr_ray.models.registry import register_model

logger = logging.getLogger(__name__)


class DualCrossAttention(nn.Module):
    """DCAT: dual (bidirectional) cross-attention fusion of two CNN backbones with CBAM refinement.

        A = P_a enc_a(X)[last], B = P_b enc_b(X)[last]     1x1 convs to d; both pooled (adaptive average) to the
                                                          smaller grid; per-token LayerNorm + 2-D sine-cosine codes
        A', B' = CA(A <- B), CA(B <- A)                    ``fusion_layers`` times, both from the previous A, B
        r_a, r_b = GAP(CBAM_a(A')), GAP(CBAM_b(B'))        channel + spatial attention per branch
        logits = W · Dropout([r_a ; r_b]) + b

    ``image_encoder`` is the first backbone (default EfficientNet-B4), ``image_encoder2`` the second (ResNet34).
    The image is normalised with the first backbone's mean/std (a warning is logged when the second one's
    differs). ``gradcam_layer`` = ``cbam_a`` (NCHW). Uncertainty:
    :func:`~dr_ray.models.classifiers.uncertainty.mc_dropout_predict`.
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 backbone2: str, hidden_dim: int, heads: int, fusion_layers: int) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = ("image",)
        self.input_size = input_size
        self.gradcam_layout = "NCHW"
        self.image_encoder = feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                             input_size=input_size)
        self.image_encoder2 = feature_encoder(backbone2, "backbone2", pretrained=pretrained, in_chans=3,
                                              input_size=input_size)
        if spec_mean_std(self.image_encoder) != spec_mean_std(self.image_encoder2):
            logger.warning("dcat: %s and %s expect different normalisation; using %s's %s", backbone, backbone2,
                           backbone, spec_mean_std(self.image_encoder))
        self.tokens_a = FeatureTokens(self.image_encoder.feature_info.channels()[-1], hidden_dim)
        self.tokens_b = FeatureTokens(self.image_encoder2.feature_info.channels()[-1], hidden_dim)
        self.cross_ab = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        self.cross_ba = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        self.cbam_a = CBAM(hidden_dim)
        self.cbam_b = CBAM(hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_dim, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.cbam_a

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = batch_image(batch, self.modalities, self.input_size)
        fa, fb = last_features(self.image_encoder, x), last_features(self.image_encoder2, x)
        h, w = min(fa.shape[2], fb.shape[2]), min(fa.shape[3], fb.shape[3])  # the smaller grid
        ta, tb = self.tokens_a(fa, (h, w)), self.tokens_b(fb, (h, w))
        for ab, ba in zip(self.cross_ab, self.cross_ba):
            ta, tb = ab(ta, tb), ba(tb, ta)
        ra = self.cbam_a(tokens_to_map(ta, h, w)).mean(dim=(2, 3))
        rb = self.cbam_b(tokens_to_map(tb, h, w)).mean(dim=(2, 3))
        return self.head(self.drop(torch.cat([ra, rb], dim=1))).float()


@register_model("dcat")
def dcat(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
         backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256, heads: int = 4,
         fusion_layers: int = 2, backbone2: str = "resnet34") -> DualCrossAttention:
    """:class:`DualCrossAttention` over ``backbone`` (default "efficientnet_b4") and ``backbone2``; image only."""
    backbone = check_timm_name(backbone or "efficientnet_b4", "backbone")
    check_timm_name(backbone2, "backbone2")
    check_int("num_classes", num_classes, 2)
    check_int("input_size", input_size, MIN_INPUT_SIZE)
    check_dropout(dropout)
    check_fusion(hidden_dim, heads, fusion_layers, sincos=True)
    mods = check_modalities(modalities, ("image",))
    model = DualCrossAttention(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                               backbone=backbone, backbone2=backbone2, hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers)
    model.spec = classifier_spec("dcat", model, num_classes, input_size, dict(
        num_classes=num_classes, input_size=input_size, dropout=float(dropout), backbone=backbone,
        modalities=list(mods), hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers, backbone2=backbone2))
    return model
