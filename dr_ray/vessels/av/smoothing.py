"""Graph context for A/V labels: segment links (:func:`av_links`) and log-odds smoothing
(:func:`smooth_av_logits`); see :mod:`dr_ray.vessels.av`."""

from __future__ import annotations

import math

import numpy as np

from dr_ray.vessels.graph import VesselGraph


def _out_direction(path_rc: np.ndarray, from_start: bool, reach: float) -> np.ndarray | None:
    """Unit (row, col) direction of a path leaving its start (or end) node, over ``reach`` px of path."""
    p = path_rc if from_start else path_rc[::-1]
    k = min(len(p) - 1, max(1, round(reach)))
    if k < 1:
        return None
    v = (p[k] - p[0]).astype(np.float64)
    n = math.hypot(v[0], v[1])
    return v / n if n > 0 else None


def av_links(graph: VesselGraph, *, crossing_factor: float = 2.5) -> np.ndarray:
    """Pairs of segments that should share the artery/vein type: (L, 2) int64 edge indices.

    * a degree-3 node is a bifurcation: its three segments are linked pairwise;
    * a crossing is a degree-4 node, or two degree-3 nodes joined by a segment no longer than
      ``crossing_factor`` x the widest other segment there (+2 px; skeletonisation splits most crossings so).
      Its four outer segments are paired so that the two pairs are as collinear as possible (a vessel
      crosses straight over another); the joining segment is left unlinked.
    Nodes of degree 1, 2 or >= 5 and self-loops give no links.
    """
    if crossing_factor < 0:
        raise ValueError(f"crossing_factor must be >= 0, got {crossing_factor}")
    n_nodes = graph.n_nodes
    edges = graph.edges.tolist()  # Python ints: the loops below touch every edge and node
    inc: list[list[int]] = [[] for _ in range(n_nodes)]
    for e, (u, v) in enumerate(edges):
        if u != v:
            inc[u].append(e)
            inc[v].append(e)
    cal = graph.caliber_mean_px
    arc_l = graph.arc_length_px.tolist()
    links: list[tuple[int, int]] = []
    in_crossing = [False] * n_nodes
    crossings: list[tuple[list[int], list[int]]] = []  # (nodes, four outer edges)
    for e, (u, v) in enumerate(edges):
        if u == v or len(inc[u]) != 3 or len(inc[v]) != 3 or in_crossing[u] or in_crossing[v]:
            continue
        outer = [f for f in inc[u] + inc[v] if f != e]
        if len(outer) == 4 and arc_l[e] <= crossing_factor * float(np.max(cal[outer])) + 2.0:
            crossings.append(([u, v], outer))
            in_crossing[u] = in_crossing[v] = True
    for n in range(n_nodes):
        if in_crossing[n]:
            continue
        if len(inc[n]) == 3:
            a, b, c = inc[n]
            links += [(a, b), (a, c), (b, c)]
        elif len(inc[n]) == 4:
            crossings.append(([n], list(inc[n])))
    for nodes, outer in crossings:
        dirs = []
        for f in outer:
            node = next(m for m in nodes if m in edges[f])
            dirs.append(_out_direction(graph.edge_paths[f], edges[f][0] == node, max(4.0, 2.0 * cal[f])))
        if any(d is None for d in dirs):
            continue
        # straight continuation: outgoing directions opposite, i.e. the most negative dot products
        best = min((((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))),
                   key=lambda pq: float(dirs[pq[0][0]] @ dirs[pq[0][1]] + dirs[pq[1][0]] @ dirs[pq[1][1]]))
        links += [(outer[i], outer[j]) for i, j in best]
    return np.asarray(links, np.int64).reshape(-1, 2)


def smooth_av_logits(logits: np.ndarray, links: np.ndarray, *, strength: float = 0.8,
                     iterations: int = 50) -> np.ndarray:
    """Graph smoothing of per-segment log-odds of "vein": s = logit + strength * mean(s of linked segments),
    iterated (a Jacobi sweep of that linear system; converges for strength < 1).

    logits: (E,) float; links: (L, 2) int edge index pairs (:func:`av_links`). Returns (E,) float64.
    """
    logits = np.asarray(logits, np.float64)
    links = np.asarray(links, np.int64).reshape(-1, 2)
    if logits.ndim != 1:
        raise ValueError(f"logits must be 1-D (E,), got shape {logits.shape}")
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if links.size and (links.min() < 0 or links.max() >= len(logits)):
        raise ValueError(f"links index outside 0..{len(logits) - 1}")
    if links.size == 0 or strength == 0.0:
        return logits.copy()
    a = np.concatenate([links[:, 0], links[:, 1]])
    b = np.concatenate([links[:, 1], links[:, 0]])
    deg = np.maximum(np.bincount(a, minlength=len(logits)), 1)
    s = logits.copy()
    for _ in range(iterations):
        s = logits + strength * np.bincount(a, weights=s[b], minlength=len(logits)) / deg
    return s
