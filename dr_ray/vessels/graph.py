"""Vessel mask -> vessel graph (nodes = junctions/endpoints, edges = vessel segments) with skan.

Paper sect. 3.5 / eq. 26: node features ``x_i = [c_i, g_i^con, g_i^ent, t_i]`` (calibre, GLCM contrast,
GLCM entropy, artery/vein label); we append degree and node kind.

Coordinates: ``pos`` is (x, y) = (column, row) in px, as in :mod:`dr_ray.testing.fundus`; ``edge_paths``
hold (row, col) pixel indices, as skan and NumPy indexing do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import skan
from scipy import ndimage
from skimage.morphology import skeletonize

from dr_ray.vessels.texture import glcm_features

NODE_JUNCTION, NODE_ENDPOINT, NODE_OTHER = 1, 2, 0
AV_UNKNOWN, AV_ARTERY, AV_VEIN, AV_CROSSING = -1, 1, 2, 3

# Column order of VesselGraph.x (eq. 26 first, then graph structure).
NODE_FEATURES = ("caliber_px", "glcm_contrast", "glcm_entropy", "av_label", "degree", "kind")
# Column order of VesselGraph.edge_attr.
EDGE_FEATURES = ("length_px", "arc_length_px", "caliber_mean_px", "caliber_median_px", "tortuosity",
                 "curvature_rad_per_px",
                 "av_label", "mean_r", "mean_g", "mean_b")


@dataclass(frozen=True, eq=False)
class VesselGraph:
    """An undirected vessel graph; N nodes, E edges (each vessel segment once in the per-edge arrays).

    Node arrays (N rows): ``x`` (N, 6) float32, columns ``NODE_FEATURES`` = [mean calibre of incident
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
                             self.tortuosity,
                             self.curvature, self.av_label.astype(np.float64), self.mean_rgb]
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


def _empty_graph(shape: tuple[int, int], skeleton: np.ndarray) -> VesselGraph:
    f = np.zeros(0, np.float64)
    return VesselGraph(shape=shape, pos=np.zeros((0, 2), np.float32), node_kind=np.zeros(0, np.int8),
                       node_degree=np.zeros(0, np.int32), node_av=np.zeros(0, np.int8),
                       x=np.zeros((0, len(NODE_FEATURES)), np.float32), edges=np.zeros((0, 2), np.int64),
                       length_px=f, arc_length_px=f.copy(), chord_px=f.copy(), caliber_mean_px=f.copy(),
                       caliber_median_px=f.copy(),
                       tortuosity=f.copy(), curvature=f.copy(), av_label=np.zeros(0, np.int8),
                       mean_rgb=np.zeros((0, 3)), branch_type=np.zeros(0, np.int8), edge_paths=(),
                       skeleton=skeleton)


def _summarize(skel: skan.Skeleton):
    # skan 0.13 renames its columns with DataFrame.rename(inplace=True), which pandas 3.x deprecates;
    # that warning is skan's, not ours (pinned skan; the result is unaffected).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword", category=DeprecationWarning)
        return skan.summarize(skel, separator="_")


def _prune_spurs(skel: skan.Skeleton, prune_spur_px: float, max_rounds: int = 10) -> skan.Skeleton:
    """Iteratively remove junction-endpoint branches shorter than ``prune_spur_px``.

    Each round, at a junction of degree d at most d - 2 spurs (the shortest) are removed, so a junction
    whose branches are all short keeps its two longest and becomes a path point: pruning shortens the tree
    but never deletes a whole component. Removing a spur can turn its junction into a path point and join
    the two remaining branches, so rounds repeat until nothing changes (at most ``max_rounds``).
    """
    for _ in range(max_rounds):
        df = _summarize(skel)
        cand = df[(df["branch_type"] == 1) & (df["branch_distance"] < prune_spur_px)]
        if cand.empty:
            break
        # summarize's index is the path index that prune_paths expects; shortest spurs first
        by_junction: dict[int, list[int]] = {}
        for path_i, row in cand.sort_values("branch_distance").iterrows():
            src, dst = int(row["node_id_src"]), int(row["node_id_dst"])
            junction = src if skel.degrees[src] >= 3 else dst
            by_junction.setdefault(junction, []).append(int(path_i))
        to_prune = []
        for junction, rows in by_junction.items():
            to_prune += rows[: max(int(skel.degrees[junction]) - 2, 0)]
        if not to_prune:
            break
        skel = skel.prune_paths(np.asarray(sorted(to_prune)))
        if skel.coordinates.shape[0] == 0:
            break
    return skel


def _smoothed_length(path_rc: np.ndarray, sigma: float = 1.0) -> float:
    """Length (px) of the path after Gaussian smoothing along it: removes the 8-connected staircase bias."""
    if len(path_rc) < 2:
        return 0.0
    p = ndimage.gaussian_filter1d(path_rc.astype(np.float64), sigma, axis=0, mode="nearest")
    p[0], p[-1] = path_rc[0], path_rc[-1]  # keep the true end points (smoothing pulls them inward)
    return float(np.hypot(*np.diff(p, axis=0).T).sum())


