"""Vessels stage: preprocessed shards -> vessel U-Net (actor pool, GPU when there is one) -> graph, optic disc,
A/V and biomarkers (CPU tasks) -> Parquet.

Output layout under ``<output.dir>/vessels/``: ``status=ok/*.parquet`` (``C.VESSELS_SCHEMA``: vessel
probabilities as uint8 PNG, graph arrays for torch_geometric, biomarkers with the reasons of the nulls),
``status=quarantined/*.parquet``, ``quarantine.csv``, ``config.yaml``, ``summary.json``. The input rows are
the preprocess stage's ``status=ok`` rows: ``rows in = written + quarantined``. A rerun with the same
settings and model processes only the images missing from both folders.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

from dr_ray.config import Config, VesselsConfig, config_hash, to_dict
from dr_ray.imaging import ImageDecodeError, decode_png, encode_png
from dr_ray.imaging.enhance import INPUT_MODES, vessel_input
from dr_ray.imaging.fov import circle_mask
from dr_ray.io import columns as C
from dr_ray.faults import maybe_inject
from dr_ray.pipelines.inference import (
    INPUT_COLUMNS,
    ModelActor,
    check_model_dir,
    map_model_actor,
    preprocess_fov_margin,
    run_model_stage,
)
from dr_ray.pipelines.reconcile import StageSummary
from dr_ray.pipelines.runtime import stage_dir

log = logging.getLogger(__name__)

STAGE = "vessels"
_OUTPUT_SCHEMA = C.VESSELS_SCHEMA


class VesselSegmenter(ModelActor):
    """Ray Data actor: loads the vessel model once, predicts vessel probabilities for whole batches.

    Input columns: ``INPUT_COLUMNS`` (catalog columns, ``image_png``, ``size``). Output: the same columns plus
    ``vessel_prob_png`` (uint8 p * 255, PNG, same size as the stored image), ``model_hash``, ``status``,
    ``error``. A row whose image cannot be decoded is passed on with status quarantined and its reason;
    anything else that fails (the model, the GPU) fails the task, as it would for every row.
    """

    stage = STAGE

    def check_model(self, model_dir: str, meta: dict) -> None:
        if meta["spec"]["out_channels"] != 1:
            raise ValueError(f"{model_dir}: expected a binary vessel model (1 output channel), got "
                             f"{meta['spec']['out_channels']}")
        # the input transform the model was trained with (dr_ray.imaging.enhance.vessel_input), from its metadata
        self.input_mode = str(((meta.get("config") or {}).get("train_vessels") or {}).get("input_mode", "rgb"))
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"{model_dir}: metadata names input_mode {self.input_mode!r}; known: {INPUT_MODES}")

    def transform(self, image: np.ndarray) -> np.ndarray:
        return vessel_input(image, self.input_mode)

    def probabilities(self, inputs: list[np.ndarray | None], sizes: list[int]) -> list[np.ndarray | None]:
        """Model inputs (from ``decode_inputs`` / ``prepare_inputs``; None = quarantined row) -> per row the vessel
        probabilities (size, size) uint8 (p * 255) at the stored image's size, or None."""
        import cv2

        def resize(i: int, p: np.ndarray | None) -> np.ndarray | None:
            if p is None:
                return None
            p = p[0]
            if p.shape[0] != sizes[i]:  # probabilities are stored at the stored image's size
                p = cv2.resize(p, (sizes[i], sizes[i]), interpolation=cv2.INTER_LINEAR)
            return p

        return list(self.pool.map(resize, range(len(inputs)), self.predict(inputs)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        inputs, status, errors = self.decode_inputs(batch)
        probs = self.probabilities(inputs, batch.column(C.SIZE).to_pylist())
        pngs = list(self.pool.map(lambda p: None if p is None else encode_vessel_prob(p), probs))
        t = batch.select(INPUT_COLUMNS)
        t = t.append_column(C.VESSEL_PROB_PNG, pa.array(pngs, pa.binary()))
        t = t.append_column(C.MODEL_HASH, pa.array([self.model_hash] * batch.num_rows, pa.string()))
        t = t.append_column(C.STATUS, pa.array(status, pa.string()))
        return t.append_column(C.ERROR, pa.array(errors, pa.string()))


def encode_vessel_prob(prob: np.ndarray) -> bytes:
    """(size, size) uint8 vessel probabilities -> the ``vessel_prob_png`` bytes (zlib level 1: the values are
    noise-like, a higher level barely shrinks them). Shared by ``dr-ray vessels`` and ``dr-ray label``."""
    return encode_png(prob, 1)


@functools.lru_cache(maxsize=4)
def _av_classifier(path: str):
    from dr_ray.vessels.av import AVClassifier, load_default_av_classifier

    return load_default_av_classifier() if not path else AVClassifier.load(path)


def _as_list(arr: np.ndarray) -> list:
    return np.ascontiguousarray(arr).ravel().tolist()


def analyse_record(row: dict, cfg: VesselsConfig, *, cfg_hash: str, fov_margin: float,
                   image: np.ndarray | None = None, prob: np.ndarray | None = None) -> dict:
    """One segmented row -> one ``C.VESSELS_SCHEMA`` row (ok with graph and biomarkers, or quarantined).

    ``row``: catalog columns, ``size``, ``model_hash``, ``status``/``error`` of the segmentation and
    ``vessel_prob_png`` (stored as is), plus ``image_png`` unless ``image`` is given. ``image`` ((size, size, 3)
    uint8 RGB) and ``prob`` ((size, size) uint8, p * 255): the arrays when the caller holds them (``dr-ray
    label``), else they are decoded from ``image_png`` / ``vessel_prob_png`` (lossless: the same arrays)."""
    from dr_ray.vessels.analysis import analyse_vessels

    out = {name: None for name in _OUTPUT_SCHEMA.names}
    out.update({k: row.get(k) for k in C.CATALOG_COLUMNS})
    out.update({C.CONFIG_HASH: cfg_hash, C.MODEL_HASH: row.get(C.MODEL_HASH), C.SIZE: row.get(C.SIZE),
                C.VESSEL_THRESHOLD: cfg.threshold})
    if row.get(C.STATUS) != C.STATUS_OK:
        out[C.STATUS], out[C.ERROR] = C.STATUS_QUARANTINED, row.get(C.ERROR) or "segmentation failed"
        return out
    maybe_inject(STAGE, row[C.IMAGE_ID])
    try:
        image = decode_png(row[C.IMAGE_PNG]) if image is None else image
        prob = decode_png(row[C.VESSEL_PROB_PNG]) if prob is None else prob
        fov = circle_mask(int(row[C.SIZE]), margin=fov_margin)
        res = analyse_vessels(prob, image, fov, threshold=cfg.threshold, prune_spur_px=cfg.prune_spur_px,
                              patch_px=cfg.patch_px, av_classifier=_av_classifier(cfg.av_model),
                              disc_diameter_um=cfg.disc_diameter_um, crx_vessels=cfg.crx_vessels,
                              glcm_homogeneity=cfg.glcm_homogeneity)
    except (ImageDecodeError, ValueError) as e:
        out[C.STATUS], out[C.ERROR] = C.STATUS_QUARANTINED, f"{row[C.IMAGE_ID]}: {e}"
        return out
    except Exception as e:  # noqa: BLE001 - one image's unforeseen failure must not stop the job; recorded
        log.exception("unexpected error on %s", row[C.IMAGE_ID])
        out[C.STATUS] = C.STATUS_QUARANTINED
        out[C.ERROR] = f"{row[C.IMAGE_ID]}: unexpected error ({type(e).__name__}: {e})"
        return out
    g, d = res.graph, res.disc
    out.update({
        C.STATUS: C.STATUS_OK,
        C.VESSEL_PROB_PNG: row[C.VESSEL_PROB_PNG],
        C.DISC_FOUND: d.found,
        C.DISC_CX: d.cx if d.found else None,
        C.DISC_CY: d.cy if d.found else None,
        C.DISC_DIAMETER: d.diameter_px if d.found else None,
        C.N_NODES: g.n_nodes,
        C.N_EDGES: g.n_edges,
        C.GRAPH_X: _as_list(g.x),
        C.GRAPH_POS: _as_list(g.pos),
        C.GRAPH_EDGE_INDEX: _as_list(g.edge_index),
        C.GRAPH_EDGE_ATTR: _as_list(g.edge_attr),
        C.BIOMARKER_REASONS: json.dumps(res.reasons(), sort_keys=True),
    })
    for name in C.BIOMARKERS:
        m = res.biomarkers.get(name)
        if m is None:
            raise KeyError(f"analyse_vessels returned no {name!r} (columns and analysis are out of step)")
        out[name] = m.value
    for name in C.ZONE_VESSEL_COUNTS:  # arterioles / venules combined into CRAE / CRVE
        out[name] = res.zone_counts[name]
    return out


def analyse_batch(batch: pa.Table, *, cfg: VesselsConfig, cfg_hash: str, fov_margin: float,
                  threads: float = 1) -> pa.Table:
    """Ray Data batch function (CPU): :class:`VesselSegmenter` output -> ``C.VESSELS_SCHEMA``, row for row."""
    import cv2

    cv2.setNumThreads(max(1, int(threads)))
    rows = [analyse_record(r, cfg, cfg_hash=cfg_hash, fov_margin=fov_margin) for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=_OUTPUT_SCHEMA)


def build_vessels_pipeline(ds, cfg: Config, *, cfg_hash: str, model_hash: str, fov_margin: float):
    """Preprocessed rows -> vessel rows (lazy: nothing runs until the dataset is written)."""
    v = cfg.vessels
    ds = map_model_actor(ds, VesselSegmenter, v, model_hash=model_hash, input_size=v.input_size, ray_cfg=cfg.ray)
    return ds.map_batches(
        analyse_batch,
        batch_format="pyarrow",
        batch_size=v.graph_batch_size,
        num_cpus=v.graph_cpus_per_task,
        fn_kwargs={"cfg": v, "cfg_hash": cfg_hash, "fov_margin": fov_margin, "threads": v.graph_cpus_per_task},
        max_retries=cfg.ray.max_task_retries,  # bounded: Ray Data's default retries a dying task forever
    )


def result_settings(cfg: VesselsConfig, model_hash: str, av_hash: str) -> dict:
    """The settings that change a row's values (not batch sizes or pool sizes): they make ``config_hash``."""
    d = to_dict(cfg)
    for k in ("input", "model_dir", "av_model", "batch_size", "actors", "gpus_per_actor", "cpus_per_actor",
              "graph_batch_size", "graph_cpus_per_task"):
        d.pop(k)
    d["model_hash"], d["av_model_hash"] = model_hash, av_hash
    return d


def av_model_hash(path: str) -> str:
    """Content hash of the A/V classifier file ``path`` ("" = the shipped one), part of the stage's config hash."""
    from dr_ray.vessels.av import default_av_model_path

    p = Path(path) if path else default_av_model_path()
    if not p.is_file():
        raise FileNotFoundError(f"vessels.av_model={path!r}: {p} not found")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def shipped_model_dir() -> Path:
    """The vessel model shipped in the package (``dr_ray/vessels/data/vessel_model``: model.pt, metadata.json,
    MODEL_CARD.md), used when ``vessels.model_dir`` is empty."""
    return Path(str(resources.files("dr_ray.vessels").joinpath("data", "vessel_model")))


def model_input_size(meta: dict, fov_margin: float) -> int:
    """The model input side for a stored image whose FOV circle is ``size / (1 + fov_margin)`` wide, so that its
    FOV is as wide as the model's training FOV (``train_vessels.fov_diameter`` in its metadata: one vessel scale;
    EyePACS is taken as 45-degree), rounded to a multiple of 32; 0 (as stored) for a model trained without it."""
    tv = (meta.get("config") or {}).get("train_vessels") or {}
    d = int(tv.get("fov_diameter") or 0)
    return max(32, round(d * (1.0 + fov_margin) / 32) * 32) if d > 0 else 0


def resolve_vessels(v: VesselsConfig, fov_margin: float) -> VesselsConfig:
    """``v`` with an empty ``model_dir`` replaced by :func:`shipped_model_dir` and ``input_size`` 0 by
    :func:`model_input_size` of the model (the settings every vessels run, single stage or ``label``, uses)."""
    from dr_ray.models import read_metadata

    model_dir = v.model_dir or str(shipped_model_dir())
    if not v.model_dir and not (Path(model_dir) / "model.pt").is_file():
        raise FileNotFoundError(f"vessels.model_dir is empty and the shipped vessel model is missing from "
                                f"{model_dir} (a broken install?): reinstall dr-ray, or train one with "
                                f"`dr-ray train-vessels` and pass --set vessels.model_dir=<its model folder>")
    check_model_dir(model_dir, "vessels.model_dir", "")
    input_size = v.input_size or model_input_size(read_metadata(model_dir), fov_margin)
    return dataclasses.replace(v, model_dir=model_dir, input_size=input_size)


def run_vessels(cfg: Config) -> StageSummary:
    """Segment, graph and measure every preprocessed image not done yet; write shards and a reconciled summary.
    With ``vessels.model_dir`` empty the shipped model runs (:func:`resolve_vessels`)."""
    inp = cfg.vessels.input or stage_dir(cfg.output.dir, "preprocess")
    fov_margin = preprocess_fov_margin(inp, "vessels.input")
    v = resolve_vessels(cfg.vessels, fov_margin)
    cfg = dataclasses.replace(cfg, vessels=v)
    model_hash = check_model_dir(v.model_dir, "vessels.model_dir", "")
    cfg_hash = config_hash(result_settings(v, model_hash, av_model_hash(v.av_model)))
    return run_model_stage(
        cfg, stage=STAGE, input_dir=inp, cfg_hash=cfg_hash, what="vessel settings or model",
        build=lambda ds: build_vessels_pipeline(ds, cfg, cfg_hash=cfg_hash, model_hash=model_hash,
                                                fov_margin=fov_margin))


__all__ = ["VesselSegmenter", "analyse_batch", "av_model_hash", "analyse_record", "build_vessels_pipeline",
           "encode_vessel_prob", "model_input_size", "resolve_vessels", "result_settings", "run_vessels",
           "shipped_model_dir"]
