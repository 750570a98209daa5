"""The JSON-exported A/V classifier (:class:`AVClassifier`), fitting it and the shipped model; see
:mod:`dr_ray.vessels.av`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from dr_ray.vessels.av.features import FEATURE_NAMES
from dr_ray.vessels.graph import AV_ARTERY, AV_VEIN

_ACTIVATIONS = ("identity", "relu", "tanh", "logistic")
_FORMAT = "dr_ray.av_classifier/1"
_DEFAULT_FILE = "av_classifier.json"


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
