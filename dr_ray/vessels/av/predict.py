"""Predicting and applying A/V labels on a vessel graph (:func:`predict_av`, :func:`apply_av_labels`); see
:mod:`dr_ray.vessels.av`."""

from __future__ import annotations

import dataclasses

import numpy as np

from dr_ray.vessels.av.classifier import AVClassifier
from dr_ray.vessels.av.features import segment_features
from dr_ray.vessels.av.smoothing import av_links, smooth_av_logits
from dr_ray.vessels.graph import (
    AV_ARTERY,
    AV_CROSSING,
    AV_UNKNOWN,
    AV_VEIN,
    NODE_FEATURES,
    VesselGraph,
)


def predict_av(graph: VesselGraph, image: np.ndarray, mask: np.ndarray, classifier: AVClassifier, *,
               smoothing: float = 0.8) -> np.ndarray:
    """(E,) int8 A/V labels (1 artery, 2 vein) of the graph's segments: classifier on
    :func:`segment_features`, then :func:`smooth_av_logits` over :func:`av_links` (``smoothing`` = 0: none)."""
    if graph.n_edges == 0:
        return np.zeros(0, np.int8)
    p = np.clip(classifier.predict_proba(segment_features(graph, image, mask))[:, 1], 1e-9, 1.0 - 1e-9)
    s = smooth_av_logits(np.log(p / (1.0 - p)), av_links(graph), strength=smoothing)
    return np.where(s >= 0.0, AV_VEIN, AV_ARTERY).astype(np.int8)


def apply_av_labels(graph: VesselGraph, edge_labels: np.ndarray) -> VesselGraph:
    """The graph with new edge A/V labels; node labels and ``x``'s A/V column follow.

    edge_labels: (E,) int in {-1 unknown, 1 artery, 2 vein, 3 crossing}. Node label = majority of its incident
    edges' artery/vein labels, 3 on a tie, -1 without any (as :func:`vessel_graph` does with an A/V map).
    """
    labels = np.asarray(edge_labels)
    if labels.shape != (graph.n_edges,):
        raise ValueError(f"edge_labels must be ({graph.n_edges},), got shape {labels.shape}")
    if not np.all(np.isin(labels, (AV_UNKNOWN, AV_ARTERY, AV_VEIN, AV_CROSSING))):
        raise ValueError(f"edge_labels must be in {{-1, 1, 2, 3}}, got {np.unique(labels).tolist()}")
    labels = labels.astype(np.int8)
    src, dst = graph.edges[:, 0], graph.edges[:, 1]
    not_loop = dst != src  # a loop counts once at its node
    inc_node = np.concatenate([src, dst[not_loop]])
    inc_lab = np.concatenate([labels, labels[not_loop]])
    na = np.bincount(inc_node, inc_lab == AV_ARTERY, graph.n_nodes)
    nv = np.bincount(inc_node, inc_lab == AV_VEIN, graph.n_nodes)
    node_av = np.where((na == 0) & (nv == 0), AV_UNKNOWN,
                       np.where(na == nv, AV_CROSSING, np.where(na > nv, AV_ARTERY, AV_VEIN))).astype(np.int8)
    x = graph.x.copy()
    x[:, NODE_FEATURES.index("av_label")] = node_av
    return dataclasses.replace(graph, av_label=labels, node_av=node_av, x=x)
