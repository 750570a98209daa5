"""Reusable attention / convolution blocks of the fusion classifiers (:mod:`dr_ray.models.classifiers`).

    SqueezeExcite        channel recalibration, graph-enhanced vascular fusion paper sec. 3.4.2, eqs. (6)-(8)
                         (Hu et al. 2018).
    CBAM                 channel attention (shared MLP over average- and max-pooled descriptors) followed by
                         spatial attention (7x7 conv over the channel-mean and channel-max maps), Woo et al. 2018.
    DilatedConvBlock     parallel 3x3 convolutions at dilations 1, 2, 3 (eq. (5), paper Fig. 4), concatenated and
                         fused by a 1x1 convolution; spatial size unchanged.
    CrossAttentionBlock  multi-head attention with queries from one token set and keys/values from another,
                         residual + LayerNorm, then a feed-forward net with residual + LayerNorm (post-norm, as
                         in the cross-feature-fusion poster's "Cross Attention Block" and DCAT).
    FeatureTokens        1x1 projection of a feature map to d, per-token LayerNorm, + 2-D position codes.
    sincos_position_embedding_2d
                         fixed 2-D sine/cosine position codes for any token grid (MAE, He et al. 2022), so a
                         model trained at one input size runs at another without interpolating a table.

Convolutions followed by BatchNorm have no bias: BN removes a per-channel constant, so such a bias would
never receive a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _probability(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {v!r}")
    return float(v)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (paper sec. 3.4.2).

    z_c = mean_{i,j} X_c(i, j)              eq. (6), global average pooling
    s   = sigmoid(W2 · ReLU(W1 · z))        eq. (7), bottleneck of ``channels // reduction`` units
    X̂_c = s_c · X_c                         eq. (8)

    forward: ``x: (B, C, H, W)`` float -> ``(B, C, H, W)``, each channel scaled by its weight in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        _positive_int("channels", channels)
        _positive_int("reduction", reduction)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights s of eq. (7): ``(B, C)`` in (0, 1)."""
        z = x.mean(dim=(2, 3))  # eq. (6)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # eq. (7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        return x * self.weights(x)[:, :, None, None]  # eq. (8)