def _curvature(path_rc: np.ndarray, length: float, sigma: float = 2.0) -> float:
    """Mean absolute turning angle per unit length (rad/px) of the Gaussian-smoothed (sigma px) path."""
    if len(path_rc) < 3 or length <= 0:
        return float("nan")
    p = ndimage.gaussian_filter1d(path_rc.astype(np.float64), sigma, axis=0, mode="nearest")
    d = np.diff(p, axis=0)
    d = d[np.hypot(d[:, 0], d[:, 1]) > 1e-9]
    if len(d) < 2:
        return float("nan")
    theta = np.arctan2(d[:, 0], d[:, 1])
    turn = np.angle(np.exp(1j * np.diff(theta)))
    return float(np.abs(turn).sum() / length)


def _majority_av(labels: np.ndarray) -> int:
    """Majority of artery (1) / vein (2) votes; background (0) and crossing (3) pixels do not vote."""
    a, v = int(np.count_nonzero(labels == AV_ARTERY)), int(np.count_nonzero(labels == AV_VEIN))
    if a == 0 and v == 0:
        return AV_UNKNOWN
    return AV_ARTERY if a >= v else AV_VEIN


def _node_av(edge_labels: list[int]) -> int:
    """Node label from its incident edges: the majority of known A/V labels, 3 (crossing) on a tie."""
    a, v = edge_labels.count(AV_ARTERY), edge_labels.count(AV_VEIN)
    if a == 0 and v == 0:
        return AV_UNKNOWN
    if a == v:
        return AV_CROSSING
    return AV_ARTERY if a > v else AV_VEIN


