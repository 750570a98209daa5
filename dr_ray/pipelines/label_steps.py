"""The steps of ``dr-ray label``'s stream (see :mod:`dr_ray.pipelines.label` for the design), named and pure
apart from the model actor, so a benchmark can time them one by one and the isolated second pass
(:mod:`dr_ray.pipelines.label_recovery`) can run them outside Ray Data:

1. :func:`label_preprocess_batch` (CPU task): catalog rows + resume flags -> preprocess rows + ``_image``;
2. :class:`LabelModels` (actor): ``_image`` -> ``_vessel_prob`` + prefixed vessel-model and pseudo-label columns;
3. :func:`label_vessels_batch` (CPU task): ``_image`` + ``_vessel_prob`` -> prefixed vessel rows; drops the tensors;
4. :func:`split_stage_tables` / :func:`stage_table`: one fused batch -> each stage's table in its own schema;
5. :func:`commit_label_batch`: 4, then :func:`dr_ray.pipelines.commit.commit_tables` (atomic, exactly once).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from dr_ray.config import Config, PreprocessConfig, PseudoLabelsConfig, VesselsConfig
from dr_ray.io import columns as C

log = logging.getLogger(__name__)

PRE, VES, LES = "preprocess", "vessels", "pseudo_labels"
STAGES = (PRE, VES, LES)
# stream-only columns (never written)
IMAGE_ARRAY = "_image"  # (n, size, size, 3) uint8 RGB processed image; zeros where preprocess quarantined
VESSEL_PROB_ARRAY = "_vessel_prob"  # (n, size, size) uint8 vessel probabilities (p * 255); zeros where none
TODO = {s: f"_todo_{s}" for s in STAGES}  # bool: this run writes the row of that stage


def stream_column(stage: str, name: str) -> str:
    """Name in the fused stream of a model stage's own column (status, error, ... collide across stages)."""
    return f"__{stage}__{name}"


def _tensor(batch: pa.Table, name: str) -> np.ndarray:
    """A tensor column of a pyarrow batch as one (n, ...) ndarray."""
    col = batch.column(name)
    return np.concatenate([c.to_numpy() for c in col.chunks]) if col.num_chunks != 1 else col.chunk(0).to_numpy()


def _tensor_array(arrays: list[np.ndarray | None], shape: tuple[int, ...]) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    out = np.zeros((len(arrays), *shape), np.uint8)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = a
    return ArrowTensorArray.from_numpy(out)


def ids_in(ids: pa.Array, values: pa.Array) -> np.ndarray:
    """bool per entry of ``ids``: is it among ``values``."""
    import pyarrow.compute as pc

    return np.asarray(pc.is_in(ids, value_set=values).to_numpy(zero_copy_only=False), bool)


def _flags(batch: pa.Table, stage: str) -> list[bool]:
    return [bool(x) for x in batch.column(TODO[stage]).to_pylist()]


def label_preprocess_batch(batch: pa.Table, *, cfg: PreprocessConfig, cfg_hash: str, threads: float = 1) -> pa.Table:
    """Step 1 (CPU task). Input: ``C.CATALOG_SCHEMA`` + the ``_todo_*`` flags. Output: ``C.PREPROCESS_SCHEMA``
    (``image_png`` encoded once, for storage), the flags, and ``_image`` (n, size, size, 3) uint8. With
    ``cfg.decode_device`` cuda the batch's JPEGs are decoded in one nvJPEG call and the task holds
    ``cfg.decode_gpus_per_task`` of a GPU (:func:`dr_ray.pipelines.preprocess.decode_resources`).

    A row quarantined here is not sent to the models (its model flags are cleared) unless its preprocess row was
    already stored ok by an earlier run (recomputing it failed now, e.g. the file became unreadable): then the
    model stages record the reason as their own quarantine, so their counts still reconcile."""
    import cv2

    from dr_ray.pipelines.preprocess import preprocess_records_images

    cv2.setNumThreads(max(1, int(threads)))
    results = preprocess_records_images(batch.select(list(C.CATALOG_COLUMNS)).to_pylist(), cfg, cfg_hash)
    rows = [r for r, _ in results]
    images = [img for _, img in results]
    todo_pre = _flags(batch, PRE)
    failed = [img is None for img in images]
    for r, pre, bad in zip(rows, todo_pre, failed):
        if bad and not pre:
            r[C.SIZE] = cfg.size  # the stored row's size, for the model stages' quarantined rows
    t = pa.Table.from_pylist(rows, schema=C.PREPROCESS_SCHEMA)
    t = t.append_column(TODO[PRE], pa.array(todo_pre, pa.bool_()))
    for s in (VES, LES):
        t = t.append_column(TODO[s], pa.array([f and not (bad and pre) for f, bad, pre in
                                               zip(_flags(batch, s), failed, todo_pre)], pa.bool_()))
    return t.append_column(IMAGE_ARRAY, _tensor_array(images, (cfg.size, cfg.size, 3)))


