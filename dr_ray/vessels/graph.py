"""The vessel graph's data type: :class:`VesselGraph` (nodes = junctions/endpoints, edges = vessel segments),
its node-kind and artery/vein codes, the column order of its node features (paper sect. 3.5 / eq. 26:
``x_i = [c_i, g_i^con, g_i^ent, t_i]``, caliber, GLCM contrast, GLCM entropy, artery/vein label; we append degree
and node kind) and edge features, its torch_geometric views and its flat-array export for Parquet rows;
:func:`~dr_ray.vessels.graph_build.vessel_graph` builds one from a mask. Coordinates: ``pos`` is (x, y) =
(column, row) in px, as in :mod:`dr_ray.testing.fundus`; ``edge_paths`` hold (row, col) pixel indices, as skan
and NumPy indexing do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

NODE_JUNCTION, NODE_ENDPOINT, NODE_OTHER = 1, 2, 0
AV_UNKNOWN, AV_ARTERY, AV_VEIN, AV_CROSSING = -1, 1, 2, 3

# Column order of VesselGraph.x (eq. 26 first, then graph structure).
NODE_FEATURES = ("caliber_px", "glcm_contrast", "glcm_entropy", "av_label", "degree", "kind")
# Column order of VesselGraph.edge_attr.
EDGE_FEATURES = ("length_px", "arc_length_px", "caliber_mean_px", "caliber_median_px", "tortuosity",
                 "curvature_rad_per_px", "av_label", "mean_r", "mean_g", "mean_b")


@dataclass(frozen=True, eq=False)
class VesselGraph:
    """An undirected vessel graph; N nodes, E edges (each vessel segment once in the per-edge arrays).

    Node arrays (N rows): ``x`` (N, 6) float32, columns ``NODE_FEATURES`` = [mean caliber of incident
    edges (px), GLCM contrast and entropy (bits) of the green patch around the node (NaN without an image),
    A/V label (-1 unknown, 1 artery, 2 vein, 3 crossing), degree, kind (1 junction, 2 endpoint, 0 other:
    a point on an isolated loop)]; ``pos`` (N, 2) float32 (x, y) px; ``node_kind``, ``node_degree``,
    ``node_av`` the same values as named int arrays.

    Edge arrays (E rows): ``edges`` (E, 2) int64 node indices (src, dst); ``length_px`` skan branch
    distance (8-connected path, diagonal steps count sqrt 2: biased ~ +5 % high for random orientations
    compared with the true centreline); ``arc_length_px`` length of the path after Gaussian smoothing
    (sigma 1 px), which removes that staircase bias (a sampled sine: within 0.5 % of the analytic arc length
    where ``length_px`` reads 6 % high); ``chord_px`` euclidean distance between the end pixels (skan);
    ``caliber_mean_px``/``caliber_median_px`` vessel diameter along the path (px); ``tortuosity``
    arc_length_px / chord_px (NaN for loops, chord < 1 px); ``curvature`` mean absolute turning angle of the
    path smoothed with sigma 2 px, per unit arc length (rad/px; NaN for paths under 3 px); ``av_label`` majority of av_map over the path (-1 unknown);
    ``mean_rgb`` (E, 3) mean image colour along the path (NaN without an image); ``branch_type`` skan's
    code (0 endpoint-endpoint, 1 junction-endpoint, 2 junction-junction, 3 loop); ``edge_paths`` E arrays
    (K_e, 2) int32 (row, col) skeleton pixels from src to dst.

    For torch_geometric: ``edge_index`` (2, 2E) int64 has both directions, edge e as column e (src->dst)
    and column E + e (dst->src); ``edge_attr`` (2E, 10) float32, columns ``EDGE_FEATURES``, rows repeated in
    the same order. NaNs are kept (a model must impute them, e.g. with a mask channel).

    ``skeleton`` (H, W) bool is the pruned skeleton the graph was built from (not in :meth:`to_arrays`).
    """

    shape: tuple[int, int]
    pos: np.ndarray
    node_kind: np.ndarray
    node_degree: np.ndarray
    node_av: np.ndarray
    x: np.ndarray
    edges: np.ndarray
    length_px: np.ndarray
    arc_length_px: np.ndarray
    chord_px: np.ndarray
    caliber_mean_px: np.ndarray
    caliber_median_px: np.ndarray
    tortuosity: np.ndarray
    curvature: np.ndarray
    av_label: np.ndarray
    mean_rgb: np.ndarray
    branch_type: np.ndarray
    edge_paths: tuple[np.ndarray, ...]
    skeleton: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def edge_index(self) -> np.ndarray:
        """(2, 2E) int64, both directions: column e is src->dst, column E + e is dst->src."""
        e = self.edges.T.astype(np.int64)
        return np.concatenate([e, e[::-1]], axis=1)

    @property
    def edge_attr(self) -> np.ndarray:
        """(2E, 10) float32, columns ``EDGE_FEATURES``; rows aligned with :attr:`edge_index`."""
        a = np.column_stack([self.length_px, self.arc_length_px, self.caliber_mean_px, self.caliber_median_px,
                             self.tortuosity, self.curvature, self.av_label.astype(np.float64), self.mean_rgb]
                            ).astype(np.float32).reshape(-1, len(EDGE_FEATURES))
        return np.concatenate([a, a], axis=0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat 1-D NumPy arrays for a Parquet row: ``name`` -> ``arr.ravel()`` and ``name + "_shape"`` ->
        int64 shape, for every array field plus ``edge_index``/``edge_attr``; ``edge_paths`` become
        ``edge_path_rc`` (concatenated (row, col) pairs, flattened) and ``edge_path_offsets`` (E + 1,)
        int64 row offsets. ``skeleton`` is left out (regenerate it from the mask)."""
        out: dict[str, np.ndarray] = {"shape": np.asarray(self.shape, np.int64)}
        arrays = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("shape", "edge_paths", "skeleton")}
        arrays["edge_index"] = self.edge_index
        arrays["edge_attr"] = self.edge_attr
        for name, arr in arrays.items():
            out[name] = np.ascontiguousarray(arr).ravel()
            out[name + "_shape"] = np.asarray(arr.shape, np.int64)
        lens = np.array([len(p) for p in self.edge_paths], np.int64)
        out["edge_path_offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        rc = np.concatenate(self.edge_paths) if self.edge_paths else np.zeros((0, 2), np.int32)
        out["edge_path_rc"] = rc.astype(np.int32).ravel()
        return out
