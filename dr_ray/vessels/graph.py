"""Vessel mask -> vessel graph (nodes = junctions/endpoints, edges = vessel segments) with skan.

Paper sect. 3.5 / eq. 26: node features ``x_i = [c_i, g_i^con, g_i^ent, t_i]`` (calibre, GLCM contrast,
GLCM entropy, artery/vein label); we append degree and node kind.

Coordinates: ``pos`` is (x, y) = (column, row) in px, as in :mod:`dr_ray.testing.fundus`; ``edge_paths``
hold (row, col) pixel indices, as skan and NumPy indexing do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skan.csr import PathGraph
from skimage.morphology import skeletonize

from dr_ray.vessels.texture import glcm_patch_features

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


def _segments(lens: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For segments of ``lens`` items laid end to end, each padded by ``pad`` items on both sides: the
    segment id and the clipped index within the segment of every item of the padded layout."""
    plen = lens + 2 * pad
    seg = np.repeat(np.arange(len(lens)), plen)
    starts = np.concatenate([[0], np.cumsum(plen)[:-1]])
    within = np.arange(int(plen.sum())) - np.repeat(starts, plen) - pad
    return seg, np.clip(within, 0, np.repeat(lens - 1, plen))


def _smooth_paths(rc: np.ndarray, off: np.ndarray, lens: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (sigma px) along each path with ``mode="nearest"``, all paths in one call.

    Each path is padded with ``radius`` copies of its end points (what mode "nearest" reads beyond the
    ends), so every output sample sees the same values and weights as ``gaussian_filter1d`` on the path
    alone: the results are identical.
    """
    radius = int(4.0 * sigma + 0.5)  # gaussian_filter1d's default truncate=4.0
    seg, within = _segments(lens, radius)
    padded = rc[off[seg] + within].astype(np.float64)
    sm = ndimage.gaussian_filter1d(padded, sigma, axis=0)
    keep = np.ones(len(padded), bool)
    plen = lens + 2 * radius
    pstart = np.concatenate([[0], np.cumsum(plen)[:-1]])
    for k in range(radius):  # drop the pads
        keep[pstart + k] = keep[pstart + plen - 1 - k] = False
    return sm[keep]


def _edge_geometry(rc: np.ndarray, off: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length (px, after smoothing with sigma 1 px, true end points kept) and curvature (rad/px: mean
    absolute turning angle of the path smoothed with sigma 2 px, per unit arc length; NaN for paths under
    3 px or with fewer than two non-zero steps) of every path. ``rc`` (K, 2) concatenated paths,
    ``off`` (E + 1,) their offsets, ``lens`` (E,) their lengths (>= 2)."""
    e = len(lens)
    first, last = off[:-1], off[1:] - 1
    # step k of the layout joins items k and k + 1; drop the steps that cross from one path to the next
    step_ok = np.ones(len(rc) - 1, bool)
    step_ok[last[:-1]] = False
    step_seg = np.repeat(np.arange(e), lens)[:-1][step_ok]

    p = _smooth_paths(rc, off, lens, 1.0)
    p[first], p[last] = rc[first], rc[last]  # keep the true end points (smoothing pulls them inward)
    d = np.diff(p, axis=0)[step_ok]
    arc = np.bincount(step_seg, np.hypot(d[:, 0], d[:, 1]), e)

    d = np.diff(_smooth_paths(rc, off, lens, 2.0), axis=0)[step_ok]
    moving = np.hypot(d[:, 0], d[:, 1]) > 1e-9
    d, seg = d[moving], step_seg[moving]
    theta = np.arctan2(d[:, 0], d[:, 1])
    same = seg[1:] == seg[:-1]  # consecutive kept steps of one path
    turn = np.abs(np.angle(np.exp(1j * np.diff(theta)[same])))
    tseg = seg[1:][same]
    n_turn = np.bincount(tseg, minlength=e)
    with np.errstate(divide="ignore", invalid="ignore"):
        curv = np.bincount(tseg, turn, e) / arc
    curv[(lens < 3) | (n_turn < 1) | ~(arc > 0)] = np.nan
    return arc, curv


def _segment_median(values: np.ndarray, seg: np.ndarray, off: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Median of each segment of ``values`` (segments contiguous, lengths >= 1), as ``np.median``."""
    v = values[np.lexsort((values, seg))]
    lo, hi = off[:-1] + (lens - 1) // 2, off[:-1] + lens // 2
    return (v[lo] + v[hi]) / 2.0  # same value twice for odd lengths


def mask_distance_at(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) from the given mask pixels to the nearest background pixel centre.

    Equals ``scipy.ndimage.distance_transform_edt(mask)[rows, cols]`` exactly (tests check it), but is
    computed only at the requested pixels: a full transform costs ~50 ms (scipy) or ~12 ms (OpenCV's exact
    one) per 1024-px mask, this ~5 ms. Separable form: d^2 = min over columns c' of
    (c - c')^2 + G(r, c')^2, with G the distance to the nearest background pixel in the same column (0 on
    background; read off the mask's vertical foreground runs); the exact city-block distance (OpenCV) is
    >= d, so only columns with |c - c'| <= it are searched. Integer arithmetic, one sqrt.
    """
    if len(rows) == 0:
        return np.zeros(0)
    if mask.all():  # no background at all: keep scipy's convention
        return ndimage.distance_transform_edt(mask)[rows, cols]
    h, w = mask.shape
    ub = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L1, 3)[rows, cols].astype(np.int64)
    nk = 2 * ub + 1  # window of columns per pixel
    if int(nk.sum()) > 50_000_000:  # giant blobs: the full transform is cheaper
        return ndimage.distance_transform_edt(mask)[rows, cols]
    # Vertical foreground runs, keyed column-major with one background row above and below each column.
    stride = h + 2
    col = np.zeros((w, stride), np.int8)
    col[:, 1:-1] = mask.T
    change = np.flatnonzero(np.diff(col.ravel()))
    run_first, run_last = change[0::2] + 1, change[1::2]  # keys of the first/last foreground pixel
    pix = np.repeat(np.arange(len(rows)), nk)
    k = np.arange(len(pix)) - np.repeat(np.cumsum(nk) - nk + ub, nk)  # column offset, -ub..ub
    cc = cols[pix] + k
    inside = (cc >= 0) & (cc < w)
    cc = np.clip(cc, 0, w - 1)
    rr = rows[pix]
    key = cc * stride + rr + 1
    j = np.maximum(np.searchsorted(run_first, key, side="right") - 1, 0)
    in_run = (key >= run_first[j]) & (key <= run_last[j])
    top, bottom = run_first[j] - cc * stride - 1, run_last[j] - cc * stride - 1  # rows of the run's ends
    far = 1 << 21  # a run reaching the image edge has no background on that side
    g = np.where(in_run, np.minimum(np.where(top > 0, rr - top + 1, far), np.where(bottom < h - 1, bottom - rr + 1, far)),
                 0)
    d2 = np.where(inside, k * k + g * g, np.iinfo(np.int64).max)
    return np.sqrt(np.minimum.reduceat(d2, np.cumsum(nk) - nk).astype(np.float64))


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


def _edge_fields(pg: PathGraph, kept: np.ndarray, blen: np.ndarray, btype: np.ndarray, chord: np.ndarray,
                 mask: np.ndarray, image: np.ndarray | None, av_map: np.ndarray | None) -> dict:
    """:class:`VesselGraph`'s per-edge fields (``length_px`` to ``edge_paths``) of the kept paths, computed
    for all of them at once, laid end to end: rc (K, 2) pixels, off (E + 1,) offsets, seg (K,) path ids."""
    ip, ix = pg.paths.indptr, pg.paths.indices
    lens = (ip[kept + 1] - ip[kept]).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(lens)])
    seg, within = _segments(lens)
    rc = pg.node_coordinates[ix[ip[kept][seg] + within]].astype(np.int64)
    n_edges, chord = len(kept), chord[kept]
    cal = 2.0 * mask_distance_at(mask, rc[:, 0], rc[:, 1]) - 1.0
    arc, curv = _edge_geometry(rc, off, lens)
    lab = av_map[rc[:, 0], rc[:, 1]] if av_map is not None else np.zeros(len(rc), np.int8)
    a, v = (np.bincount(seg, lab == k, n_edges) for k in (AV_ARTERY, AV_VEIN))
    av_e = np.where((a == 0) & (v == 0), AV_UNKNOWN, np.where(a >= v, AV_ARTERY, AV_VEIN)).astype(np.int8)
    rgb = (np.full((n_edges, 3), np.nan) if image is None  # sums of ints below: exact in any order
           else np.add.reduceat(image[rc[:, 0], rc[:, 1]].astype(np.float64), off[:-1], axis=0) / lens[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        tort = np.where(chord >= 1.0, arc / np.maximum(chord, 1e-12), np.nan)
    return dict(length_px=blen[kept], arc_length_px=arc, chord_px=chord, tortuosity=tort, curvature=curv,
                caliber_mean_px=np.add.reduceat(cal, off[:-1]) / lens, av_label=av_e, mean_rgb=rgb,
                caliber_median_px=_segment_median(cal, seg, off, lens), branch_type=btype[kept].astype(np.int8),
                edge_paths=tuple(map(rc.astype(np.int32).__getitem__, map(slice, off[:-1], off[1:]))))


def _node_fields(pos: np.ndarray, e_src: np.ndarray, e_dst: np.ndarray, edge: dict, image: np.ndarray | None,
                 patch_px: int, glcm_levels: int) -> dict:
    """:class:`VesselGraph`'s node fields and ``edges``: degree (loops count twice), kind from the degree,
    calibre and A/V label from the incident edges' (``edge``: :func:`_edge_fields`), green-patch GLCM."""
    n_nodes, n_edges = len(pos), len(e_src)
    degree = np.bincount(np.concatenate([e_src, e_dst]), minlength=n_nodes).astype(np.int32)
    kind = np.where(degree >= 3, NODE_JUNCTION, np.where(degree == 1, NODE_ENDPOINT, NODE_OTHER)).astype(np.int8)
    # incident edges of each node (a loop once), in increasing edge order
    not_loop = e_dst != e_src
    inc_node = np.concatenate([e_src, e_dst[not_loop]])
    inc_edge = np.concatenate([np.arange(n_edges), np.flatnonzero(not_loop)])
    order = np.lexsort((inc_edge, inc_node))
    inc_node, inc_edge = inc_node[order], inc_edge[order]
    n_inc = np.bincount(inc_node, minlength=n_nodes)
    with np.errstate(divide="ignore", invalid="ignore"):
        node_cal = np.bincount(inc_node, edge["caliber_mean_px"][inc_edge], n_nodes) / n_inc
    na, nv = (np.bincount(inc_node, edge["av_label"][inc_edge] == k, n_nodes) for k in (AV_ARTERY, AV_VEIN))
    node_av = np.where((na == 0) & (nv == 0), AV_UNKNOWN,
                       np.where(na == nv, AV_CROSSING, np.where(na > nv, AV_ARTERY, AV_VEIN))).astype(np.int8)
    f = {"contrast": np.full(n_nodes, np.nan), "entropy": np.full(n_nodes, np.nan)}
    if image is not None and n_nodes:
        centres = np.round(pos[:, ::-1]).astype(np.int64)  # (row, col); round half to even, as round()
        # 64 patches per batch (chunk): the counters stay in the CPU cache, ~1.4x faster than 256, same values
        f = glcm_patch_features(np.ascontiguousarray(image[..., 1]), centres, patch_px, levels=glcm_levels, chunk=64)
    x = np.column_stack([node_cal, f["contrast"], f["entropy"], node_av, degree, kind]).astype(np.float32)
    return dict(pos=pos.astype(np.float32), node_kind=kind, node_degree=degree, node_av=node_av,
                x=x.reshape(n_nodes, len(NODE_FEATURES)),
                edges=np.column_stack([e_src, e_dst]).reshape(-1, 2).astype(np.int64))


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
    once in NumPy (:func:`_edge_fields`, :func:`_node_fields`; with
    :func:`~dr_ray.vessels.biomarkers.global_biomarkers` ~55 ms per 1024-px image on one (shared) core, 5.3x
    faster than per-edge/per-node loops, ``docs/bench_vessel_graph.md``). Calibre at a skeleton pixel is
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
    edge = _edge_fields(pg, kept, blen, btype, chord, mask, image, av_map)
    node = _node_fields(pos, e_src, e_dst, edge, image, patch_px, glcm_levels)
    return VesselGraph(shape=shape, **node, **edge, skeleton=skel_img)