class LabelModels:
    """Ray Data actor holding the vessel model, the lesion model, or both (``stages``), each loaded once.

    Input: step 1's columns. Output: the same plus, for ``vessels``, ``_vessel_prob`` (n, size, size) uint8 and
    ``__vessels__{status,error,model_hash}``; for ``pseudo_labels``, every non-catalog ``C.PSEUDO_LABELS_SCHEMA``
    column as ``__pseudo_labels__<name>``. Rows a stage does not need get no model forward (their values are
    placeholders, dropped by :func:`split_stage_tables`)."""

    def __init__(self, *, stages: tuple[str, ...], vessels: VesselsConfig, pseudo_labels: PseudoLabelsConfig,
                 vessel_model_hash: str, lesion_model_hash: str, lesion_cfg_hash: str, fov_margin: float,
                 use_gpu: bool, amp_bf16: bool, threads: int) -> None:
        from dr_ray.pipelines.pseudo_labels import PseudoLabeler
        from dr_ray.pipelines.vessels import VesselSegmenter

        common = {"use_gpu": use_gpu, "amp_bf16": amp_bf16, "threads": threads}
        self.vessel = self.lesion = None
        if VES in stages:
            self.vessel = VesselSegmenter(vessels.model_dir, input_size=vessels.input_size,
                                          model_hash=vessel_model_hash, **common)
        if LES in stages:
            self.lesion = PseudoLabeler(pseudo_labels.model_dir, cfg=pseudo_labels, cfg_hash=lesion_cfg_hash,
                                        fov_margin=fov_margin, model_hash=lesion_model_hash, **common)

    @staticmethod
    def _inputs(batch: pa.Table, images: np.ndarray, stage: str) -> tuple[list, list]:
        """Per row the stored image (or None) and the reason when None, for one model stage."""
        ids = batch.column(C.IMAGE_ID).to_pylist()
        ok = [s == C.STATUS_OK for s in batch.column(C.STATUS).to_pylist()]
        pre_err = batch.column(C.ERROR).to_pylist()
        need = _flags(batch, stage)
        imgs, errs = [], []
        for i in range(batch.num_rows):
            if need[i] and ok[i]:
                imgs.append(images[i])
                errs.append(None)
            else:
                imgs.append(None)
                errs.append(f"{ids[i]}: the preprocessed image could not be recomputed ({pre_err[i]})" if need[i]
                            else "not processed by this run")
        return imgs, errs

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = _tensor(batch, IMAGE_ARRAY)
        ids = batch.column(C.IMAGE_ID).to_pylist()
        sizes = batch.column(C.SIZE).to_pylist()
        out = batch
        if self.vessel is not None:
            imgs, errs = self._inputs(batch, images, VES)
            inputs, status, errors = self.vessel.prepare_inputs(imgs, sizes, ids, errors=errs)
            probs = self.vessel.probabilities(inputs, sizes)
            size = images.shape[1]
            out = out.append_column(VESSEL_PROB_ARRAY, _tensor_array(probs, (size, size)))
            out = out.append_column(stream_column(VES, C.STATUS), pa.array(status, pa.string()))
            out = out.append_column(stream_column(VES, C.ERROR), pa.array(errors, pa.string()))
            out = out.append_column(stream_column(VES, C.MODEL_HASH),
                                    pa.array([self.vessel.model_hash] * batch.num_rows, pa.string()))
        if self.lesion is not None:
            imgs, errs = self._inputs(batch, images, LES)
            inputs, status, errors = self.lesion.prepare_inputs(imgs, sizes, ids, errors=errs)
            t = self.lesion.lesion_table(batch.select([*C.CATALOG_COLUMNS, C.SIZE]), inputs, status, errors)
            for name in t.column_names:
                if name not in C.CATALOG_COLUMNS:
                    out = out.append_column(stream_column(LES, name), t.column(name))
        return out


