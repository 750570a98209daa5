"""What :func:`~dr_ray.testing.fundus.make_fundus` returns: :class:`SyntheticFundus` and the codes its arrays use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


STYLES = ("centered", "eyepacs")
EYES = ("left", "right")

NODE_ROOT, NODE_JUNCTION, NODE_ENDPOINT = 0, 1, 2
ARTERY, VEIN, CROSSING = 1, 2, 3


@dataclass(frozen=True, eq=False)
class SyntheticFundus:
    """One synthetic fundus frame and its ground truth (see the module docstring for conventions).

    ``eq=False``: instances compare by identity; compare the arrays with ``np.array_equal``.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole camera frame
    fov_mask: np.ndarray  # (H, W) bool, fundus pixels inside the frame (circle minus notch, clipped to the frame)
    vessel_mask: np.ndarray  # (H, W) bool, the vessel tree
    av_map: np.ndarray  # (H, W) uint8: 0 background, 1 artery, 2 vein, 3 crossing (both)
    lesion_masks: dict[str, np.ndarray]  # LESION_KINDS -> (H, W) bool
    grade: int  # ICDR 0-4 implied by the lesion load
    fov_center: tuple[float, float]  # (cx, cy) px; the circle may extend beyond the frame
    fov_radius: float  # px
    disc_center: tuple[float, float]  # (x, y) px
    disc_radius: float  # px
    macula_center: tuple[float, float]  # (x, y) px, the fovea
    nodes: np.ndarray  # (N, 2) float64 (x, y) px: roots at the disc, junctions, endpoints
    node_kind: np.ndarray  # (N,) uint8: 0 root, 1 junction (degree 3), 2 endpoint (degree 1)
    edges: np.ndarray  # (E, 2) int64 (parent, child) node indices, one per drawn segment
    edge_width_px: np.ndarray  # (E,) float64, drawn diameter (constant along a segment)
    edge_av: np.ndarray  # (E,) uint8, 1 artery / 2 vein
    edge_length_px: np.ndarray  # (E,) float64, centreline polyline length as drawn
    eye: str  # "left" | "right"
    # E arrays (K_e, 2) float64 (x, y): each segment's centreline as drawn, from parent to child node
    edge_polylines: tuple[np.ndarray, ...]

    @property
    def n_roots(self) -> int:
        """Number of vessel trees (one root node each)."""
        return int(np.count_nonzero(self.node_kind == NODE_ROOT))
