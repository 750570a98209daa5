"""Vessel mask -> :class:`~dr_ray.vessels.graph.VesselGraph` (:func:`vessel_graph`): the skeleton
(``skimage.morphology.skeletonize``), its 8-connected pixel graph and skan path graph, iterative spur pruning,
and the contraction of junction clusters into single nodes; the per-edge and per-node features come from
:mod:`dr_ray.vessels.graph_features`.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from skan.csr import PathGraph
from skimage.morphology import skeletonize

from dr_ray.vessels.graph import NODE_FEATURES, VesselGraph
from dr_ray.vessels.graph_features import edge_fields, node_fields


def _empty_graph(shape: tuple[int, int], skeleton: np.ndarray) -> VesselGraph:
    f = np.zeros(0, np.float64)
    return VesselGraph(shape=shape, pos=np.zeros((0, 2), np.float32), node_kind=np.zeros(0, np.int8),
                       node_degree=np.zeros(0, np.int32), node_av=np.zeros(0, np.int8),
                       x=np.zeros((0, len(NODE_FEATURES)), np.float32), edges=np.zeros((0, 2), np.int64),
                       length_px=f, arc_length_px=f.copy(), chord_px=f.copy(), caliber_mean_px=f.copy(),
                       caliber_median_px=f.copy(), tortuosity=f.copy(), curvature=f.copy(),
                       av_label=np.zeros(0, np.int8), mean_rgb=np.zeros((0, 3)), branch_type=np.zeros(0, np.int8),
                       edge_paths=(), skeleton=skeleton)


# Neighbour offsets (d_row, d_col) in increasing raveled order, so that each CSR row lists its neighbours
# by increasing pixel id (scipy's canonical order, which skan's graph has); diagonal steps cost sqrt 2.
_NBR = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
_NBR_DIST = np.sqrt((_NBR ** 2).sum(axis=1).astype(np.float64))


def _pixel_csgraph(skel_img: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The 8-connected pixel graph of a skeleton image, as ``skan.csr.skeleton_to_csgraph`` builds it.

    Nodes are the nonzero pixels in raveled order; edge weights are the step lengths (1 or sqrt 2); clusters
    of junction pixels (degree >= 3) keep only a minimum spanning tree of their mutual links (skan's
    ``_mst_junctions``, with the same scipy MST on the same matrix, so ties break the same way). The CSR
    arrays equal skan's (tests check this on real skeletons); neighbours are read from a pixel-id image
    instead of skan's ``map_array`` and per-pixel Python loop, which cost ~10 ms per 1024-px skeleton.

    Returns (graph (N, N) csr float64, coordinates (N, 2) intp (row, col)).
    """
    h, w = skel_img.shape
    flat = np.flatnonzero(skel_img)
    n = len(flat)
    rows, cols = np.divmod(flat, w)
    ids = np.full((h + 2) * (w + 2), -1, np.int32)  # pixel id image with a one-pixel frame, raveled
    centre = (rows + 1) * (w + 2) + cols + 1
    ids[centre] = np.arange(n, dtype=np.int32)
    nbr = ids[centre[:, None] + (_NBR[:, 0] * (w + 2) + _NBR[:, 1])]  # (N, 8), -1 = no neighbour
    has = nbr >= 0
    deg = has.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(deg)])
    dist = np.broadcast_to(_NBR_DIST, nbr.shape)
    graph = sparse.csr_matrix((dist[has], nbr[has], indptr), shape=(n, n))
    junction = deg >= 3
    jj = has & junction[:, None] & junction[nbr]
    if jj.any():
        jgraph = sparse.csr_matrix((dist[jj], nbr[jj], np.concatenate([[0], np.cumsum(jj.sum(axis=1))])),
                                   shape=(n, n))
        mst = csgraph.minimum_spanning_tree(jgraph)
        graph = graph - (jgraph - (mst + mst.T))  # drop the junction links that are not in the tree
    return graph, np.column_stack([rows, cols])


def _path_graph(skel_img: np.ndarray) -> PathGraph:
    """skan's path graph (paths between junctions/endpoints, path lengths, degrees) of a skeleton image."""
    graph, coords = _pixel_csgraph(skel_img)
    return PathGraph.from_graph(adj=graph, node_coordinates=coords)