def label_vessels_batch(batch: pa.Table, *, cfg: VesselsConfig, cfg_hash: str, fov_margin: float,
                        threads: float = 1) -> pa.Table:
    """Step 3 (CPU task): per row that needs it, the vessel probabilities PNG-encoded once (storage) and the
    graph, optic disc, A/V and biomarkers (:func:`dr_ray.pipelines.vessels.analyse_record` on the arrays).
    Output: the input columns without the tensors, plus every non-catalog ``C.VESSELS_SCHEMA`` column as
    ``__vessels__<name>``."""
    import cv2

    from dr_ray.pipelines.vessels import analyse_record, encode_vessel_prob

    cv2.setNumThreads(max(1, int(threads)))
    images, probs = _tensor(batch, IMAGE_ARRAY), _tensor(batch, VESSEL_PROB_ARRAY)
    need = _flags(batch, VES)
    cols = [*C.CATALOG_COLUMNS, C.SIZE]
    model_cols = {n: stream_column(VES, n) for n in (C.STATUS, C.ERROR, C.MODEL_HASH)}
    src = batch.select(cols + list(model_cols.values())).to_pylist()
    empty = {name: None for name in C.VESSELS_SCHEMA.names}
    rows = []
    for i, r in enumerate(src):
        if not need[i]:
            rows.append({**empty, C.STATUS: C.STATUS_QUARANTINED})  # placeholder, dropped by the split
            continue
        row = {k: r[k] for k in cols}
        row.update({n: r[s] for n, s in model_cols.items()})
        ok = row[C.STATUS] == C.STATUS_OK
        row[C.VESSEL_PROB_PNG] = encode_vessel_prob(probs[i]) if ok else None
        rows.append(analyse_record(row, cfg, cfg_hash=cfg_hash, fov_margin=fov_margin,
                                   image=images[i] if ok else None, prob=probs[i] if ok else None))
    t = pa.Table.from_pylist(rows, schema=C.VESSELS_SCHEMA)
    out = batch.drop_columns([IMAGE_ARRAY, VESSEL_PROB_ARRAY, *model_cols.values()])
    for name in t.column_names:
        if name not in C.CATALOG_COLUMNS:
            out = out.append_column(stream_column(VES, name), t.column(name))
    return out


def stage_table(batch: pa.Table, stage: str) -> pa.Table:
    """The rows of one stage (``preprocess`` / ``vessels`` / ``pseudo_labels``) this run writes (its
    ``_todo_*`` flag), in the stage's own schema, from a fused batch that holds that stage's columns."""
    t = batch.filter(batch.column(TODO[stage]))
    if stage == PRE:
        return t.select(C.PREPROCESS_SCHEMA.names).cast(C.PREPROCESS_SCHEMA)
    schema = C.VESSELS_SCHEMA if stage == VES else C.PSEUDO_LABELS_SCHEMA
    names = [n if n in C.CATALOG_COLUMNS else stream_column(stage, n) for n in schema.names]
    return pa.table([t.column(n) for n in names], schema=schema)


def split_stage_tables(batch: pa.Table) -> dict[str, pa.Table]:
    """Step 4: one fused batch (step 3's output) -> {"preprocess": ``C.PREPROCESS_SCHEMA``, "vessels":
    ``C.VESSELS_SCHEMA``, "pseudo_labels": ``C.PSEUDO_LABELS_SCHEMA``}, each holding only the rows this run
    writes for that stage (its ``_todo_*`` flag)."""
    return {s: stage_table(batch, s) for s in STAGES}


