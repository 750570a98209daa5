"""Classifier inputs, Ray-free: joined stage rows -> decoded, augmented arrays -> torch batches for the models.

A joined row (``dr_ray.pipelines.fusion_data``) holds the preprocessed image (``image_png``), the pseudo-label
stage's stacked lesion maps (``lesion_maps_png``), the vessel stage's flattened graph arrays and biomarkers, and the
catalog's ``grade`` / ``fold``. Two steps turn rows into what ``dr_ray.models.classifiers`` take:

1. :func:`decode_rows` (a Ray Data CPU task in training): PNG decode, resize to the model's sizes, one random
   geometric transform shared by the image and its lesion maps (flips, 90-degree rotations) and a brightness /
   contrast jitter of the image; biomarkers standardised with the training folds' mean and std, with a
   missing-value indicator per feature (a null biomarker is never imputed silently); label from the grade.
2. :func:`collate` (in the training worker): uint8 tensors, the vessel graphs as one torch_geometric ``Batch``;
   :func:`to_device` normalises on the device (uint8 crosses the PCIe bus, 4x less than float32).

Node features of the graph (``dr_ray.vessels.NODE_FEATURES``, eq. 26 + structure) are re-encoded for the GCN by
:func:`node_inputs`: log caliber, log GLCM contrast, entropy / 8 bits, A/V one-hot (unknown, artery, vein,
crossing), degree / 4, kind one-hot (other, junction, endpoint); NaN (no image patch) -> 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from dr_ray.imaging import decode_lesion_maps, decode_png
from dr_ray.io import columns as C
from dr_ray.training.transforms import PairedTransform

MODALITIES = ("image", "lesion", "graph", "stats")
# What the image branch sees (train.image_input): the preprocessed (CLAHE) RGB image, the vessel stage's U-Net
# probability map (graph paper sec. 3.3: "the segmented image from the U-Net is given to the MobileNetV3") or the
# preprocess stage's Canny edge map; the one-channel maps are repeated to 3 channels for the RGB backbones.
IMAGE_INPUTS = ("clahe", "segmented", "canny")
IMAGE_INPUT_COLUMN = {"clahe": C.IMAGE_PNG, "segmented": C.VESSEL_PROB_PNG, "canny": C.CANNY_PNG}
REFERABLE_FROM = 2  # ICDR grade >= 2 is referable DR
NODE_INPUT_DIM = 11  # columns of node_inputs()
_AV_CODES = (-1, 1, 2, 3)  # unknown, artery, vein, crossing (dr_ray.vessels.graph AV_*)
_KIND_CODES = (0, 1, 2)  # other, junction, endpoint (dr_ray.vessels.graph NODE_*)


def num_classes(task: str) -> int:
    """2 for ``referable``, 5 for ``grade``."""
    if task == "referable":
        return 2
    if task == "grade":
        return 5
    raise ValueError(f"task must be 'referable' or 'grade', got {task!r}")


def labels_for_task(grades: Sequence[Any], task: str) -> np.ndarray:
    """ICDR grades (0-4) -> class labels (N,) int64: ``grade >= 2`` for referable, the grade itself for grade.

    A missing or out-of-range grade raises ValueError (joined rows without a grade are quarantined upstream).
    """
    num_classes(task)
    g = np.asarray([(-1 if v is None else v) for v in grades], dtype=np.float64)
    bad = ~np.isfinite(g) | (g < 0) | (g > 4) | (g != np.round(g))
    if bad.any():
        raise ValueError(f"grades must be ICDR grades 0..4, got {list(np.asarray(grades, dtype=object)[bad][:5])}")
    g = g.astype(np.int64)
    return (g >= REFERABLE_FROM).astype(np.int64) if task == "referable" else g


def class_weights(labels: Sequence[int], n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights (n_classes,) float32, mean 1 over the classes present in ``labels``.

    A class absent from the training labels gets weight 1: it adds nothing to the training loss (no sample), and
    validation images of that class still count in the validation loss (weight 0 would make a validation fold
    holding only such images have no loss at all)."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        raise ValueError("labels is empty: no training rows")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got range {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, y.size / np.maximum(counts, 1) / max(1, np.count_nonzero(counts)), 1.0)
    return w.astype(np.float32)


@dataclass(frozen=True)
class InputSpec:
    """What a classifier is fed: modalities, sizes, lesion kinds and the biomarker standardisation.

    Saved in the model directory's metadata (``extra["inputs"]``) so that evaluation decodes rows exactly as
    training did. ``stats_mean`` / ``stats_std``: per ``stats_features`` entry, over the training rows' non-null
    values (std 1 where undefined). ``image_input``: one of ``IMAGE_INPUTS`` (what "image" is decoded from).
    """

    modalities: tuple[str, ...]
    task: str
    image_size: int
    lesion_size: int = 128
    lesion_kinds: tuple[str, ...] = ()
    stats_features: tuple[str, ...] = ()
    stats_mean: tuple[float, ...] = ()
    stats_std: tuple[float, ...] = ()
    image_input: str = "clahe"

    def __post_init__(self) -> None:
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}, got {self.image_input!r}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if not self.modalities or bad:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities!r}")
        num_classes(self.task)
        if "lesion" in self.modalities and not self.lesion_kinds:
            raise ValueError("lesion_kinds is empty but the lesion modality is used")
        if "stats" in self.modalities:
            n = len(self.stats_features)
            if n == 0 or len(self.stats_mean) != n or len(self.stats_std) != n:
                raise ValueError(f"stats_features/stats_mean/stats_std need one entry each per feature, got "
                                 f"{len(self.stats_features)}/{len(self.stats_mean)}/{len(self.stats_std)}")

    @property
    def num_classes(self) -> int:
        return num_classes(self.task)

    @property
    def stats_dim(self) -> int:
        """Length of the stats vector: one standardised value and one missing flag per feature."""
        return 2 * len(self.stats_features)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputSpec":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def columns(self) -> list[str]:
        """Joined-table columns :func:`decode_rows` reads for these modalities."""
        # the image is always read: every model has an image branch, and the report overlays Grad-CAM on it
        cols = [C.IMAGE_ID, C.GRADE, C.FOLD, C.IMAGE_PNG]
        if self.image_input != "clahe":
            cols.append(IMAGE_INPUT_COLUMN[self.image_input])
        if "lesion" in self.modalities:
            cols += [C.LESION_MAPS_PNG, C.LESION_MAP_KINDS]
        if "graph" in self.modalities:
            cols += [C.N_NODES, C.N_EDGES, C.GRAPH_X, C.GRAPH_EDGE_INDEX]
        if "stats" in self.modalities:
            cols += list(self.stats_features)
        return cols


def stats_normalisation(values: Mapping[str, Sequence[Any]], features: Sequence[str]
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per feature over the non-null, finite values of ``values[feature]`` (the training rows).

    A feature with fewer than two measured values gets mean 0 / std 1 (it then only carries its missing flag).
    """
    means, stds = [], []
    for f in features:
        if f not in values:
            raise ValueError(f"stats feature {f!r} is not in the data (columns: {sorted(values)})")
        v = np.asarray([np.nan if x is None else x for x in values[f]], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size < 2 or float(v.std()) == 0.0:
            means.append(float(v.mean()) if v.size else 0.0)
            stds.append(1.0)
        else:
            means.append(float(v.mean()))
            stds.append(float(v.std()))
    return tuple(means), tuple(stds)


def stats_vector(columns: Mapping[str, Sequence[Any]], spec: InputSpec) -> np.ndarray:
    """(B, 2F) float32: standardised biomarkers (0 where missing) followed by the F missing-value flags."""
    feats = spec.stats_features
    n = len(columns[feats[0]])
    z = np.zeros((n, len(feats)), np.float32)
    missing = np.zeros((n, len(feats)), np.float32)
    for j, f in enumerate(feats):
        v = np.asarray([np.nan if x is None else x for x in columns[f]], dtype=np.float64)
        ok = np.isfinite(v)
        z[ok, j] = (v[ok] - spec.stats_mean[j]) / spec.stats_std[j]
        missing[~ok, j] = 1.0
    return np.concatenate([z, missing], axis=1)


def _augment_params(rng: np.random.Generator) -> tuple[PairedTransform, float, float]:
    # the geometric transform shared by the image and its maps, contrast gain, brightness offset (0..255 units)
    return PairedTransform.draw(rng), float(rng.uniform(0.85, 1.15)), float(rng.uniform(-15, 15))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if size < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def decode_rows(rows: Mapping[str, Sequence[Any]], spec: InputSpec, *, augment: bool = False,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Joined rows (column -> values; a Ray Data numpy batch or ``pa.Table.to_pydict()``) -> model arrays.

    Returns ``image_id`` (B,) str, ``label`` (B,) int64, ``fold`` (B,) int64, ``image`` (B, S, S, 3) uint8 at
    ``spec.image_size`` decoded from ``spec.image_input``'s column (``IMAGE_INPUT_COLUMN``; a one-channel vessel
    probability or Canny map is repeated to 3 channels and gets the geometric transform only, no brightness /
    contrast jitter: its values are probabilities or edges, not intensities); with lesions ``lesion`` (B, K, L, L) uint8 at ``spec.lesion_size``; with graphs the
    flattened ``graph_x`` / ``graph_edge_index`` as (B,) object arrays and ``n_nodes`` / ``n_edges`` (B,)
    int64; with stats ``stats`` (B, 2F) float32 (:func:`stats_vector`). ``augment`` draws one transform per row
    from ``rng`` (the image and its lesion maps move together; graphs carry no coordinates the models use).
    Raises ValueError naming the image when a PNG does not decode or the lesion kinds differ from the spec.
    """
    ids = [str(x) for x in rows[C.IMAGE_ID]]
    n = len(ids)
    if augment and rng is None:
        rng = np.random.default_rng()
    out: dict[str, np.ndarray] = {
        "image_id": np.asarray(ids, dtype=object),
        "label": labels_for_task(list(rows[C.GRADE]), spec.task),
        "fold": np.asarray([(-1 if f is None else int(f)) for f in rows[C.FOLD]], np.int64),
    }
    params = [_augment_params(rng) if augment else (PairedTransform(), 1.0, 0.0) for _ in range(n)]
    images = np.empty((n, spec.image_size, spec.image_size, 3), np.uint8)
    column = IMAGE_INPUT_COLUMN[spec.image_input]
    rgb = spec.image_input == "clahe"
    for i, png in enumerate(rows[column]):
        if png is None:
            raise ValueError(f"{ids[i]}: {column} is missing (train.image_input={spec.image_input})")
        try:
            img = decode_png(png)
        except ValueError as e:
            raise ValueError(f"{ids[i]}: {column}: {e}") from e
        if not rgb and img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{ids[i]}: {column} has shape {img.shape}, expected (H, W, 3)"
                             + ("" if rgb else " or (H, W)"))
        t, gain, offset = params[i]
        img = t(_resize(img, spec.image_size))
        if augment and rgb:
            img = np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        images[i] = img
    out["image"] = images
    if "lesion" in spec.modalities:
        kinds = ",".join(spec.lesion_kinds)
        L = spec.lesion_size
        maps = np.empty((n, len(spec.lesion_kinds), L, L), np.uint8)
        for i, (png, row_kinds) in enumerate(zip(rows[C.LESION_MAPS_PNG], rows[C.LESION_MAP_KINDS])):
            if row_kinds != kinds:
                raise ValueError(f"{ids[i]}: lesion maps hold kinds {row_kinds!r}, the model uses {kinds!r}")
            try:
                m = decode_lesion_maps(png, len(spec.lesion_kinds))
            except ValueError as e:
                raise ValueError(f"{ids[i]}: lesion_maps_png: {e}") from e
            m = np.stack([_resize(c, L) for c in m], axis=-1)  # (L, L, K)
            maps[i] = params[i][0](m).transpose(2, 0, 1)
        out["lesion"] = maps
    if "graph" in spec.modalities:
        out["n_nodes"] = np.asarray(rows[C.N_NODES], np.int64)
        out["n_edges"] = np.asarray(rows[C.N_EDGES], np.int64)
        out["graph_x"] = _object_array([np.asarray(v, np.float32) for v in rows[C.GRAPH_X]])
        out["graph_edge_index"] = _object_array([np.asarray(v, np.int64) for v in rows[C.GRAPH_EDGE_INDEX]])
    if "stats" in spec.modalities:
        out["stats"] = stats_vector(rows, spec)
    return out


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def node_inputs(x: np.ndarray) -> np.ndarray:
    """(N, 6) ``NODE_FEATURES`` -> (N, ``NODE_INPUT_DIM``) float32 GCN inputs (see the module docstring)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != 6:
        raise ValueError(f"node features must be (N, 6) (dr_ray.vessels.NODE_FEATURES), got shape {x.shape}")
    cal, con, ent, av, deg, kind = (x[:, j] for j in range(6))
    cols = [np.log1p(np.clip(cal, 0, None)), np.log1p(np.clip(con, 0, None)), ent / 8.0]
    cols += [(av == c).astype(np.float32) for c in _AV_CODES]
    cols += [deg / 4.0]
    cols += [(kind == c).astype(np.float32) for c in _KIND_CODES]
    out = np.stack(cols, axis=1).astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def graph_data(x_flat: np.ndarray, edge_index_flat: np.ndarray, n_nodes: int, n_edges: int, *, image_id: str = ""):
    """Flattened Parquet graph arrays -> torch_geometric ``Data(x, edge_index)`` (x via :func:`node_inputs`).

    ``edge_index`` holds both directions (2 * n_edges columns). Raises ValueError naming the image when the
    array lengths disagree with ``n_nodes`` / ``n_edges`` or an edge points outside the nodes.
    """
    import torch
    from torch_geometric.data import Data

    x_flat, ei_flat = np.asarray(x_flat, np.float32), np.asarray(edge_index_flat, np.int64)
    if x_flat.size != 6 * n_nodes or ei_flat.size != 4 * n_edges:
        raise ValueError(f"{image_id}: graph arrays of {x_flat.size} node values / {ei_flat.size} edge indices do "
                         f"not match n_nodes={n_nodes}, n_edges={n_edges}")
    ei = ei_flat.reshape(2, 2 * n_edges)
    if ei.size and (ei.min() < 0 or ei.max() >= n_nodes):
        raise ValueError(f"{image_id}: graph edge index outside 0..{n_nodes - 1}")
    return Data(x=torch.from_numpy(node_inputs(x_flat.reshape(n_nodes, 6))), edge_index=torch.from_numpy(ei),
                num_nodes=int(n_nodes))


def collate(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A :func:`decode_rows` batch -> CPU tensors: ``image`` (B, 3, S, S) uint8, ``lesion`` (B, K, L, L) uint8,
    ``graph`` (torch_geometric ``Batch`` of B graphs, empty ones included), ``stats`` (B, 2F) float32,
    ``label`` (B,) int64; ``image_id`` stays a list of str. Used as ``iter_torch_batches(collate_fn=collate)``."""
    import torch

    out: dict[str, Any] = {"image_id": [str(x) for x in batch["image_id"]],
                           "label": torch.as_tensor(np.asarray(batch["label"], np.int64)),
                           "image": torch.from_numpy(np.ascontiguousarray(
                               np.stack(list(batch["image"])) if batch["image"].dtype == object
                               else batch["image"]).transpose(0, 3, 1, 2).copy())}
    if "lesion" in batch:
        lesion = batch["lesion"]
        out["lesion"] = torch.from_numpy(np.ascontiguousarray(np.stack(list(lesion)) if lesion.dtype == object
                                                              else lesion))
    if "graph_x" in batch:
        from torch_geometric.data import Batch

        ids = out["image_id"]
        graphs = [graph_data(x, ei, int(nn), int(ne), image_id=ids[i])
                  for i, (x, ei, nn, ne) in enumerate(zip(batch["graph_x"], batch["graph_edge_index"],
                                                          batch["n_nodes"], batch["n_edges"]))]
        out["graph"] = Batch.from_data_list(graphs)
    if "stats" in batch:
        out["stats"] = torch.as_tensor(np.asarray(batch["stats"], np.float32))
    return out


def to_device(batch: Mapping[str, Any], device, *, mean: Sequence[float], std: Sequence[float],
              channels_last: bool = False) -> dict[str, Any]:
    """Move a :func:`collate` batch to ``device``; the image becomes ``(x / 255 - mean) / std`` float32 and the
    lesion maps ``x / 255`` (probabilities)."""
    import torch

    out: dict[str, Any] = dict(batch)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    x = batch["image"].to(device, non_blocking=True).float()
    x = (x / 255.0 - m) / s
    out["image"] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    out["label"] = batch["label"].to(device, non_blocking=True)
    if "lesion" in batch:
        out["lesion"] = batch["lesion"].to(device, non_blocking=True).float() / 255.0
    if "graph" in batch:
        out["graph"] = batch["graph"].to(device)
    if "stats" in batch:
        out["stats"] = batch["stats"].to(device, non_blocking=True)
    return out


def batches_from_rows(rows: Mapping[str, Sequence[Any]], spec: InputSpec, batch_size: int, *,
                      augment: bool = False, rng: np.random.Generator | None = None) -> Iterable[dict[str, Any]]:
    """Ray-free batches (decode + collate) over in-memory rows: tests, benchmarks, Grad-CAM on a few images."""
    n = len(rows[C.IMAGE_ID])
    for i in range(0, n, batch_size):
        part = {k: list(v)[i:i + batch_size] for k, v in rows.items()}
        yield collate(decode_rows(part, spec, augment=augment, rng=rng))


__all__ = ["IMAGE_INPUTS", "IMAGE_INPUT_COLUMN", "InputSpec", "MODALITIES", "NODE_INPUT_DIM", "REFERABLE_FROM", "batches_from_rows", "class_weights",
           "collate", "decode_rows", "graph_data", "labels_for_task", "node_inputs", "num_classes",
           "stats_normalisation", "stats_vector", "to_device"]
