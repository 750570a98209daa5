"""Cross feature fusion (Mok et al. poster): :class:`CrossFeatureFusion`, image tokens attending to tokens of
the generated lesion maps, and its registered builder "cross_feature_fusion" (see
:mod:`dr_ray.models.classifiers`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.layers import resize_rel_pos_bias_table
from torch import nn

from dr_ray.models.blocks import CrossAttentionBlock, FeatureTokens
from dr_ray.models.classifiers._common import (
    DEFAULT_LESION_SIZE,
    MIN_INPUT_SIZE,
    agreed_batch_size,
    batch_entry,
    batch_image,
    branch_timm_kwargs,
    check_dropout,
    check_fusion,
    check_int,
    check_modalities,
    check_tensor,
    check_timm_name,
    classifier_spec,
    feature_encoder,
    last_features,
)
from dr_ray.models.registry import register_model
from dr_ray.models.transfer import EncoderLoadReport, load_encoder, rename_state_keys

logger = logging.getLogger(__name__)


class CrossFeatureFusion(nn.Module):
    """Cross feature fusion of the fundus image and its generated lesion maps (Mok et al. poster, Fig. (b), (c)).

        F_img = image_encoder(X)[last]            (B, C, h, w), timm features_only, stride 32
        X_tok = LN(P_img F_img) + pos             1x1 conv to d, (B, h·w, d) queries; pos: 2-D sine-cosine codes
        F_les = lesion_encoder(Y)[last]           Y = lesion maps (B, K, M, M), K input channels
        Y_tok = LN(P_les F_les) + pos             (B, h'·w', d) keys / values
        X_tok <- CrossAttentionBlock(X_tok, Y_tok)     ``fusion_layers`` times (Y_tok fixed)
        logits = W · Dropout(LayerNorm(mean_tokens(X_tok))) + b

    With ``modalities=("image",)`` (the poster's Table 2 rows without fusion) the lesion encoder and the
    cross-attention blocks are not built: image encoder + projection + pooled head.

    ``gradcam_layer`` is ``image_tokens.proj`` (NCHW): Grad-CAM on a 1x1 convolution of the last encoder stage equals
    Grad-CAM on that stage up to the constant the conv bias adds before the ReLU.
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 lesion_backbone: str, lesion_kinds: int, lesion_size: int, hidden_dim: int, heads: int,
                 fusion_layers: int, modalities: tuple[str, ...], backbone_kwargs: Mapping[str, Any] | None = None,
                 lesion_backbone_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.modalities = modalities
        self.input_size, self.lesion_kinds, self.lesion_size = input_size, lesion_kinds, lesion_size
        self.gradcam_layout = "NCHW"
        self.image_encoder = feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                             input_size=input_size, timm_kwargs=backbone_kwargs)
        self.image_tokens = FeatureTokens(self.image_encoder.feature_info.channels()[-1], hidden_dim)
        if "lesion" in modalities:
            self.lesion_encoder: nn.Module | None = feature_encoder(
                lesion_backbone, "lesion_backbone", pretrained=pretrained, in_chans=lesion_kinds,
                input_size=lesion_size, timm_kwargs=lesion_backbone_kwargs)
            self.lesion_tokens: nn.Module | None = FeatureTokens(self.lesion_encoder.feature_info.channels()[-1],
                                                                 hidden_dim)
            self.fusion = nn.ModuleList(CrossAttentionBlock(hidden_dim, heads, dropout) for _ in range(fusion_layers))
        else:
            self.lesion_encoder = self.lesion_tokens = None
            self.fusion = nn.ModuleList()
        self.norm = nn.LayerNorm(hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.image_tokens.proj

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = batch_image(batch, self.modalities, self.input_size)
        q = self.image_tokens(last_features(self.image_encoder, x))
        if self.lesion_encoder is not None:
            k, m = self.lesion_kinds, self.lesion_size
            y = check_tensor("lesion", batch_entry(batch, "lesion", self.modalities), (None, k, m, m),
                             f"(B, {k}, {m}, {m}) (lesion_kinds, lesion_size)")
            agreed_batch_size({"image": x.shape[0], "lesion": y.shape[0]})
            kv = self.lesion_tokens(last_features(self.lesion_encoder, y))
            for block in self.fusion:
                q = block(q, kv)
        return self.head(self.drop(self.norm(q.mean(dim=1)))).float()

    def load_segmentation_encoder(self, state: Mapping[str, torch.Tensor], branch: str) -> EncoderLoadReport:
        """Load an exported lesion-segmentation encoder into the "image" or the "lesion" branch.

        ``state``: a timm ``features_only`` state dict of an RGB encoder, as written by
        :func:`dr_ray.models.transfer.save_encoder` (read with ``load_encoder_file``), e.g. the encoder of
        ``create_model("lesion_unet", encoder="resnet34")``; it must be the same architecture as the branch
        (strict: every tensor of the branch filled, every state tensor used), else ValueError.

        Both branches are supported because the sources disagree: the poster's Table 2 row "transfer
        learning, no cross feature fusion" has no lesion branch, so its transfer goes into the image branch;
        the project brief transfers into the lesion branch. For the lesion branch (K = ``lesion_kinds`` input
        channels, not 3) every 3-channel input convolution is adapted with ``timm.models.adapt_input_conv(K, w)``
        (K = 1: RGB filters summed; otherwise repeated over the K channels and rescaled by 3 / K) before loading.
        The segmentation encoder saw normalised RGB fundus images, the lesion branch sees probability maps in
        [0, 1]: the adapted stem is a warm start, not an equivalent network.

        A Swin encoder trained with another attention window (e.g. a window-7 Swin U-Net into a window-8
        branch at 512 px) has its relative-position bias tables resampled to the branch's window with
        ``timm.layers.resize_rel_pos_bias_table`` (what timm does to ImageNet weights; logged as a warning);
        every other tensor must match in shape.

        Returns the :class:`~dr_ray.models.transfer.EncoderLoadReport`.
        """
        if branch not in ("image", "lesion"):
            raise ValueError(f"branch must be 'image' or 'lesion', got {branch!r}")
        target = self.image_encoder if branch == "image" else self.lesion_encoder
        if target is None:
            raise ValueError(f"branch 'lesion' needs the lesion modality; this model has modalities "
                             f"{list(self.modalities)}")
        if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("state must be a non-empty dict of tensors (from load_encoder_file)")
        if branch == "lesion" and self.lesion_kinds != 3:
            state = _adapt_input_convs(state, target, self.lesion_kinds)
        state = _fit_rel_pos_tables(state, target)
        report = load_encoder(target, state, strict=True)
        logger.info("loaded a %d-tensor segmentation encoder into the %s branch", len(state), branch)
        return report


def _adapt_input_convs(state: Mapping[str, torch.Tensor], target: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    """``state`` (keyed as ``target``) with each 3-input-channel conv weight whose target has ``in_chans`` input
    channels (the stem) replaced by ``timm.models.adapt_input_conv(in_chans, w)``."""
    own = target.state_dict()
    renamed, _ = rename_state_keys(state, set(own))
    out = dict(renamed)
    adapted = []
    for key, w in renamed.items():
        t = own.get(key)
        if t is not None and w.ndim == 4 and t.ndim == 4 and w.shape[1] == 3 and t.shape[1] == in_chans \
                and w.shape[0] == t.shape[0] and w.shape[2:] == t.shape[2:]:
            out[key] = timm.models.adapt_input_conv(in_chans, w)
            adapted.append(key)
    if not adapted:
        raise ValueError(f"state has no 3-channel input convolution matching the lesion encoder's {in_chans}-channel "
                         f"stem (different architecture?)")
    logger.info("adapted %s from 3 to %d input channels", adapted, in_chans)
    return out


def _fit_rel_pos_tables(state: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (keyed as ``target``) with each Swin ``relative_position_bias_table`` whose shape differs from the
    target's resampled to the target attention's window (``timm.layers.resize_rel_pos_bias_table``)."""
    own = target.state_dict()
    renamed, _ = rename_state_keys(state, set(own))
    out, resized = dict(renamed), []
    for key, v in renamed.items():
        t = own.get(key)
        if key.endswith("relative_position_bias_table") and t is not None and t.shape != v.shape \
                and v.ndim == 2 and t.ndim == 2 and v.shape[1] == t.shape[1]:
            window = tuple(target.get_submodule(key.rsplit(".", 1)[0]).window_size)
            out[key] = resize_rel_pos_bias_table(v, new_window_size=window, new_bias_shape=tuple(t.shape))
            resized.append(f"{key} {tuple(v.shape)}->{tuple(t.shape)}")
    if resized:
        logger.warning("resampled %d Swin relative-position tables to the branch's window: %s", len(resized),
                       resized[:2])
    return out


@register_model("cross_feature_fusion")
def cross_feature_fusion(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
                         backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256,
                         heads: int = 4, fusion_layers: int = 2, lesion_backbone: str = "",
                         lesion_kinds: int = 4, lesion_size: int = DEFAULT_LESION_SIZE,
                         backbone_kwargs: Mapping[str, Any] | None = None,
                         lesion_backbone_kwargs: Mapping[str, Any] | None = None) -> CrossFeatureFusion:
    """:class:`CrossFeatureFusion`: image encoder ``backbone`` (default "resnet34") queries, lesion-map encoder
    ``lesion_backbone`` (default "resnet34"; the poster's is the Swin U-Net encoder, e.g.
    "swin_tiny_patch4_window7_224" with ``lesion_backbone_kwargs={"window_size": 8}`` at 512 px) on
    ``lesion_kinds`` maps of ``lesion_size`` px keys/values; modalities ("image", "lesion") or ("image",).
    ``backbone_kwargs`` / ``lesion_backbone_kwargs``: extra timm kwargs of each branch (:func:`branch_timm_kwargs`;
    Swin branches are built for their own input size, ``input_size`` / ``lesion_size``)."""
    backbone = check_timm_name(backbone or "resnet34", "backbone")
    lesion_backbone = check_timm_name(lesion_backbone or "resnet34", "lesion_backbone")
    check_int("num_classes", num_classes, 2)
    check_int("input_size", input_size, MIN_INPUT_SIZE)
    check_int("lesion_kinds", lesion_kinds)
    check_int("lesion_size", lesion_size, MIN_INPUT_SIZE)
    check_dropout(dropout)
    check_fusion(hidden_dim, heads, fusion_layers, sincos=True)
    mods = check_modalities(modalities, ("image", "lesion"), required=("image",))
    # validated (and Swin sizes checked) before any weights are built
    branch_timm_kwargs(backbone, "backbone", input_size, backbone_kwargs)
    if "lesion" in mods:
        branch_timm_kwargs(lesion_backbone, "lesion_backbone", lesion_size, lesion_backbone_kwargs)
    model = CrossFeatureFusion(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                               backbone=backbone, lesion_backbone=lesion_backbone, lesion_kinds=lesion_kinds,
                               lesion_size=lesion_size, hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers, modalities=mods, backbone_kwargs=backbone_kwargs,
                               lesion_backbone_kwargs=lesion_backbone_kwargs)
    model.spec = classifier_spec("cross_feature_fusion", model, num_classes, input_size, dict(
        num_classes=num_classes, input_size=input_size, dropout=float(dropout), backbone=backbone,
        modalities=list(mods), hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers,
        lesion_backbone=lesion_backbone, lesion_kinds=lesion_kinds, lesion_size=lesion_size,
        backbone_kwargs=dict(backbone_kwargs or {}), lesion_backbone_kwargs=dict(lesion_backbone_kwargs or {})))
    return model