def commit_label_batch(batch: pa.Table, *, stage_paths: dict[str, str], run_id: str) -> pa.Table:
    """Step 5, the batch function ending the stream: split, then commit each stage's rows atomically under its
    folder. Returns ``commit_tables``' small count table (one row per stage folder, no per-image data)."""
    from dr_ray.pipelines.commit import commit_tables

    tables = split_stage_tables(batch)
    return commit_tables({stage_paths[s]: t for s, t in tables.items()}, run_id=run_id)


def model_kwargs(cfg: Config, *, stages: tuple[str, ...], hashes: dict, section) -> dict:
    """:class:`LabelModels`' constructor arguments; ``section``: the config section sizing its actors."""
    return {"stages": stages, "vessels": cfg.vessels, "pseudo_labels": cfg.pseudo_labels,
            "vessel_model_hash": hashes["vessel_model"], "lesion_model_hash": hashes["lesion_model"],
            "lesion_cfg_hash": hashes[LES], "fov_margin": cfg.preprocess.fov_margin,
            "use_gpu": section.gpus_per_actor > 0, "amp_bf16": section.amp_bf16,
            "threads": int(section.cpus_per_actor)}


def _pool(ds, section, *, stages: tuple[str, ...], cfg: Config, hashes: dict):
    from dr_ray.pipelines.inference import map_actor_pool

    return map_actor_pool(ds, LabelModels, section, ray_cfg=cfg.ray,
                          constructor_kwargs=model_kwargs(cfg, stages=stages, hashes=hashes, section=section))


def build_label_pipeline(ds, cfg: Config, *, hashes: dict[str, str]):
    """Catalog rows with ``_todo_*`` flags -> fused rows ready for :func:`split_stage_tables` (lazy: nothing runs
    until the stream is consumed). ``hashes``: the config hashes of the three stages (keys ``preprocess``,
    ``vessels``, ``pseudo_labels``) and the model hashes (``vessel_model``, ``lesion_model``). Build it inside
    ``with_context(bounded_data_context(cfg.ray))``."""
    from dr_ray.pipelines.commit_stream import task_retry_args
    from dr_ray.pipelines.preprocess import decode_resources

    fov_margin = cfg.preprocess.fov_margin
    # max_retries on the CPU tasks: bounded (Ray Data's default retries an image that kills its worker forever),
    # and, being a task-only argument, it keeps Ray Data from fusing the decode into the model actor, where every
    # JPEG would be decoded on the actor's one CPU slot instead of on every core.
    ds = ds.map_batches(label_preprocess_batch, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
                        num_cpus=cfg.ray.cpus_per_task, **decode_resources(cfg.preprocess), **task_retry_args(cfg.ray),
                        fn_kwargs={"cfg": cfg.preprocess, "cfg_hash": hashes[PRE], "threads": cfg.ray.cpus_per_task})
    if cfg.label.model_pools == "one":
        ds = _pool(ds, cfg.label, stages=(VES, LES), cfg=cfg, hashes=hashes)
    else:
        ds = _pool(ds, cfg.vessels, stages=(VES,), cfg=cfg, hashes=hashes)
        ds = _pool(ds, cfg.pseudo_labels, stages=(LES,), cfg=cfg, hashes=hashes)
    v = cfg.vessels
    return ds.map_batches(label_vessels_batch, batch_format="pyarrow", batch_size=v.graph_batch_size,
                          num_cpus=v.graph_cpus_per_task, **task_retry_args(cfg.ray),
                          fn_kwargs={"cfg": v, "cfg_hash": hashes[VES], "fov_margin": fov_margin,
                                     "threads": v.graph_cpus_per_task})


__all__ = ["IMAGE_ARRAY", "LES", "PRE", "STAGES", "TODO", "VES", "VESSEL_PROB_ARRAY", "LabelModels",
           "build_label_pipeline", "commit_label_batch", "ids_in", "label_preprocess_batch", "label_vessels_batch",
           "model_kwargs", "split_stage_tables", "stage_table", "stream_column"]