class ChannelAttention(nn.Module):
    """CBAM channel attention: M_c = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one shared MLP (Woo et al. eq. 2).

    forward: ``x: (B, C, H, W)`` -> ``(B, C, 1, 1)`` weights in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: M_s = sigmoid(conv_kxk([mean_c(x); max_c(x)])) (Woo et al. eq. 3).

    forward: ``x: (B, C, H, W)`` -> ``(B, 1, H, W)`` weights in (0, 1).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if _positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): x' = M_c(x) · x, then x'' = M_s(x') · x'.

    Args:
        channels: C of the input.
        reduction: bottleneck ratio of the channel MLP (``max(1, C // reduction)`` hidden units).
        kernel_size: odd side of the spatial-attention convolution (7 in the paper).

    forward: ``x: (B, C, H, W)`` float -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        _positive_int("channels", channels)
        _positive_int("reduction", reduction)
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        x = x * self.channel(x)
        return x * self.spatial(x)


class DilatedConvBlock(nn.Module):
    """Multi-dilation context block (paper sec. 3.4.1, Fig. 4).

    One 3x3 conv-BN-ReLU branch per dilation d (eq. (5): z(p, q) = sum_{h,j} f(p + d·h, q + d·j) g(h, j),
    padding d keeps the H x W size), the branch outputs concatenated on the channel axis and fused by a
    1x1 conv-BN; then ReLU, with a residual connection when ``in_channels == out_channels``.

    Args:
        in_channels / out_channels: C_in, C_out.
        dilations: the dilation rates (default 1, 2, 3: receptive fields 3, 5, 7 px of the feature map).
        branch_channels: channels of each branch (default ``out_channels``).

    forward: ``x: (B, C_in, H, W)`` float -> ``(B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2, 3),
                 branch_channels: int | None = None) -> None:
        super().__init__()
        _positive_int("in_channels", in_channels)
        _positive_int("out_channels", out_channels)
        dil = tuple(dilations)
        if not dil or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dil):
            raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations!r}")
        cb = out_channels if branch_channels is None else _positive_int("branch_channels", branch_channels)
        self.dilations = dil
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, cb, 3, padding=d, dilation=d, bias=False),
                          nn.BatchNorm2d(cb), nn.ReLU(inplace=True))
            for d in dil)
        self.fuse = nn.Sequential(nn.Conv2d(cb * len(dil), out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        y = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(y + x if self.residual else y)


class CrossAttentionBlock(nn.Module):
    """Cross-attention of a query token set over a key/value token set (post-norm transformer layer).

        x = LayerNorm(x + Dropout(MHA(q=x, k=y, v=y)))
        x = LayerNorm(x + Dropout(FFN(x)))        FFN: Linear(d, ffn_ratio·d) - GELU - Dropout - Linear(·, d)

    Args:
        dim: token width d (``dim % heads == 0``).
        heads: attention heads.
        dropout: on the attention weights, the FFN hidden layer and both residual branches.
        ffn_ratio: FFN hidden width / d.

    forward: ``x: (B, N, d)`` queries, ``y: (B, M, d)`` keys/values -> ``(B, N, d)``.
    ``attention(x, y)`` returns the head-averaged attention weights ``(B, N, M)`` (rows sum to 1).
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1, ffn_ratio: int = 4) -> None:
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("heads", heads)
        _positive_int("ffn_ratio", ffn_ratio)
        _probability("dropout", dropout)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_ratio * dim, dim))
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        d = self.norm1.normalized_shape[0]
        if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[-1] != d or y.shape[-1] != d:
            raise ValueError(f"x and y must be (B, N, {d}) and (B, M, {d}), got {tuple(x.shape)} and {tuple(y.shape)}")

    def attention(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention weights ``(B, N, M)`` of the queries ``x`` over the keys ``y``."""
        self._check(x, y)
        return self.attn(x, y, y, need_weights=True, average_attn_weights=True)[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        a = self.attn(x, y, y, need_weights=False)[0]
        x = self.norm1(x + self.drop1(a))
        return self.norm2(x + self.drop2(self.ffn(x)))


def sincos_position_embedding_2d(h: int, w: int, dim: int, *, temperature: float = 10000.0,
                                 device: torch.device | str | None = None,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes: ``(h * w, dim)``, row-major over the h x w grid.

    The first half of the channels encodes the row, the second half the column, each as
    [sin(pos·ω_k), cos(pos·ω_k)] with ω_k = temperature^(-k / (dim/4)), k = 0..dim/4-1 (MAE's
    ``get_2d_sincos_pos_embed``). ``dim`` must be divisible by 4. Values in [-1, 1]; no parameters.
    """
    _positive_int("h", h)
    _positive_int("w", w)
    if _positive_int("dim", dim) % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sine-cosine codes, got {dim}")
    q = dim // 4
    omega = 1.0 / temperature ** (torch.arange(q, device=device, dtype=torch.float64) / q)
    rows = torch.arange(h, device=device, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, device=device, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)
    out = [torch.sin(rows[:, None] * omega), torch.cos(rows[:, None] * omega),
           torch.sin(cols[:, None] * omega), torch.cos(cols[:, None] * omega)]
    return torch.cat(out, dim=1).to(dtype)


class FeatureTokens(nn.Module):
    """Feature map -> position-coded tokens: 1x1 conv to ``dim``, optional adaptive average pooling to ``size``,
    LayerNorm per token, plus :func:`sincos_position_embedding_2d`.

    The LayerNorm brings every token to unit RMS before the codes (RMS 1/sqrt(2)) are added: the last stage of an
    untrained timm backbone in eval mode gives projected features of RMS ~0.03, which the codes would drown.

    forward: ``f: (B, C, h, w)`` -> ``(B, h'·w', dim)`` row-major tokens ((h', w') = ``size`` or (h, w)).
    """

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        _positive_int("in_channels", in_channels)
        if _positive_int("dim", dim) % 4:
            raise ValueError(f"dim must be divisible by 4 for 2-D sine-cosine codes, got {dim}")
        self.proj = nn.Conv2d(in_channels, dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if f.ndim != 4:
            raise ValueError(f"f must be (B, C, h, w), got shape {tuple(f.shape)}")
        t = self.proj(f)
        if size is not None and tuple(t.shape[2:]) != tuple(size):
            t = F.adaptive_avg_pool2d(t, size)
        h, w = t.shape[2], t.shape[3]
        pos = sincos_position_embedding_2d(h, w, t.shape[1], device=t.device, dtype=t.dtype)
        return self.norm(map_to_tokens(t)) + pos


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` tokens, row-major (the order of :func:`sincos_position_embedding_2d`)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H*W, C)`` row-major tokens -> ``(B, C, H, W)``."""
    if t.ndim != 3 or t.shape[1] != h * w:
        raise ValueError(f"t must be (B, {h * w}, C) for a {h}x{w} grid, got {tuple(t.shape)}")
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


__all__ = ["CBAM", "ChannelAttention", "CrossAttentionBlock", "DilatedConvBlock", "FeatureTokens", "SpatialAttention",
           "SqueezeExcite", "map_to_tokens", "sincos_position_embedding_2d", "tokens_to_map"]
