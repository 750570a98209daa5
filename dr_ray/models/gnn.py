"""Vascular-graph encoder (graph-enhanced vascular fusion paper, sec. 3.8) on torch_geometric.

    X                      node features (N, node_features), eq. (26) (caliber, GLCM contrast/entropy, A/V label, ...)
    BatchNorm1d(X)         the node features have unrelated units (px, texture statistics, labels)
    H^(l+1) = ReLU(D̃^-1/2 Ã D̃^-1/2 H^(l) W^(l)), l = 0..layers-1     eq. (27), torch_geometric ``GCNConv``
                           (its defaults add the self loops Ã = A + I and normalise symmetrically), dropout after each
    ρ(H^(L))               attention pooling per graph, eq. (28): ``AttentionalAggregation`` with the gate
                           w^T tanh(V h) of Ilse et al. 2018 -> (B, hidden)

The edge attributes of the batch are not used: eq. (27) propagates over the binary adjacency A.

Empty graphs (an image whose segmentation found no vessel) are valid: the pooled vector of a graph without
nodes is 0, and the output always has ``batch.num_graphs`` rows (``dim_size`` is passed to the pooling).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import GCNConv
from torch_geometric.nn.aggr import AttentionalAggregation

logger = logging.getLogger(__name__)


def _check_int(name: str, v: object, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


class GraphEncoder(nn.Module):
    """GCN encoder with attention pooling: a ``Batch`` of B vascular graphs -> ``(B, hidden)`` embeddings.

    Args:
        node_features: d_x, columns of ``batch.x``.
        hidden: width of every GCN layer and of the pooled embedding.
        layers: number of GCN layers L (>= 1).
        dropout: after every GCN layer.

    forward(batch): ``batch.x (N, node_features)`` float, ``batch.edge_index (2, E)`` int64 (both directions),
    ``batch.batch (N,)`` int64 graph index -> ``(batch.num_graphs, hidden)`` float; 0 rows for empty graphs.

    Input normalisation with fewer than 2 nodes in the whole batch in training mode (where batch statistics
    are undefined) uses the running statistics instead, as in eval mode.
    """

    def __init__(self, node_features: int = 6, hidden: int = 256, layers: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        _check_int("node_features", node_features, 1)
        _check_int("hidden", hidden, 1)
        _check_int("layers", layers, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.node_features = node_features
        self.hidden = hidden
        self.norm = nn.BatchNorm1d(node_features)
        self.convs = nn.ModuleList(GCNConv(node_features if i == 0 else hidden, hidden) for i in range(layers))
        self.drop = nn.Dropout(dropout)
        gate_hidden = max(1, hidden // 2)
        # no bias on the gate's last layer: softmax over the nodes is invariant to it (it would get no gradient)
        self.pool = AttentionalAggregation(gate_nn=nn.Sequential(nn.Linear(hidden, gate_hidden), nn.Tanh(),
                                                                 nn.Linear(gate_hidden, 1, bias=False)))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.norm.running_mean, self.norm.running_var, self.norm.weight, self.norm.bias,
                                training=False, eps=self.norm.eps)
        return self.norm(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        x, edge_index = getattr(batch, "x", None), getattr(batch, "edge_index", None)
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.node_features:
            raise ValueError(f"batch.x must be (N, {self.node_features}) float, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not isinstance(edge_index, torch.Tensor) or edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"batch.edge_index must be (2, E) int64, got "
                             f"{tuple(edge_index.shape) if isinstance(edge_index, torch.Tensor) else edge_index!r}")
        num_graphs = int(batch.num_graphs)
        index = batch.batch if getattr(batch, "batch", None) is not None else \
            torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if index.shape != (x.shape[0],):
            raise ValueError(f"batch.batch must be (N,) = ({x.shape[0]},), got {tuple(index.shape)}")
        h = self._normalise(x.float())
        for conv in self.convs:
            h = self.drop(F.relu(conv(h, edge_index)))  # eq. (27)
        return self.pool(h, index, dim_size=num_graphs)  # ρ of eq. (28)


__all__ = ["GraphEncoder"]
