"""Artery/vein classification of vessel-graph segments from hand-crafted colour, reflex and width features.

Per segment (graph edge) :func:`segment_features` measures, over the vessel pixels nearest to the
segment's skeleton path (``FEATURE_NAMES``):

* colour relative to the local background (each channel divided by a Gaussian-weighted mean of the nearby
  non-vessel pixels, sigma ~2.5 median vessel widths): veins absorb more and look darker, arteries are
  lighter and redder (Narasimha-Iyer et al. 2007, Niemeijer et al. 2009 use the same cues);
* the same colours standardised over all vessel pixels of the image (z-scores), which removes the
  image's overall colour cast: A/V is a *relative* decision within one image;
* green/red and blue/red ratios inside the vessel;
* central light reflex: mean intensity of the central third of the vessel minus that of its outer
  third, over the background (arteries show a brighter central stripe; 0 for vessels under 3 px wide);
* spread of the green level along the segment;
* width relative to the image's length-weighted median calibre (veins are wider than their arteries);
* the colour and reflex features again as residuals of a per-image fit on log width: a thin vessel looks
  lighter whatever its type, so it is compared with this image's vessels of the same width.

Graph context (:func:`av_links`, :func:`smooth_av_logits`): the branches of a bifurcation share the type,
and at a crossing (a degree-4 node, or two degree-3 nodes joined by a short segment) the most collinear
pairs of segments continue each other. Each segment's log-odds is averaged with its linked neighbours'
(iteratively), which on held-out images adds ~4 points of accuracy (docs/bench_av.md).

A light classifier (:func:`fit_av_classifier`: standard scaling + a small MLP or logistic regression from
scikit-learn) maps them to P(vein). :class:`AVClassifier` keeps only arrays (scaler statistics, layer
weights) and re-evaluates the network in NumPy; it is saved as JSON (no pickle: loading executes no code).
The shipped model ``dr_ray/vessels/data/av_classifier.json`` is written by
``benchmarks/train_av_classifier.py`` (data, split and held-out accuracy in ``docs/bench_av.md``).

Pure functions; the only file access is :meth:`AVClassifier.save` / :meth:`AVClassifier.load` on an
explicit path and :func:`load_default_av_classifier` reading the packaged file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from dr_ray.vessels.graph import (
    AV_ARTERY,
    AV_CROSSING,
    AV_UNKNOWN,
    AV_VEIN,
    NODE_FEATURES,
    VesselGraph,
)

_BASE_FEATURES = (
    "r_bg", "g_bg", "b_bg",  # mean colour in the vessel / local background colour
    "r_centre_bg", "g_centre_bg",  # the same along the skeleton path only
    "r_z", "g_z", "b_z",  # mean colour standardised over all vessel pixels of the image
    "g_over_r", "b_over_r",  # colour ratios inside the vessel
    "reflex_r", "reflex_g",  # (central third - outer third) / background: central light reflex
    "g_std_bg",  # spread of green / background over the segment's pixels
    "width_rel",  # mean calibre / the image's length-weighted median calibre
)
# Thin vessels look lighter whatever their type (blur mixes in background), so colour is also compared with
# what this image's vessels of the same width show: residual of a per-image fit on log width.
_RESIDUAL_OF = ("r_bg", "g_bg", "b_bg", "r_centre_bg", "g_centre_bg", "reflex_r", "reflex_g", "g_over_r",
                "b_over_r")
FEATURE_NAMES = _BASE_FEATURES + tuple(f"res_{n}" for n in _RESIDUAL_OF)
_ACTIVATIONS = ("identity", "relu", "tanh", "logistic")
_FORMAT = "dr_ray.av_classifier/1"
_DEFAULT_FILE = "av_classifier.json"


def _check_graph_inputs(graph: VesselGraph, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be (H, W) matching image {image.shape[:2]}, got shape {mask.shape}")
    if tuple(graph.shape) != mask.shape:
        raise ValueError(f"graph was built on a {graph.shape} mask, got mask {mask.shape}")
    return image, mask.astype(bool, copy=False)


def segment_features(graph: VesselGraph, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-segment A/V features, columns ``FEATURE_NAMES``.

    Args:
        graph: the :class:`VesselGraph` built from ``mask`` (E edges).
        image: (H, W, 3) uint8 RGB the mask belongs to.
        mask: (H, W) bool vessel mask the graph was built from.

    Returns:
        (E, F) float32, F = len(FEATURE_NAMES). Every vessel pixel is assigned to the segment whose skeleton
        pixel is nearest. A value that cannot be measured (no background nearby, no vessel pixel of a
        segment) is 0, the feature's "typical" value after standardisation (NaN would break the classifier).
    """
    image, mask = _check_graph_inputs(graph, image, mask)
    n_e = graph.n_edges
    n_f = len(FEATURE_NAMES)
    if n_e == 0:
        return np.zeros((0, n_f), np.float32)
    h, w = mask.shape
    img = image.astype(np.float32)
    lit = img.sum(axis=2) > 30.0  # the black camera surround is not background
    cal = graph.caliber_mean_px
    lens = np.maximum(graph.arc_length_px, 1e-6)
    order = np.argsort(cal)
    cum = np.cumsum(lens[order])
    med_cal = float(cal[order][np.searchsorted(cum, 0.5 * cum[-1])])  # length-weighted median calibre
    med_cal = max(med_cal, 1.0)

    # local background colour: Gaussian-weighted mean of lit non-vessel pixels
    sigma = max(3.0, 2.5 * med_cal)
    wbg = (lit & ~mask).astype(np.float32)
    den = cv2.GaussianBlur(wbg, (0, 0), sigma)
    bg = np.empty_like(img)
    for c in range(3):
        bg[..., c] = cv2.GaussianBlur(img[..., c] * wbg, (0, 0), sigma) / np.maximum(den, 1e-6)
    fallback = img[(lit & ~mask)].mean(axis=0) if (lit & ~mask).any() else np.full(3, 128.0, np.float32)
    bg = np.where((den > 1e-3)[..., None], bg, fallback[None, None, :])
    bg = np.maximum(bg, 1.0)

    # vessel pixel -> nearest skeleton pixel -> its edge; radial position inside the vessel
    edge_id = np.full((h, w), -1, np.int32)
    for e, p in enumerate(graph.edge_paths):
        edge_id[p[:, 0], p[:, 1]] = e
    on_path = edge_id >= 0
    d_skel, (ir, ic) = ndimage.distance_transform_edt(~on_path, return_indices=True)
    vr, vc = np.nonzero(mask & lit)
    eid = edge_id[ir[vr, vc], ic[vr, vc]]
    d_bg = ndimage.distance_transform_edt(mask)
    half = d_bg[ir[vr, vc], ic[vr, vc]] - 1.0  # ~ (width - 1) / 2 at the nearest centreline pixel
    t = d_skel[vr, vc] / np.maximum(half, 1e-6)  # 0 centre .. ~1 rim
    thick = half >= 1.0  # width >= 3 px: centre and rim are distinct pixels
    centre = thick & (t <= 1.0 / 3.0)
    rim = thick & (t >= 2.0 / 3.0)

    pix = img[vr, vc]  # (P, 3)
    rel = pix / bg[vr, vc]

    def seg_mean(values: np.ndarray, sel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = eid if sel is None else eid[sel]
        vals = values if sel is None else values[sel]
        cnt = np.bincount(ids, minlength=n_e).astype(np.float64)
        s = np.bincount(ids, weights=vals, minlength=n_e)
        with np.errstate(invalid="ignore", divide="ignore"):
            return s / cnt, cnt

    feats = np.zeros((n_e, n_f), np.float64)
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for c, name in enumerate(("r", "g", "b")):
        feats[:, col[f"{name}_bg"]], _ = seg_mean(rel[:, c])
    # along the skeleton path only
    pr, pc = np.nonzero(on_path)
    pe = edge_id[pr, pc]
    prel = img[pr, pc] / bg[pr, pc]
    cnt = np.bincount(pe, minlength=n_e).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["r_centre_bg"]] = np.bincount(pe, weights=prel[:, 0], minlength=n_e) / cnt
        feats[:, col["g_centre_bg"]] = np.bincount(pe, weights=prel[:, 1], minlength=n_e) / cnt
    # image-standardised colour
    mu, sd = pix.mean(axis=0), pix.std(axis=0) + 1e-6
    for c, name in enumerate(("r", "g", "b")):
        m, _ = seg_mean(pix[:, c].astype(np.float64))
        feats[:, col[f"{name}_z"]] = (m - mu[c]) / sd[c]
    mr, _ = seg_mean(pix[:, 0].astype(np.float64))
    mg, _ = seg_mean(pix[:, 1].astype(np.float64))
    mb, _ = seg_mean(pix[:, 2].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        feats[:, col["g_over_r"]] = mg / np.maximum(mr, 1.0)
        feats[:, col["b_over_r"]] = mb / np.maximum(mr, 1.0)
    for c, name in ((0, "r"), (1, "g")):
        mc, nc = seg_mean(rel[:, c], centre)
        mo, no = seg_mean(rel[:, c], rim)
        feats[:, col[f"reflex_{name}"]] = np.where((nc > 0) & (no > 0), mc - mo, 0.0)
    mg_rel, _ = seg_mean(rel[:, 1])
    m2, _ = seg_mean(rel[:, 1] ** 2)
    feats[:, col["g_std_bg"]] = np.sqrt(np.maximum(m2 - mg_rel ** 2, 0.0))
    feats[:, col["width_rel"]] = cal / med_cal
    feats[~np.isfinite(feats)] = 0.0
    log_w = np.log(np.maximum(feats[:, col["width_rel"]], 0.05))
    for name in _RESIDUAL_OF:
        feats[:, col[f"res_{name}"]] = _width_residual(feats[:, col[name]], log_w, lens)
    return feats.astype(np.float32)


def _width_residual(v: np.ndarray, log_w: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """v minus its length-weighted least-squares fit on (1, log w, log^2 w) over this image's segments
    (minus the weighted mean when there are fewer than 6 segments)."""
    if len(v) < 6:
        return v - np.average(v, weights=weights)
    a = np.column_stack([np.ones_like(log_w), log_w, log_w ** 2])
    sw = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(a * sw[:, None], v * sw, rcond=None)
    return v - a @ coef


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "logistic":
        return 1.0 / (1.0 + np.exp(-z))
    return z


@dataclass(frozen=True, eq=False)
class AVClassifier:
    """Standard scaling + a small fully connected network with one logistic output = P(vein).

    ``weights[k]`` (in_k, out_k) and ``biases[k]`` (out_k,) float64; hidden layers use ``activation``; the
    last layer has one output. Logistic regression is the case with no hidden layer. ``metadata`` is free
    JSON (training data, split, held-out accuracy). Compare instances with :meth:`predict_proba`.
    """

    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: str = "relu"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = len(self.feature_names)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if np.shape(self.mean) != (f,) or np.shape(self.scale) != (f,):
            raise ValueError(f"mean and scale must have shape ({f},), got {np.shape(self.mean)}, {np.shape(self.scale)}")
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError(f"need >= 1 layer and as many biases as weights, got {len(self.weights)} weights, "
                             f"{len(self.biases)} biases")
        n_in = f
        for k, (wk, bk) in enumerate(zip(self.weights, self.biases)):
            if np.ndim(wk) != 2 or np.shape(wk)[0] != n_in or np.shape(bk) != (np.shape(wk)[1],):
                raise ValueError(f"layer {k}: weights {np.shape(wk)} / biases {np.shape(bk)} do not chain from "
                                 f"{n_in} inputs")
            n_in = np.shape(wk)[1]
        if n_in != 1:
            raise ValueError(f"the last layer must have 1 output (P(vein)), got {n_in}")
        for name, arrs in (("mean", [self.mean]), ("scale", [self.scale]), ("weights", self.weights),
                           ("biases", self.biases)):
            if not all(np.all(np.isfinite(a)) for a in arrs):
                raise ValueError(f"{name} has non-finite values")
        if np.any(np.asarray(self.scale) <= 0):
            raise ValueError("scale must be > 0")

    @property
    def classes(self) -> tuple[int, int]:
        """Column order of :meth:`predict_proba`: (artery, vein) A/V codes of :mod:`dr_ray.vessels.graph`."""
        return (AV_ARTERY, AV_VEIN)

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"X must be (E, {len(self.feature_names)}) (columns {self.feature_names}), "
                             f"got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("X has non-finite values")
        return x

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(E, F) features -> (E, 2) float64 [P(artery), P(vein)], rows summing to 1."""
        h = (self._check_x(x) - self.mean) / self.scale
        last = len(self.weights) - 1
        for k, (wk, bk) in enumerate(zip(self.weights, self.biases)):
            h = h @ wk + bk
            if k < last:
                h = _act(self.activation, h)
        z = np.clip(h[:, 0], -500.0, 500.0)
        p_vein = 1.0 / (1.0 + np.exp(-z))
        return np.column_stack([1.0 - p_vein, p_vein])

    def predict(self, x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """(E, F) -> (E,) int8 labels: 2 (vein) where P(vein) >= ``threshold``, else 1 (artery)."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        p = self.predict_proba(x)[:, 1]
        return np.where(p >= threshold, AV_VEIN, AV_ARTERY).astype(np.int8)

    def to_dict(self) -> dict:
        """JSON-able dict (lists of floats); :meth:`from_dict` inverts it exactly (float64 round trip)."""
        return {"format": _FORMAT, "feature_names": list(self.feature_names),
                "mean": np.asarray(self.mean, np.float64).tolist(), "scale": np.asarray(self.scale, np.float64).tolist(),
                "activation": self.activation,
                "weights": [np.asarray(w, np.float64).tolist() for w in self.weights],
                "biases": [np.asarray(b, np.float64).tolist() for b in self.biases],
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, d: dict) -> AVClassifier:
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not an A/V classifier file: format {got!r}, expected {_FORMAT!r}")
        missing = {"feature_names", "mean", "scale", "activation", "weights", "biases"} - set(d)
        if missing:
            raise ValueError(f"A/V classifier file lacks {sorted(missing)}")
        names = tuple(str(n) for n in d["feature_names"])
        if names != FEATURE_NAMES:
            raise ValueError(f"A/V classifier was trained on features {names}, this version computes "
                             f"{FEATURE_NAMES}: retrain it (benchmarks/train_av_classifier.py)")
        return cls(feature_names=names, mean=np.asarray(d["mean"], np.float64),
                   scale=np.asarray(d["scale"], np.float64), activation=str(d["activation"]),
                   weights=tuple(np.asarray(w, np.float64).reshape(len(w), -1) for w in d["weights"]),
                   biases=tuple(np.asarray(b, np.float64).reshape(-1) for b in d["biases"]),
                   metadata=dict(d.get("metadata") or {}))

    def save(self, path: str | Path) -> None:
        """Write the classifier as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AVClassifier:
        """Read a classifier written by :meth:`save` (plain JSON; nothing is executed)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_av_classifier(x: np.ndarray, y: np.ndarray, *, sample_weight: np.ndarray | None = None,
                      hidden: tuple[int, ...] = (32,), alpha: float = 0.1, seed: int = 0,
                      max_iter: int = 1000, metadata: dict | None = None) -> AVClassifier:
    """Fit standard scaling + an MLP (``hidden`` layer sizes, ReLU) or, with ``hidden=()``, an L2 logistic
    regression (C = 1 / alpha) on (E, F) features ``x`` and labels ``y`` in {1 artery, 2 vein}.

    sample_weight: (E,) optional, e.g. segment lengths (long vessels count more). Deterministic for a seed.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"x must be (E, {len(FEATURE_NAMES)}), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be ({x.shape[0]},), got shape {y.shape}")
    if not np.all(np.isin(y, (AV_ARTERY, AV_VEIN))):
        raise ValueError(f"y must hold only {AV_ARTERY} (artery) and {AV_VEIN} (vein), got {np.unique(y).tolist()}")
    if len(np.unique(y)) < 2:
        raise ValueError("y needs both arteries and veins")
    if not np.all(np.isfinite(x)):
        raise ValueError("x has non-finite values")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    if sw is not None and (sw.shape != y.shape or np.any(sw < 0) or not np.all(np.isfinite(sw))):
        raise ValueError(f"sample_weight must be ({len(y)},) finite >= 0")
    if sw is not None:
        sw = sw * (len(sw) / sw.sum())  # mean 1: keeps alpha's meaning
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    target = (y == AV_VEIN).astype(np.int64)
    if hidden:
        net = MLPClassifier(hidden_layer_sizes=tuple(hidden), activation="relu", alpha=alpha, max_iter=max_iter,
                            random_state=seed, early_stopping=False, tol=1e-5)
        net.fit(xs, target, sample_weight=sw)
        weights, biases = tuple(net.coefs_), tuple(net.intercepts_)
    else:
        lr = LogisticRegression(C=1.0 / alpha, max_iter=max_iter)
        lr.fit(xs, target, sample_weight=sw)
        weights, biases = (lr.coef_.T.copy(),), (lr.intercept_.copy(),)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return AVClassifier(feature_names=FEATURE_NAMES, mean=scaler.mean_.copy(), scale=scale,
                        weights=tuple(np.asarray(w, np.float64) for w in weights),
                        biases=tuple(np.asarray(b, np.float64) for b in biases),
                        activation="relu", metadata=dict(metadata or {}))


def default_av_model_path() -> Path:
    """Path of the packaged classifier ``dr_ray/vessels/data/av_classifier.json``."""
    return Path(str(resources.files("dr_ray.vessels").joinpath("data", _DEFAULT_FILE)))


def load_default_av_classifier() -> AVClassifier:
    """The shipped classifier (trained on RITE/HRF-AV/LES-AV training images; see docs/bench_av.md)."""
    ref = resources.files("dr_ray.vessels").joinpath("data", _DEFAULT_FILE)
    if not ref.is_file():
        raise FileNotFoundError(f"packaged A/V classifier missing: {ref}; regenerate it with "
                                "benchmarks/train_av_classifier.py")
    return AVClassifier.from_dict(json.loads(ref.read_text()))


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
    inc: list[list[int]] = [[] for _ in range(n_nodes)]
    for e, (u, v) in enumerate(graph.edges):
        if u != v:
            inc[int(u)].append(e)
            inc[int(v)].append(e)
    cal = graph.caliber_mean_px
    links: list[tuple[int, int]] = []
    in_crossing = np.zeros(n_nodes, bool)
    crossings: list[tuple[list[int], list[int]]] = []  # (nodes, four outer edges)
    for e, (u, v) in enumerate(graph.edges):
        u, v = int(u), int(v)
        if u == v or len(inc[u]) != 3 or len(inc[v]) != 3 or in_crossing[u] or in_crossing[v]:
            continue
        outer = [f for f in inc[u] + inc[v] if f != e]
        if len(outer) == 4 and graph.arc_length_px[e] <= crossing_factor * float(np.max(cal[outer])) + 2.0:
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
            node = next(m for m in nodes if m in (int(graph.edges[f, 0]), int(graph.edges[f, 1])))
            dirs.append(_out_direction(graph.edge_paths[f], int(graph.edges[f, 0]) == node, max(4.0, 2.0 * cal[f])))
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


__all__ = ["FEATURE_NAMES", "AVClassifier", "segment_features", "fit_av_classifier", "apply_av_labels",
           "av_links", "smooth_av_logits", "predict_av", "load_default_av_classifier", "default_av_model_path"]