def vessel_graph(mask: np.ndarray, *, prune_spur_px: float = 10.0, merge_junctions_px: float = 2.0,
                 image: np.ndarray | None = None, av_map: np.ndarray | None = None,
                 patch_px: int = 15, glcm_levels: int = 32) -> VesselGraph:
    """Skeletonise a vessel mask and describe it as a graph (nodes = junctions and endpoints).

    Steps: ``skimage.morphology.skeletonize``; isolated single skeleton pixels are dropped (no length);
    ``skan.Skeleton``; spur pruning (:func:`_prune_spurs`, iterative); junction clusters (adjacent junction
    pixels that skan links by 1-2 px junction-junction branches) are contracted into one node when the
    linking branch is <= ``merge_junctions_px`` long (that branch and its length are dropped; its end
    nodes share the mean position). Calibre at a skeleton pixel is ``2 * d - 1`` px, with d the
    Euclidean distance transform of the mask: d is measured to the nearest *background pixel centre*, so
    a run of w foreground pixels has d = (w + 1) / 2 at its centre and ``2 d - 1 = w``.

    Args:
        mask: (H, W) bool vessel mask.
        prune_spur_px: junction-endpoint branches shorter than this (px, skan branch distance) are removed;
            0 disables pruning.
        merge_junctions_px: contract junction-junction branches up to this length (px); 0 disables.
        image: (H, W, 3) uint8 RGB, optional: mean edge colour and node GLCM (green channel) come from it.
        av_map: (H, W) int, optional: 0 background, 1 artery, 2 vein, 3 crossing. Edges get the majority
            artery/vein label of their skeleton pixels; nodes the majority of their incident edges (3 on a
            tie, e.g. a crossing with two artery and two vein branches); -1 where unknown.
        patch_px: side of the square green-channel patch around each node for GLCM (px, odd >= 3).
        glcm_levels: grey levels for the node GLCM.

    Returns:
        :class:`VesselGraph`; an empty mask (or one whose skeleton is only isolated pixels) gives a graph
        with 0 nodes and 0 edges.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    if prune_spur_px < 0:
        raise ValueError(f"prune_spur_px must be >= 0, got {prune_spur_px}")
    if merge_junctions_px < 0:
        raise ValueError(f"merge_junctions_px must be >= 0, got {merge_junctions_px}")
    if patch_px < 3 or patch_px % 2 == 0:
        raise ValueError(f"patch_px must be an odd int >= 3, got {patch_px}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != (*shape, 3) or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 matching mask {shape}, got shape {image.shape} "
                             f"dtype {image.dtype}")
    if av_map is not None:
        av_map = np.asarray(av_map)
        if av_map.shape != shape:
            raise ValueError(f"av_map shape {av_map.shape} does not match mask shape {shape}")

    skel_img = skeletonize(mask)
    # A 1-pixel skeleton component has no branch; skan cannot represent it.
    nbrs = ndimage.convolve(skel_img.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    skel_img &= nbrs > 1
    if not skel_img.any():
        return _empty_graph(shape, skel_img)

    skel = skan.Skeleton(skel_img)
    if prune_spur_px > 0:
        skel = _prune_spurs(skel, prune_spur_px)
    pruned_img = np.zeros(shape, bool)
    if skel.coordinates.shape[0] == 0:
        return _empty_graph(shape, pruned_img)
    coords_all = np.round(skel.coordinates).astype(np.int64)
    pruned_img[coords_all[:, 0], coords_all[:, 1]] = True
    df = _summarize(skel)
    if df.empty:
        return _empty_graph(shape, pruned_img)
    src = df["node_id_src"].to_numpy(np.int64)
    dst = df["node_id_dst"].to_numpy(np.int64)
    btype = df["branch_type"].to_numpy(np.int64)
    blen = df["branch_distance"].to_numpy(np.float64)

    # Contract short junction-junction branches (junction clusters) with a union-find over pixel ids.
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    keep = np.ones(len(df), bool)
    if merge_junctions_px > 0:
        for i in np.flatnonzero((btype == 2) & (blen <= merge_junctions_px) & (src != dst)):
            ra, rb = find(int(src[i])), find(int(dst[i]))
            if ra != rb:
                parent[ra] = rb
                keep[i] = False
    kept = np.flatnonzero(keep)
    groups: dict[int, list[int]] = {}
    for pid in np.unique(np.concatenate([src[kept], dst[kept]])):
        groups.setdefault(find(int(pid)), []).append(int(pid))
    roots = sorted(groups)
    node_of_root = {r: k for k, r in enumerate(roots)}
    n_nodes = len(roots)
    pos = np.zeros((n_nodes, 2), np.float64)
    for r, members in groups.items():
        rc = skel.coordinates[members].mean(axis=0)
        pos[node_of_root[r]] = (rc[1], rc[0])
    e_src = np.array([node_of_root[find(int(s))] for s in src[kept]], np.int64)
    e_dst = np.array([node_of_root[find(int(d))] for d in dst[kept]], np.int64)
    n_edges = len(kept)

    dist = ndimage.distance_transform_edt(mask)
    lengths = blen[kept]
    chord = df["euclidean_distance"].to_numpy(np.float64)[kept]
    arc = np.empty(n_edges)
    cal_mean = np.empty(n_edges)
    cal_median = np.empty(n_edges)
    curv = np.empty(n_edges)
    av_e = np.full(n_edges, AV_UNKNOWN, np.int8)
    rgb = np.full((n_edges, 3), np.nan)
    paths = []
    for k, i in enumerate(kept):
        rc = np.round(skel.path_coordinates(int(i))).astype(np.int64)
        paths.append(rc.astype(np.int32))
        cal = 2.0 * dist[rc[:, 0], rc[:, 1]] - 1.0
        cal_mean[k], cal_median[k] = cal.mean(), np.median(cal)
        arc[k] = _smoothed_length(rc)
        curv[k] = _curvature(rc, arc[k])
        if av_map is not None:
            av_e[k] = _majority_av(av_map[rc[:, 0], rc[:, 1]])
        if image is not None:
            rgb[k] = image[rc[:, 0], rc[:, 1]].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tort = np.where(chord >= 1.0, arc / np.maximum(chord, 1e-12), np.nan)

    # Node attributes: degree in the contracted graph (loops count twice), kind from the degree.
    degree = np.bincount(np.concatenate([e_src, e_dst]), minlength=n_nodes).astype(np.int32)
    kind = np.where(degree >= 3, NODE_JUNCTION, np.where(degree == 1, NODE_ENDPOINT, NODE_OTHER)).astype(np.int8)
    incident: list[list[int]] = [[] for _ in range(n_nodes)]
    for k in range(n_edges):
        incident[e_src[k]].append(k)
        if e_dst[k] != e_src[k]:
            incident[e_dst[k]].append(k)
    node_cal = np.array([cal_mean[inc].mean() if inc else np.nan for inc in incident])
    node_av = np.array([_node_av([int(av_e[k]) for k in inc]) for inc in incident], np.int8)
    g_con = np.full(n_nodes, np.nan)
    g_ent = np.full(n_nodes, np.nan)
    if image is not None:
        green = image[..., 1]
        h = patch_px // 2
        for n in range(n_nodes):
            c, r = int(round(pos[n, 0])), int(round(pos[n, 1]))
            patch = green[max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1]
            f = glcm_features(patch, levels=glcm_levels)
            g_con[n], g_ent[n] = f["contrast"], f["entropy"]
    x = np.column_stack([node_cal, g_con, g_ent, node_av, degree, kind]).astype(np.float32)
    return VesselGraph(shape=shape, pos=pos.astype(np.float32), node_kind=kind, node_degree=degree,
                       node_av=node_av, x=x.reshape(n_nodes, len(NODE_FEATURES)),
                       edges=np.column_stack([e_src, e_dst]).reshape(-1, 2).astype(np.int64),
                       length_px=lengths, arc_length_px=arc, chord_px=chord, caliber_mean_px=cal_mean,
                       caliber_median_px=cal_median,
                       tortuosity=tort, curvature=curv, av_label=av_e, mean_rgb=rgb,
                       branch_type=btype[kept].astype(np.int8), edge_paths=tuple(paths), skeleton=pruned_img)