def _branches(pg: PathGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per path, as ``skan.summarize`` gives them: src and dst pixel ids, branch distance (px),
    branch type (0 endpoint-endpoint, 1 junction-endpoint, 2 junction-junction, 3 loop), euclidean
    distance between the end pixels (px)."""
    ip, ix = pg.paths.indptr, pg.paths.indices
    src, dst = ix[ip[:-1]].astype(np.int64), ix[ip[1:] - 1].astype(np.int64)
    deg = pg.degrees
    kind = np.full(len(src), 2, np.int64)
    kind[(deg[src] == 1) | (deg[dst] == 1)] = 1
    kind[(deg[src] == 1) & (deg[dst] == 1)] = 0
    kind[src == dst] = 3
    d = (pg.node_coordinates[dst] - pg.node_coordinates[src]).astype(np.float64)
    return src, dst, np.asarray(pg.distances, np.float64), kind, np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2)


def _prune_spurs(skel_img: np.ndarray, pg: PathGraph, prune_spur_px: float,
                 max_rounds: int = 10) -> tuple[np.ndarray, PathGraph | None]:
    """Iteratively remove junction-endpoint branches shorter than ``prune_spur_px``.

    Each round, at a junction of degree d at most d - 2 spurs (the shortest) are removed, so a junction
    whose branches are all short keeps its two longest and becomes a path point: pruning shortens the tree
    but never deletes a whole component. Removing a spur can turn its junction into a path point and join
    the two remaining branches, so rounds repeat until nothing changes (at most ``max_rounds``).
    Removal is skan's ``Skeleton.prune_paths``: the spur's non-junction pixels are wiped and the image is
    re-skeletonised (``skeletonize(img) * img``). Returns the pruned image and its path graph (None when
    nothing is left).
    """
    for _ in range(max_rounds):
        src, dst, blen, kind, _ = _branches(pg)
        cand = np.flatnonzero((kind == 1) & (blen < prune_spur_px))
        if len(cand) == 0:
            break
        # shortest spurs first, ties in the order of numpy's default (quicksort) argsort, which is what
        # pandas' sort_values (skan's summary table, used before) calls
        cand = cand[np.argsort(blen[cand], kind="quicksort")]
        by_junction: dict[int, list[int]] = {}
        for path_i in cand.tolist():
            junction = int(src[path_i]) if pg.degrees[src[path_i]] >= 3 else int(dst[path_i])
            by_junction.setdefault(junction, []).append(path_i)
        to_prune = []
        for junction, paths in by_junction.items():
            to_prune += paths[: max(int(pg.degrees[junction]) - 2, 0)]
        if not to_prune:
            break
        img = skel_img.copy()
        ip, ix = pg.paths.indptr, pg.paths.indices
        for i in sorted(to_prune):
            px = ix[ip[i]:ip[i + 1]]
            px = px[pg.degrees[px] <= 2]
            img[pg.node_coordinates[px, 0], pg.node_coordinates[px, 1]] = False
        skel_img = skeletonize(img) & img
        if not skel_img.any():
            return skel_img, None
        pg = _path_graph(skel_img)
    return skel_img, pg


def _skeleton_paths(mask: np.ndarray, prune_spur_px: float) -> tuple[np.ndarray, PathGraph | None]:
    """The mask's skeleton without isolated single pixels (no length; skan cannot represent them), spurs
    pruned when ``prune_spur_px`` > 0 (:func:`_prune_spurs`), and its path graph (None when it is empty)."""
    skel_img = np.zeros(mask.shape, bool)
    rows_any, cols_any = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows_any):
        # thinning only sees 3 x 3 neighbourhoods, outside = background: the bounding box gives the same skeleton
        box = (slice(rows_any[0], rows_any[-1] + 1), slice(cols_any[0], cols_any[-1] + 1))
        skel_img[box] = skeletonize(mask[box])
    skel_img &= cv2.filter2D(skel_img.view(np.uint8), -1, np.ones((3, 3), np.float32),
                             borderType=cv2.BORDER_CONSTANT) > 1  # 8-neighbour count + 1
    if not skel_img.any():
        return skel_img, None
    pg = _path_graph(skel_img)
    return _prune_spurs(skel_img, pg, prune_spur_px) if prune_spur_px > 0 else (skel_img, pg)


def _junction_clusters(src: np.ndarray, dst: np.ndarray, blen: np.ndarray, btype: np.ndarray, n_px: int,
                       merge_junctions_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Contract short junction-junction paths: kept (ids of the paths that stay edges, increasing) and root
    (n_px,) (each pixel's cluster representative, itself outside clusters; these fix the node order).

    In path order, a non-loop junction-junction path <= ``merge_junctions_px`` long is dropped when it joins
    two clusters, else kept (a loop), so the dropped ones are the MST with weight = path index. A cluster's
    representative is the union-find root (src side put under dst side at each contraction): that of the dst
    side of its last contracted path, found by descending, all clusters at once (``connected_components``)."""
    cand = np.flatnonzero((btype == 2) & (blen <= merge_junctions_px) & (src != dst) & (merge_junctions_px > 0))
    lo, hi = np.minimum(src[cand], dst[cand]), np.maximum(src[cand], dst[cand])
    first = np.unique(lo * n_px + hi, return_index=True)[1]  # a later parallel candidate closes a cycle
    forest = csgraph.minimum_spanning_tree(sparse.coo_matrix((cand[first] + 1.0, (lo[first], hi[first])),
                                                             shape=(n_px, n_px)))
    tree = np.sort(forest.tocoo().data.astype(np.int64) - 1)  # contracted paths, in path order
    ts, td = src[tree], dst[tree]
    comp = csgraph.connected_components(forest, directed=False)[1]
    comp_root, active, lab = np.full(n_px, -1), np.ones(len(tree), bool), comp
    while active.any():  # each region (one per cluster): cut its last path, go on with the dst side
        act = np.flatnonzero(active)[::-1]
        last = act[np.unique(lab[ts[act]], return_index=True)[1]]
        active[last] = False
        comp_root[comp[td[last]]] = td[last]
        lab = csgraph.connected_components(sparse.coo_matrix(
            (np.ones(active.sum()), (ts[active], td[active])), shape=(n_px, n_px)), directed=False)[1]
        active &= np.isin(lab[ts], lab[td[last]])
    return np.setdiff1d(np.arange(len(src)), tree), np.where(comp_root[comp] >= 0, comp_root[comp], np.arange(n_px))


def _nodes(coords: np.ndarray, src: np.ndarray, dst: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, ...]:
    """The contracted graph's nodes, one per representative (``root``) of the kept paths' end pixels, in
    increasing representative order, each at the mean (x, y) of those of its pixels; returns pos (N, 2)
    float64 and each kept path's src and dst node."""
    pids = np.unique(np.concatenate([src, dst]))
    node = np.unique(root[pids], return_inverse=True)[1]  # node of each end pixel
    pos = np.column_stack([np.bincount(node, coords[pids, 1]), np.bincount(node, coords[pids, 0])])
    return pos / np.bincount(node)[:, None], node[np.searchsorted(pids, src)], node[np.searchsorted(pids, dst)]


def vessel_graph(mask: np.ndarray, *, prune_spur_px: float = 10.0, merge_junctions_px: float = 2.0,
                 image: np.ndarray | None = None, av_map: np.ndarray | None = None,
                 patch_px: int = 15, glcm_levels: int = 32) -> VesselGraph:
    """Skeletonise a vessel mask and describe it as a graph (nodes = junctions and endpoints).

    Steps: skeleton and skan path graph (:func:`_skeleton_paths`: ``skimage.morphology.skeletonize``,
    isolated single pixels dropped as they have no length, :func:`_pixel_csgraph`, iterative spur pruning
    :func:`_prune_spurs`); junction clusters (adjacent junction pixels that skan links by 1-2 px
    junction-junction branches) contracted into one node when the linking branch is <= ``merge_junctions_px``
    long, that branch and its length dropped, its end nodes sharing the mean position
    (:func:`_junction_clusters`, :func:`_nodes`); per-edge measures and node features, all edges/nodes at
    once in NumPy (:func:`~dr_ray.vessels.graph_features.edge_fields`, :func:`~dr_ray.vessels.graph_features.node_fields`; with
    :func:`~dr_ray.vessels.biomarkers.global_biomarkers` ~55 ms per 1024-px image on one (shared) core, 5.3x
    faster than per-edge/per-node loops, ``docs/bench_vessel_graph.md``). Caliber at a skeleton pixel is
    ``2 * d - 1`` px, d the Euclidean distance transform of the mask, measured to the nearest *background
    pixel centre*: a run of w foreground pixels has d = (w + 1) / 2 at its centre and ``2 d - 1 = w``.

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
    mask = np.ascontiguousarray(mask.astype(bool, copy=False))
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    if prune_spur_px < 0:
        raise ValueError(f"prune_spur_px must be >= 0, got {prune_spur_px}")
    if merge_junctions_px < 0:
        raise ValueError(f"merge_junctions_px must be >= 0, got {merge_junctions_px}")
    if patch_px < 3 or patch_px % 2 == 0:
        raise ValueError(f"patch_px must be an odd int >= 3, got {patch_px}")
    image, av_map = (None if a is None else np.asarray(a) for a in (image, av_map))
    if image is not None and (image.shape != (*shape, 3) or image.dtype != np.uint8):
        raise ValueError(f"image must be (H, W, 3) uint8 matching mask {shape}, got shape {image.shape} "
                         f"dtype {image.dtype}")
    if av_map is not None and av_map.shape != shape:
        raise ValueError(f"av_map shape {av_map.shape} does not match mask shape {shape}")
    skel_img, pg = _skeleton_paths(mask, prune_spur_px)
    src, dst, blen, btype, chord = _branches(pg) if pg is not None else (np.zeros(0),) * 5
    if len(src) == 0:
        return _empty_graph(shape, skel_img)
    kept, root = _junction_clusters(src, dst, blen, btype, len(pg.node_coordinates), merge_junctions_px)
    pos, e_src, e_dst = _nodes(pg.node_coordinates, src[kept], dst[kept], root)
    edge = edge_fields(pg, kept, blen, btype, chord, mask, image, av_map)
    node = node_fields(pos, e_src, e_dst, edge, image, patch_px, glcm_levels)
    return VesselGraph(shape=shape, **node, **edge, skeleton=skel_img)
