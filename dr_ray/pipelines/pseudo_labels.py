"""Pseudo-labels stage: preprocessed shards -> lesion segmentation model (actor pool, GPU when there is one) ->
per-image lesion maps (uint8 probabilities at ``pseudo_labels.map_size``, one PNG) + per-lesion area fraction
and component count -> Parquet.

Output layout under ``<output.dir>/pseudo_labels/``: ``status=ok/`` and ``status=quarantined/`` shards
(``C.PSEUDO_LABELS_SCHEMA``), ``quarantine.csv``, ``config.yaml``, ``summary.json``. Every row names the model
(``model_hash``) and the settings (``config_hash``) that made it. Input rows are the preprocess stage's
``status=ok`` rows: ``rows in = written + quarantined``; reruns resume.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from dr_ray.config import Config, PseudoLabelsConfig, config_hash, to_dict
from dr_ray.imaging import circle_mask, encode_lesion_maps, lesion_statistics, reduce_maps
from dr_ray.io import columns as C
from dr_ray.faults import maybe_inject
from dr_ray.pipelines.inference import (
    ModelActor,
    check_model_dir,
    map_model_actor,
    preprocess_fov_margin,
    run_model_stage,
)
from dr_ray.pipelines.reconcile import StageSummary
from dr_ray.pipelines.runtime import stage_dir

log = logging.getLogger(__name__)

STAGE = "pseudo_labels"


def model_lesion_kinds(meta: dict, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The lesion kind of each output channel: the model's metadata (spec kwargs ``lesion_kinds``) when it names
    them, else ``fallback`` (``pseudo_labels.lesion_kinds``); must match the output channel count."""
    kinds = tuple((meta["spec"].get("kwargs") or {}).get("lesion_kinds") or fallback)
    if len(kinds) != meta["spec"]["out_channels"]:
        raise ValueError(f"the model has {meta['spec']['out_channels']} output channels but the lesion kinds are "
                         f"{list(kinds)} (set pseudo_labels.lesion_kinds, one per channel)")
    bad = [k for k in kinds if k not in C.LESION_KINDS]
    if bad:
        raise ValueError(f"unknown lesion kinds {bad}; known: {', '.join(C.LESION_KINDS)}")
    return kinds


