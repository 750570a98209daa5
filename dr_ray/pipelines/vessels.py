"""Vessels stage: preprocessed shards -> vessel U-Net (actor pool, GPU when there is one) -> graph, optic disc,
A/V and biomarkers (CPU tasks) -> Parquet.

Output layout under ``<output.dir>/vessels/``: ``status=ok/*.parquet`` (``C.VESSELS_SCHEMA``: vessel
probabilities as uint8 PNG, graph arrays for torch_geometric, biomarkers with the reasons of the nulls),
``status=quarantined/*.parquet``, ``quarantine.csv``, ``config.yaml``, ``summary.json``. The input rows are
the preprocess stage's ``status=ok`` rows: ``rows in = written + quarantined``. A rerun with the same
settings and model processes only the images missing from both folders.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import yaml

from dr_ray.config import Config, VesselsConfig, config_hash, dump_yaml, to_dict
from dr_ray.imaging import ImageDecodeError, decode_png, encode_png
from dr_ray.imaging.fov import circle_mask
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.faults import maybe_inject
from dr_ray.training.data import INPUT_MODES, vessel_input
from dr_ray.pipelines.runtime import (
    StageSummary,
    check_resumable,
    finish_stage,
    init_ray,
    scan_outputs,
    stage_dir,
)

log = logging.getLogger(__name__)

STAGE = "vessels"
_OUTPUT_SCHEMA = C.VESSELS_SCHEMA
# Columns the stage reads from the preprocess shards (the image bytes are only read for rows to do).
_INPUT_COLUMNS = [*C.CATALOG_COLUMNS, C.IMAGE_PNG, C.SIZE]


class VesselSegmenter:
    """Ray Data actor: loads the vessel model once, predicts vessel probabilities for whole batches.

    Input columns: ``_INPUT_COLUMNS`` (catalog columns, ``image_png``, ``size``). Output: the same columns plus
    ``vessel_prob_png`` (uint8 p * 255, PNG, same size as the image), ``model_hash``, ``status``, ``error``.
    A row whose image cannot be decoded is passed on with status quarantined and its reason; anything else
    that fails (the model, the GPU) fails the task, as it would for every row.
    """

    def __init__(self, model_dir: str, *, input_size: int = 0, use_gpu: bool = False, amp_bf16: bool = True,
                 threads: int = 1, model_hash: str = "") -> None:
        import torch

        from dr_ray.models import load_model_dir

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("vessels.gpus_per_actor > 0 but this actor sees no CUDA device "
                               "(CUDA_VISIBLE_DEVICES is empty or the torch build has no CUDA)")
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.amp = bool(amp_bf16 and use_gpu)
        model, meta = load_model_dir(model_dir, map_location=self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        spec = meta["spec"]
        if spec["in_channels"] != 3 or spec["out_channels"] != 1 or spec["output"] != "sigmoid":
            raise ValueError(f"{model_dir}: expected a binary vessel model (3 -> 1 channel, sigmoid), "
                             f"got {spec['in_channels']} -> {spec['out_channels']} {spec['output']}")
        # the input transform the model was trained with (dr_ray.training.data.vessel_input), from its metadata
        self.input_mode = str(((meta.get("config") or {}).get("train_vessels") or {}).get("input_mode", "rgb"))
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"{model_dir}: metadata names input_mode {self.input_mode!r}; known: {INPUT_MODES}")
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(spec["std"], dtype=torch.float32, device=self.device).view(shape)
        self.input_size = int(input_size)
        self.model_hash = model_hash
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))

    def _forward(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, H, W) uint8 probabilities (p * 255, rounded)."""
        torch = self.torch
        import torch.nn.functional as F

        x = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x / 255.0 - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = -h % 32, -w % 32  # the U-Net's stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            prob = torch.sigmoid(logits.float())[:, 0, :h, :w]
            return (prob * 255.0).round().to(torch.uint8).cpu().numpy()

    def _decode(self, data: bytes | None, size: int) -> np.ndarray:
        if data is None:
            raise ImageDecodeError("no processed image in the preprocess row")
        img = decode_png(data)
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != (size, size):
            raise ImageDecodeError(f"processed image has shape {img.shape}, expected ({size}, {size}, 3)")
        return img

    def __call__(self, batch: pa.Table) -> pa.Table:
        import cv2

        n = batch.num_rows
        pngs = batch.column(C.IMAGE_PNG).to_pylist()
        sizes = batch.column(C.SIZE).to_pylist()
        ids = batch.column(C.IMAGE_ID).to_pylist()
        status = [C.STATUS_OK] * n
        errors: list[str | None] = [None] * n

        def decode(i: int) -> np.ndarray | None:
            """Row i's model input: decoded, resized to input_size (the trained scale), input transform."""
            try:
                img = self._decode(pngs[i], sizes[i])
            except (ImageDecodeError, ValueError) as e:
                status[i], errors[i] = C.STATUS_QUARANTINED, f"{ids[i]}: {e}"
                return None
            if self.input_size and self.input_size != img.shape[0]:
                img = cv2.resize(img, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
            return vessel_input(img, self.input_mode)

        # PNG decode/encode and CLAHE release the GIL: threads keep the model fed (one core decodes ~230
        # 512-px PNGs/s).
        inputs = list(self.pool.map(decode, range(n)))
        by_shape: dict[int, list[int]] = {}  # one preprocess run has one size; group in case of a mixed input
        for i, img in enumerate(inputs):
            if img is not None:
                by_shape.setdefault(img.shape[0], []).append(i)

        def encode(i: int, p: np.ndarray) -> bytes:
            if p.shape[0] != sizes[i]:  # probabilities are stored at the stored image's size
                p = cv2.resize(p, (sizes[i], sizes[i]), interpolation=cv2.INTER_LINEAR)
            return encode_png(p, 1)

        probs: list[bytes | None] = [None] * n
        for rows in by_shape.values():
            out = self._forward(np.stack([inputs[i] for i in rows]))
            for i, png in zip(rows, self.pool.map(encode, rows, out)):
                probs[i] = png
        t = batch.select(_INPUT_COLUMNS)
        t = t.append_column(C.VESSEL_PROB_PNG, pa.array(probs, pa.binary()))
        t = t.append_column(C.MODEL_HASH, pa.array([self.model_hash] * n, pa.string()))
        t = t.append_column(C.STATUS, pa.array(status, pa.string()))
        return t.append_column(C.ERROR, pa.array(errors, pa.string()))


@functools.lru_cache(maxsize=4)
def _av_classifier(path: str):
    from dr_ray.vessels.av import AVClassifier, load_default_av_classifier

    return load_default_av_classifier() if not path else AVClassifier.load(path)


def _as_list(arr: np.ndarray) -> list:
    return np.ascontiguousarray(arr).ravel().tolist()


def analyse_record(row: dict, cfg: VesselsConfig, *, cfg_hash: str, fov_margin: float) -> dict:
    """One segmented row -> one ``C.VESSELS_SCHEMA`` row (ok with graph and biomarkers, or quarantined)."""
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
        image = decode_png(row[C.IMAGE_PNG])
        prob = decode_png(row[C.VESSEL_PROB_PNG])
        fov = circle_mask(int(row[C.SIZE]), margin=fov_margin)
        res = analyse_vessels(prob, image, fov, threshold=cfg.threshold, prune_spur_px=cfg.prune_spur_px,
                              patch_px=cfg.patch_px, av_classifier=_av_classifier(cfg.av_model),
                              disc_diameter_um=cfg.disc_diameter_um)
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
    import ray

    v = cfg.vessels
    ds = ds.map_batches(
        VesselSegmenter,
        batch_format="pyarrow",
        batch_size=v.batch_size,
        compute=ray.data.ActorPoolStrategy(size=v.actors),
        num_gpus=v.gpus_per_actor,
        num_cpus=v.cpus_per_actor,
        fn_constructor_kwargs={"model_dir": v.model_dir, "input_size": v.input_size,
                               "use_gpu": v.gpus_per_actor > 0, "amp_bf16": v.amp_bf16,
                               "threads": int(v.cpus_per_actor), "model_hash": model_hash},
    )
    return ds.map_batches(
        analyse_batch,
        batch_format="pyarrow",
        batch_size=v.graph_batch_size,
        num_cpus=v.graph_cpus_per_task,
        fn_kwargs={"cfg": v, "cfg_hash": cfg_hash, "fov_margin": fov_margin, "threads": v.graph_cpus_per_task},
    )


def _input_dir(cfg: Config) -> str:
    return cfg.vessels.input or stage_dir(cfg.output.dir, "preprocess")


def read_input_index(input_dir: str) -> pa.Table:
    """Catalog columns of the preprocess stage's ``status=ok`` rows (no image bytes): the stage's input rows."""
    ok_dir = fs.join(input_dir, f"{C.STATUS}={C.STATUS_OK}")
    if not fs.is_dir(ok_dir):
        raise FileNotFoundError(f"{ok_dir} not found: run `dr-ray preprocess` first, or set vessels.input to a "
                                f"preprocess stage folder")
    filesystem, inner = fs.resolve(ok_dir)
    dataset = pads.dataset(inner, filesystem=filesystem, format="parquet")
    return dataset.to_table(columns=list(C.CATALOG_COLUMNS)).cast(C.CATALOG_SCHEMA)


def _preprocess_margin(input_dir: str) -> float:
    """``preprocess.fov_margin`` of the run that wrote ``input_dir`` (its saved config.yaml)."""
    path = fs.join(input_dir, "config.yaml")
    try:
        tree = yaml.safe_load(fs.read_bytes(path))
        return float(tree["preprocess"]["fov_margin"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: vessels.input must be a folder written by dr-ray preprocess")
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read preprocess.fov_margin ({type(e).__name__}: {e})") from e


def result_settings(cfg: VesselsConfig, model_hash: str, av_hash: str) -> dict:
    """The settings that change a row's values (not batch sizes or pool sizes): they make ``config_hash``."""
    d = to_dict(cfg)
    for k in ("input", "model_dir", "av_model", "batch_size", "actors", "gpus_per_actor", "cpus_per_actor",
              "graph_batch_size", "graph_cpus_per_task"):
        d.pop(k)
    d["model_hash"], d["av_model_hash"] = model_hash, av_hash
    return d


def _av_model_hash(path: str) -> str:
    from dr_ray.vessels.av import default_av_model_path

    import hashlib

    p = Path(path) if path else default_av_model_path()
    if not p.is_file():
        raise FileNotFoundError(f"vessels.av_model={path!r}: {p} not found")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def run_vessels(cfg: Config) -> StageSummary:
    """Segment, graph and measure every preprocessed image not done yet; write shards and a reconciled summary."""
    import ray

    from dr_ray.models import artifact_hash

    v = cfg.vessels
    if not v.model_dir:
        raise ValueError("vessels.model_dir is empty: train a model with `dr-ray train-vessels` (it writes "
                         "<output.dir>/train_vessels/model) and pass --set vessels.model_dir=<that folder>")
    if fs.is_uri(v.model_dir):
        raise ValueError(f"vessels.model_dir={v.model_dir!r}: the model is loaded from a local (or mounted) path")
    model_hash = artifact_hash(v.model_dir)
    cfg_hash = config_hash(result_settings(v, model_hash, _av_model_hash(v.av_model)))
    inp = _input_dir(cfg)
    inputs = read_input_index(inp)
    fov_margin = _preprocess_margin(inp)
    out = stage_dir(cfg.output.dir, STAGE)

    before = scan_outputs(out)
    check_resumable(before.table, cfg_hash, out, cfg.output.resume, what="vessel settings or model")
    fs.makedirs(out)
    fs.write_text(fs.join(out, "config.yaml"), dump_yaml(cfg))
    done = before.ids()
    todo = inputs.filter(pc.invert(pc.is_in(inputs.column(C.IMAGE_ID), value_set=done)))
    already = inputs.num_rows - todo.num_rows
    log.info("%s: %d preprocessed images in %s, %d done by earlier runs, %d to process -> %s",
             STAGE, inputs.num_rows, inp, already, todo.num_rows, out)

    elapsed = 0.0
    if todo.num_rows:
        from ray.data.expressions import col

        init_ray(cfg.ray)
        # Blocks of at most ray.rows_per_file rows: Ray Data would otherwise merge small shards into one read
        # task, and a crash would then lose (and a resume redo) everything that task had done.
        ds = ray.data.read_parquet(fs.join(inp, f"{C.STATUS}={C.STATUS_OK}"), partitioning=None,
                                   override_num_blocks=max(1, -(-inputs.num_rows // cfg.ray.rows_per_file)))
        ds = ds.select_columns(_INPUT_COLUMNS)
        if already:
            ds = ds.filter(expr=~col(C.IMAGE_ID).is_in(done.to_pylist()))
        ds = build_vessels_pipeline(ds, cfg, cfg_hash=cfg_hash, model_hash=model_hash, fov_margin=fov_margin)
        t0 = time.perf_counter()
        ds.write_parquet(out, partition_cols=[C.STATUS])
        elapsed = time.perf_counter() - t0

    return finish_stage(STAGE, inputs, before, out, label_problems=0, already_done=already,
                        processed_now=todo.num_rows, run_seconds=elapsed)


__all__ = ["VesselSegmenter", "analyse_batch", "analyse_record", "build_vessels_pipeline", "read_input_index",
           "result_settings", "run_vessels"]
