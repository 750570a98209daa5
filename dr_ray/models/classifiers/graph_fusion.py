"""Graph-enhanced vascular fusion (paper sec. 3.4-3.10): :class:`GraphFusion` over image, vascular graph and
biomarker tokens, its image-block switches (``GRAPH_FUSION_BLOCKS``) and its registered builder "graph_fusion"
(see :mod:`dr_ray.models.classifiers`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from dr_ray.models.blocks import CBAM, DilatedConvBlock, SqueezeExcite
from dr_ray.models.classifiers._common import (
    MIN_INPUT_SIZE,
    agreed_batch_size,
    batch_entry,
    batch_graph,
    batch_image,
    check_dropout,
    check_fusion,
    check_int,
    check_modalities,
    check_tensor,
    check_timm_name,
    feature_encoder,
    last_features,
    spec_mean_std,
)
from dr_ray.models.gnn import GraphEncoder
from dr_ray.models.registry import ModelSpec, register_model

GRAPH_FUSION_BLOCKS = ("se", "dilated", "cbam")  # GraphFusion's image enhancement blocks, in application order


def check_graph_fusion_blocks(blocks: Sequence[str]) -> tuple[str, ...]:
    """``blocks`` as a tuple in ``GRAPH_FUSION_BLOCKS`` order; ValueError for unknown or repeated names."""
    if isinstance(blocks, str) or not isinstance(blocks, Sequence):
        raise ValueError(f"blocks must be a list of names from {GRAPH_FUSION_BLOCKS} (any subset), got {blocks!r}")
    bad = [b for b in blocks if b not in GRAPH_FUSION_BLOCKS]
    if bad or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks must be distinct names from {GRAPH_FUSION_BLOCKS}, got {list(blocks)}"
                         + (f" (unknown: {bad})" if bad else ""))
    return tuple(b for b in GRAPH_FUSION_BLOCKS if b in blocks)


class GraphFusion(nn.Module):
    """Graph-enhanced vascular fusion (paper sec. 3.4-3.10).

    Image (sec. 3.4): MobileNetV3 features_only last level -> 1x1 conv-BN-ReLU to d (keeps the dilated block at
        d x d instead of 960 x d weights) -> the enhancement blocks of ``blocks``, in this order:
        "se"      SqueezeExcite (eqs. 6-8) on the d-channel map: the paper's SE augmentation (sec. 3.3, 4.4
                  "MobileNetV3 without SE augmentation"); MobileNetV3's own inverted-residual SE layers are
                  part of the backbone and stay in every configuration;
        "dilated" DilatedConvBlock (eq. 5, dilations 1, 2, 3; sec. 3.4.1);
        "cbam"    CBAM (channel + spatial attention);
        -> global average pool = z_img (d). ``blocks=()`` is Table 6's "MobileNetV3 baseline"; any subset is one
        of its ablation rows (a block not in ``blocks`` is not built: no parameters).
    Graph (sec. 3.8): GraphEncoder (BatchNorm, ``gnn_layers`` GCN layers eq. 27, attention pooling ρ) -> ρ(h) (d).
    Stats: s (``stats_dim``), eq. (28).
        z_G = ρ(h) ∥ s with stats on (eq. 28 and the text after it), else ρ(h)
        t_img = P_img z_img, t_G = P_G z_G, t_stat = P_stat s                    eq. (29)
        T0 = [t_cls; t_img; t_G; t_stat] + E_type                               eq. (30), one learned type
                                                                                embedding per token
        T_B = TransformerEncoder(T0) (pre-norm MHSA + FFN, ``fusion_layers``)   eq. (31)
        t_fused = T_B[0] (the cls token)                                        eq. (32)
        logits = W_c Dropout(t_fused) + b_c                                     eq. (33), softmax by callers

    Any non-empty subset of ("image", "graph", "stats") works: absent modalities have no branch and no token.
    ``gradcam_layer`` = the last image block built (``cbam``, ``dilated``, ``se`` or ``reduce``; NCHW); None
    without the image modality. Edge attributes are not used (eq. 27).
    """

    def __init__(self, *, num_classes: int, pretrained: bool, input_size: int, dropout: float, backbone: str,
                 hidden_dim: int, heads: int, fusion_layers: int, node_features: int, gnn_layers: int,
                 stats_dim: int, modalities: tuple[str, ...],
                 blocks: tuple[str, ...] = GRAPH_FUSION_BLOCKS) -> None:
        super().__init__()
        d = hidden_dim
        self.modalities = modalities
        self.input_size, self.node_features, self.stats_dim = input_size, node_features, stats_dim
        self.gradcam_layout = "NCHW"
        self.blocks = blocks
        self.image_encoder: nn.Module | None = None
        self.se: nn.Module | None = None
        self.dilated: nn.Module | None = None
        self.cbam: nn.Module | None = None
        if "image" in modalities:
            self.image_encoder = feature_encoder(backbone, "backbone", pretrained=pretrained, in_chans=3,
                                                 input_size=input_size)
            c = self.image_encoder.feature_info.channels()[-1]
            self.reduce = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
            if "se" in blocks:
                self.se = SqueezeExcite(d)
            if "dilated" in blocks:
                self.dilated = DilatedConvBlock(d, d, dilations=(1, 2, 3))
            if "cbam" in blocks:
                self.cbam = CBAM(d)
            self.proj_img = nn.Linear(d, d)
        self.gnn: GraphEncoder | None = None
        if "graph" in modalities:
            self.gnn = GraphEncoder(node_features, d, gnn_layers, dropout)
            self.proj_graph = nn.Linear(d + (stats_dim if "stats" in modalities else 0), d)
        if "stats" in modalities:
            self.proj_stats = nn.Linear(stats_dim, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.type_embed = nn.Parameter(torch.zeros(1, 1 + len(modalities), d))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, fusion_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module | None:
        if self.image_encoder is None:
            return None
        return next(m for m in (self.cbam, self.dilated, self.se, self.reduce) if m is not None)

    def image_map(self, x: torch.Tensor) -> torch.Tensor:
        """The enhanced image feature map (B, d, h, w): backbone -> reduce -> the ``blocks`` (se, dilated, cbam)."""
        m = self.reduce(last_features(self.image_encoder, x))
        for block in (self.se, self.dilated, self.cbam):
            if block is not None:
                m = block(m)
        return m

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        tokens: list[torch.Tensor] = []
        sizes: dict[str, int] = {}
        s = None
        if "stats" in self.modalities:
            s = check_tensor("stats", batch_entry(batch, "stats", self.modalities), (None, self.stats_dim),
                             f"(B, {self.stats_dim}) (stats_dim)")
            sizes["stats"] = s.shape[0]
        if self.image_encoder is not None:
            x = batch_image(batch, self.modalities, self.input_size)
            sizes["image"] = x.shape[0]
            tokens.append(self.proj_img(self.image_map(x).mean(dim=(2, 3))))  # t_img, eq. (29)
        if self.gnn is not None:
            g = batch_graph(batch, self.modalities)
            sizes["graph"] = int(g.num_graphs)
            agreed_batch_size(sizes)
            z_g = self.gnn(g)  # ρ(h), eq. (28)
            if s is not None:
                z_g = torch.cat([z_g, s.to(z_g.dtype)], dim=1)  # z_G = ρ(h) ∥ s
            tokens.append(self.proj_graph(z_g))  # t_G, eq. (29)
        if s is not None:
            tokens.append(self.proj_stats(s))  # t_stat, eq. (29)
        b = agreed_batch_size(sizes)
        t0 = torch.cat([self.cls_token.expand(b, -1, -1), torch.stack(tokens, dim=1)], dim=1) + self.type_embed
        return self.head(self.drop(self.fusion(t0)[:, 0])).float()  # eqs. (30)-(33)


@register_model("graph_fusion")
def graph_fusion(num_classes: int = 2, pretrained: bool = False, input_size: int = 512, dropout: float = 0.1,
                 backbone: str = "", modalities: Sequence[str] | None = None, hidden_dim: int = 256, heads: int = 4,
                 fusion_layers: int = 2, node_features: int = 6, gnn_layers: int = 3,
                 stats_dim: int = 8, blocks: Sequence[str] = GRAPH_FUSION_BLOCKS) -> GraphFusion:
    """:class:`GraphFusion`: image backbone (default "mobilenetv3_large_100"), GCN over ``node_features`` node
    columns with ``gnn_layers`` layers, ``stats_dim`` biomarkers; modalities any non-empty subset of
    ("image", "graph", "stats"); ``blocks`` any subset of ``GRAPH_FUSION_BLOCKS`` ("se", "dilated", "cbam";
    paper Table 6 ablations; default all three, the full model)."""
    blocks = check_graph_fusion_blocks(blocks)
    backbone = check_timm_name(backbone or "mobilenetv3_large_100", "backbone")
    check_int("num_classes", num_classes, 2)
    check_int("input_size", input_size, MIN_INPUT_SIZE)
    check_int("node_features", node_features)
    check_int("gnn_layers", gnn_layers)
    check_int("stats_dim", stats_dim)
    check_dropout(dropout)
    check_fusion(hidden_dim, heads, fusion_layers, sincos=False)
    mods = check_modalities(modalities, ("image", "graph", "stats"))
    model = GraphFusion(num_classes=num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout,
                        backbone=backbone, hidden_dim=hidden_dim, heads=heads, fusion_layers=fusion_layers,
                        node_features=node_features, gnn_layers=gnn_layers, stats_dim=stats_dim, modalities=mods,
                        blocks=blocks)
    if model.image_encoder is not None:
        mean, std = spec_mean_std(model.image_encoder)
    else:  # no image branch: the backbone's default normalisation still goes into the spec (callers may load images)
        cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(backbone).to_dict())
        mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    model.spec = ModelSpec(name="graph_fusion", in_channels=3, out_channels=num_classes, input_size=input_size,
                           mean=mean, std=std, output="softmax", kwargs=dict(
                               num_classes=num_classes, input_size=input_size, dropout=float(dropout),
                               backbone=backbone, modalities=list(mods), hidden_dim=hidden_dim, heads=heads,
                               fusion_layers=fusion_layers, node_features=node_features, gnn_layers=gnn_layers,
                               stats_dim=stats_dim, blocks=list(blocks)))
    return model