class PseudoLabeler(ModelActor):
    """Ray Data actor: lesion model over whole batches; per image (on the actor's threads) the statistics at the
    model's resolution and the maps reduced to ``map_size``, PNG-encoded.

    Input columns: ``INPUT_COLUMNS``. Output: ``C.PSEUDO_LABELS_SCHEMA``, row for row; an undecodable image is a
    quarantined row with its reason; a failing model or GPU fails the task (Ray retries it on a new actor).
    """

    stage = STAGE

    def __init__(self, model_dir: str, *, cfg: PseudoLabelsConfig, cfg_hash: str, fov_margin: float,
                 **kwargs) -> None:
        self.cfg, self.cfg_hash, self.fov_margin = cfg, cfg_hash, fov_margin
        super().__init__(model_dir, input_size=cfg.input_size, **kwargs)

    def check_model(self, model_dir: str, meta: dict) -> None:
        self.kinds = model_lesion_kinds(meta, self.cfg.lesion_kinds)

    def _summarise(self, prob: np.ndarray | None) -> tuple[bytes | None, np.ndarray | None, np.ndarray | None]:
        """(K, h, w) uint8 probabilities -> (maps PNG, area (K,), count (K,)); Nones for an undecodable row."""
        if prob is None:
            return None, None, None
        fov = circle_mask(prob.shape[-1], margin=self.fov_margin)
        area, count = lesion_statistics(prob, threshold=self.cfg.threshold, fov=fov,
                                        min_component_px=self.cfg.min_component_px)
        png = encode_lesion_maps(reduce_maps(prob, self.cfg.map_size, how=self.cfg.reduce))
        return png, area, count

    def __call__(self, batch: pa.Table) -> pa.Table:
        inputs, status, errors = self.decode_inputs(batch)
        return self.lesion_table(batch, inputs, status, errors)

    def lesion_table(self, batch: pa.Table, inputs: list[np.ndarray | None], status: list[str],
                     errors: list[str | None]) -> pa.Table:
        """Model inputs of ``batch``'s rows (from ``decode_inputs`` / ``prepare_inputs``: None = quarantined, with
        its status and error) -> ``C.PSEUDO_LABELS_SCHEMA`` rows. ``batch`` supplies the catalog columns and
        ``size``. Shared by ``dr-ray pseudo-labels`` and ``dr-ray label`` (which passes preprocessed arrays)."""
        n = batch.num_rows
        ids = batch.column(C.IMAGE_ID).to_pylist()
        for image_id in ids:
            maybe_inject(STAGE, image_id)
        sizes = batch.column(C.SIZE).to_pylist()
        results = list(self.pool.map(self._summarise, self.predict(inputs)))
        cols: dict[str, pa.Array] = {name: batch.column(name) for name in C.CATALOG_COLUMNS}
        cols[C.STATUS] = pa.array(status, pa.string())
        cols[C.ERROR] = pa.array(errors, pa.string())
        cols[C.CONFIG_HASH] = pa.array([self.cfg_hash] * n, pa.string())
        cols[C.MODEL_HASH] = pa.array([self.model_hash] * n, pa.string())
        cols[C.SIZE] = pa.array(sizes, pa.int32())
        ok = [r[0] is not None for r in results]
        cols[C.LESION_MAPS_PNG] = pa.array([r[0] for r in results], pa.binary())
        cols[C.LESION_MAP_KINDS] = pa.array([",".join(self.kinds) if o else None for o in ok], pa.string())
        cols[C.LESION_MAP_SIZE] = pa.array([self.cfg.map_size if o else None for o in ok], pa.int32())
        for kind in C.LESION_KINDS:
            j = self.kinds.index(kind) if kind in self.kinds else None
            cols[C.lesion_area_column(kind)] = pa.array(
                [float(r[1][j]) if (r[1] is not None and j is not None) else None for r in results], pa.float32())
            cols[C.lesion_count_column(kind)] = pa.array(
                [int(r[2][j]) if (r[2] is not None and j is not None) else None for r in results], pa.int32())
        return pa.table([cols[name] for name in C.PSEUDO_LABELS_SCHEMA.names], schema=C.PSEUDO_LABELS_SCHEMA)


def result_settings(cfg: PseudoLabelsConfig, model_hash: str) -> dict:
    """The settings that change a row's values (not batch or pool sizes): they make ``config_hash``."""
    d = to_dict(cfg)
    for k in ("input", "model_dir", "batch_size", "actors", "gpus_per_actor", "cpus_per_actor"):
        d.pop(k)
    d["model_hash"] = model_hash
    return d


def build_pseudo_labels_pipeline(ds, cfg: Config, *, cfg_hash: str, model_hash: str, fov_margin: float):
    """Preprocessed rows -> pseudo-label rows (lazy: nothing runs until the dataset is written)."""
    p = cfg.pseudo_labels
    return map_model_actor(ds, PseudoLabeler, p, model_hash=model_hash, cfg=p, cfg_hash=cfg_hash,
                           fov_margin=fov_margin, ray_cfg=cfg.ray)


def run_pseudo_labels(cfg: Config) -> StageSummary:
    """Lesion maps and statistics for every preprocessed image not done yet; shards and a reconciled summary."""
    p = cfg.pseudo_labels
    model_hash = check_model_dir(p.model_dir, "pseudo_labels.model_dir",
                                 "train a lesion model with `dr-ray train-lesions` and pass "
                                 "--set pseudo_labels.model_dir=<its model folder>")
    cfg_hash = config_hash(result_settings(p, model_hash))
    inp = p.input or stage_dir(cfg.output.dir, "preprocess")
    fov_margin = preprocess_fov_margin(inp, "pseudo_labels.input")
    return run_model_stage(
        cfg, stage=STAGE, input_dir=inp, cfg_hash=cfg_hash, what="pseudo-label settings or model",
        build=lambda ds: build_pseudo_labels_pipeline(ds, cfg, cfg_hash=cfg_hash, model_hash=model_hash,
                                                      fov_margin=fov_margin))


__all__ = ["PseudoLabeler", "build_pseudo_labels_pipeline", "model_lesion_kinds",
           "result_settings", "run_pseudo_labels"]
