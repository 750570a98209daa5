"""``dr-ray label``: catalog -> decode + preprocess (CPU tasks) -> vessel and lesion models (actor pool) -> vessel
graph + biomarkers (CPU tasks) -> the ``preprocess/``, ``vessels/`` and ``pseudo_labels/`` stage folders, in ONE
Ray Data stream.

Each JPEG is read and decoded once (reduced-DCT decode, :func:`dr_ray.imaging.preprocess_image`); the processed
image travels to the models and to the graph step as a tensor column (``_image``, (n, size, size, 3) uint8) inside
the blocks, never as PNG bytes decoded again; its PNG is encoded once, for the ``preprocess/`` folder. The vessel
probabilities travel the same way (``_vessel_prob``) and are PNG-encoded once, for ``vessels/``.

The per-step functions are the single stages' own, refactored to take arrays, so ``label`` and the three stage
commands write identical rows: :func:`dr_ray.pipelines.preprocess.preprocess_record_image`,
:meth:`ModelActor.prepare_inputs`, :meth:`VesselSegmenter.probabilities`, :meth:`PseudoLabeler.lesion_table`,
:func:`dr_ray.pipelines.vessels.analyse_record` (with ``image=`` / ``prob=``). The steps of this module, named
and pure apart from the model actor, so a benchmark can time them one by one:

1. :func:`label_preprocess_batch` (CPU task): catalog rows + resume flags -> preprocess rows + ``_image``;
2. :class:`LabelModels` (actor): ``_image`` -> ``_vessel_prob`` + prefixed vessel-model and pseudo-label columns;
3. :func:`label_vessels_batch` (CPU task): ``_image`` + ``_vessel_prob`` -> prefixed vessel rows; drops the tensors;
4. :func:`split_stage_tables`: one fused batch -> {stage: table in the stage's own schema};
5. :func:`commit_label_batch`: 4, then :func:`dr_ray.pipelines.commit.commit_tables` (atomic, exactly once).

One actor holding both models (``label.model_pools=one``, the default) rather than a vessel pool then a lesion
pool (``two``), chosen by measurement on CPU here (/tmp script, tiny mobilenetv3 U-Nets, 16 synthetic images at
256 px, 2-CPU local Ray on a shared 2-core VM): ``one`` ran the stream in 44 s and 99 s (two runs, the machine
busy with other jobs); ``two`` did not finish in 6 minutes: each pool's actor holds a CPU slot, so on 2 CPUs the
two actors hold both and the decode tasks never get one (Ray Data warns that no CPU is available). ``one`` needs
one slot fewer per replica, moves each image batch into the models once instead of twice (an extra
object-store hop of ~0.8 MB per 512-px image), and holds one CUDA context and one copy of the batch per GPU;
both models are small next to a GPU (vessel U-Net ~10 MB, Swin U-Net ~0.1 GB of weights). ``two`` stays for
models that do not fit one GPU together (it needs at least one CPU beyond the two pools' actors).

Resume and refusal are those of the single stages: every folder is scanned and checked against the hash its own
command would compute (preprocess settings; vessel settings + model; pseudo-label settings + model) and the
catalog, before anything is written; an image is processed when any of its three rows is missing, and only the
missing rows are written (an image whose preprocess row is stored but whose model rows are not is decoded again:
preprocessing is deterministic, so it is the stored image). A row quarantined by preprocess is never sent to the
models. Counts: preprocess rows in = catalog rows; model-stage rows in = preprocess ``status=ok`` rows; each
reconciles as written + quarantined (:func:`dr_ray.pipelines.runtime.finish_stage`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, PreprocessConfig, PseudoLabelsConfig, VesselsConfig, config_hash, dump_yaml
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog import problems_table, write_catalog
from dr_ray.pipelines.catalog import build_catalog
from dr_ray.pipelines.runtime import StageSummary, blocks_of, init_ray, stage_dir, total_cpus

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


def _flags(batch: pa.Table, stage: str) -> list[bool]:
    return [bool(x) for x in batch.column(TODO[stage]).to_pylist()]


def label_preprocess_batch(batch: pa.Table, *, cfg: PreprocessConfig, cfg_hash: str, threads: float = 1) -> pa.Table:
    """Step 1 (CPU task). Input: ``C.CATALOG_SCHEMA`` + the ``_todo_*`` flags. Output: ``C.PREPROCESS_SCHEMA``
    (``image_png`` encoded once, for storage), the flags, and ``_image`` (n, size, size, 3) uint8.

    A row quarantined here is not sent to the models (its model flags are cleared) unless its preprocess row was
    already stored ok by an earlier run (recomputing it failed now, e.g. the file became unreadable): then the
    model stages record the reason as their own quarantine, so their counts still reconcile."""
    import cv2

    from dr_ray.pipelines.preprocess import preprocess_record_image

    cv2.setNumThreads(max(1, int(threads)))
    results = [preprocess_record_image(r, cfg, cfg_hash) for r in batch.select(list(C.CATALOG_COLUMNS)).to_pylist()]
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
    import ray

    from dr_ray.pipelines.commit import actor_retry_args

    return ds.map_batches(
        LabelModels,
        batch_format="pyarrow",
        batch_size=section.batch_size,
        compute=ray.data.ActorPoolStrategy(size=section.actors),
        num_gpus=section.gpus_per_actor,
        num_cpus=section.cpus_per_actor,
        fn_constructor_kwargs=model_kwargs(cfg, stages=stages, hashes=hashes, section=section),
        **actor_retry_args(cfg.ray),
    )


def build_label_pipeline(ds, cfg: Config, *, hashes: dict[str, str]):
    """Catalog rows with ``_todo_*`` flags -> fused rows ready for :func:`split_stage_tables` (lazy: nothing runs
    until the stream is consumed). ``hashes``: the config hashes of the three stages (keys ``preprocess``,
    ``vessels``, ``pseudo_labels``) and the model hashes (``vessel_model``, ``lesion_model``). Build it inside
    ``with_context(bounded_data_context(cfg.ray))``."""
    from dr_ray.pipelines.commit import task_retry_args

    fov_margin = cfg.preprocess.fov_margin
    # max_retries on the CPU tasks: bounded (Ray Data's default retries an image that kills its worker forever),
    # and, being a task-only argument, it keeps Ray Data from fusing the decode into the model actor, where every
    # JPEG would be decoded on the actor's one CPU slot instead of on every core.
    ds = ds.map_batches(label_preprocess_batch, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
                        num_cpus=cfg.ray.cpus_per_task, **task_retry_args(cfg.ray),
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


def label_hashes(cfg: Config) -> dict[str, str]:
    """The config hash each stage command would write for ``cfg`` (and the two model hashes); clear errors for
    a missing model or an input folder other than the one ``label`` writes."""
    from dr_ray.pipelines import pseudo_labels as pl
    from dr_ray.pipelines import vessels as vs
    from dr_ray.pipelines.inference import check_model_dir

    pre_dir = stage_dir(cfg.output.dir, PRE)
    for key, value in (("vessels.input", cfg.vessels.input), ("pseudo_labels.input", cfg.pseudo_labels.input)):
        if value and (value.rstrip("/") if fs.is_uri(value) else os.path.abspath(value)) != pre_dir.rstrip("/"):
            raise ValueError(f"{key}={value!r}: dr-ray label makes its own preprocess folder ({pre_dir}); leave "
                             f"{key} empty (it is for re-running one model stage over another preprocess run)")
    vm = check_model_dir(cfg.vessels.model_dir, "vessels.model_dir",
                         "train a model with `dr-ray train-vessels` and pass --set vessels.model_dir=<its model folder>")
    lm = check_model_dir(cfg.pseudo_labels.model_dir, "pseudo_labels.model_dir",
                         "train a lesion model with `dr-ray train-lesions` and pass "
                         "--set pseudo_labels.model_dir=<its model folder>")
    return {PRE: config_hash(cfg.preprocess),
            VES: config_hash(vs.result_settings(cfg.vessels, vm, vs.av_model_hash(cfg.vessels.av_model))),
            LES: config_hash(pl.result_settings(cfg.pseudo_labels, lm)), "vessel_model": vm, "lesion_model": lm}


def check_pool_cpus(cfg: Config, cluster_cpus: float) -> None:
    """Refuse actor pools that hold every CPU of the cluster: the decode and graph tasks would never be scheduled
    and the stream would wait forever (measured: ``model_pools=two`` with 1-CPU actors on 2 CPUs)."""
    if cfg.label.model_pools == "one":
        held, what = cfg.label.actors * cfg.label.cpus_per_actor, "label.actors x label.cpus_per_actor"
    else:
        held = (cfg.vessels.actors * cfg.vessels.cpus_per_actor
                + cfg.pseudo_labels.actors * cfg.pseudo_labels.cpus_per_actor)
        what = "vessels.actors x cpus_per_actor + pseudo_labels.actors x cpus_per_actor (label.model_pools=two)"
    need = held + max(cfg.ray.cpus_per_task, cfg.vessels.graph_cpus_per_task)
    if need > cluster_cpus:
        raise ValueError(f"{what} = {held:g} CPUs for the model actors leaves no CPU for the decode and graph tasks "
                         f"on this cluster's {cluster_cpus:g} CPUs: use fewer or smaller actors"
                         + (" or label.model_pools=one" if cfg.label.model_pools == "two" else ""))


WHAT = {PRE: "preprocess settings", VES: "vessel settings or model", LES: "pseudo-label settings or model"}


def _not_in(ids: pa.Array, done: pa.Array) -> np.ndarray:
    return np.asarray(pc.invert(pc.is_in(ids, value_set=done)).to_numpy(zero_copy_only=False), bool)


def run_label(cfg: Config) -> dict[str, StageSummary]:
    """Build the catalog, then preprocess, segment, graph and measure every image whose rows are not all written
    yet, in one stream; returns the reconciled summary of each stage folder (keys ``preprocess``, ``vessels``,
    ``pseudo_labels``)."""
    import ray

    from dr_ray.pipelines.commit import (
        StageLease,
        StreamStalled,
        bounded_data_context,
        consume,
        task_retry_args,
        with_context,
    )
    from dr_ray.pipelines.label_recovery import recover_missing
    from dr_ray.pipelines.runtime import (
        check_resumable,
        check_shared_storage,
        finish_stage,
        read_committed,
        release_retryable,
        scan_outputs,
    )

    hashes = label_hashes(cfg)
    paths = {s: stage_dir(cfg.output.dir, s) for s in STAGES}
    catalog = build_catalog(cfg.data, cfg.output.dir)
    for p in catalog.problems:
        log.warning("label problem %s line %d: %s", p.file, p.line, p.reason)
    cat = catalog.table

    with StageLease(list(paths.values()), ttl_s=cfg.output.lease_ttl_s) as lease:
        run_id = lease.run_id
        before = {s: scan_outputs(paths[s], run_id=run_id) for s in STAGES}
        # Refuse before writing anything, so a refused run leaves the earlier runs' folders as they were.
        check_resumable(before[PRE].table, hashes[PRE], paths[PRE], cfg.output.resume, what=WHAT[PRE],
                        catalog=cat)
        for s in (VES, LES):
            check_resumable(before[s].table, hashes[s], paths[s], cfg.output.resume, what=WHAT[s])
        retried = {s: release_retryable(paths[s], before[s], run_id=run_id) for s in STAGES}
        before = {s: (scan_outputs(paths[s], run_id=run_id) if retried[s] else before[s]) for s in STAGES}
        for s in STAGES:
            fs.makedirs(paths[s])
            fs.write_text(fs.join(paths[s], "config.yaml"), dump_yaml(cfg))
        write_catalog(cat, fs.join(paths[PRE], "catalog.parquet"))
        fs.write_csv(fs.join(paths[PRE], "label_problems.csv"), problems_table(catalog.problems))

        ids = cat.column(C.IMAGE_ID).combine_chunks()
        pre = before[PRE].unique()
        pre_ok = pre.filter(pc.equal(pre.column(C.STATUS), C.STATUS_OK)).column(C.IMAGE_ID).combine_chunks()
        todo_pre = _not_in(ids, before[PRE].ids())
        has_image = todo_pre | ~_not_in(ids, pre_ok)  # preprocessed now, or stored ok before
        todo = {PRE: todo_pre, VES: has_image & _not_in(ids, before[VES].ids()),
                LES: has_image & _not_in(ids, before[LES].ids())}
        plan = cat
        for s in STAGES:
            plan = plan.append_column(TODO[s], pa.array(todo[s], pa.bool_()))
        plan = plan.filter(pa.array(todo[PRE] | todo[VES] | todo[LES], pa.bool_()))
        log.info("label: %d catalog rows; to write: preprocess %d, vessels %d, pseudo_labels %d (%d images) -> %s",
                 cat.num_rows, *(int(todo[s].sum()) for s in STAGES), plan.num_rows, cfg.output.dir)

        elapsed = 0.0
        if plan.num_rows:
            init_ray(cfg.ray)
            check_shared_storage(paths[PRE])
            check_pool_cpus(cfg, total_cpus())
            blocks = blocks_of(plan, max_rows=cfg.ray.rows_per_file, min_blocks=4 * total_cpus())
            t0 = time.perf_counter()
            with with_context(bounded_data_context(cfg.ray)):
                ds = build_label_pipeline(ray.data.from_arrow(blocks), cfg, hashes=hashes)
                ds = ds.map_batches(commit_label_batch, batch_format="pyarrow", batch_size=cfg.ray.rows_per_file,
                                    num_cpus=cfg.vessels.graph_cpus_per_task, **task_retry_args(cfg.ray),
                                    fn_kwargs={"stage_paths": paths, "run_id": run_id})
                try:  # one small row per stage folder and commit: no per-image data
                    counts = consume(ds, "dr-ray label", cfg.ray)
                    log.info("label: %d commits in %.1f s", counts.num_rows, time.perf_counter() - t0)
                except StreamStalled as e:  # a hung image: what was not committed goes to the isolated pass
                    log.error("%s", e)
            recovered = recover_missing(plan, cfg, hashes=hashes, paths=paths, run_id=run_id)
            if any(recovered.values()):
                log.warning("label: isolated pass: %s", recovered)
            elapsed = time.perf_counter() - t0

        out = {PRE: finish_stage(PRE, cat, before[PRE], paths[PRE], label_problems=len(catalog.problems),
                                 already_done=int((~todo[PRE]).sum()), processed_now=int(todo[PRE].sum()),
                                 run_seconds=elapsed, run_id=run_id, retried=retried[PRE])}
        inputs = read_committed(paths[PRE], list(C.CATALOG_COLUMNS), status=C.STATUS_OK)
        has_input = ~_not_in(ids, inputs.column(C.IMAGE_ID).combine_chunks())
        for s in (VES, LES):
            n_now = int((todo[s] & has_input).sum())  # a row quarantined by preprocess now was not sent
            out[s] = finish_stage(s, inputs, before[s], paths[s], label_problems=0,
                                  already_done=inputs.num_rows - n_now, processed_now=n_now, run_seconds=elapsed,
                                  run_id=run_id, retried=retried[s])
    return out


def with_models(cfg: Config, *, vessel_model_dir: str, lesion_model_dir: str) -> Config:
    """``cfg`` with the two model directories set (the demo trains them first)."""
    return dataclasses.replace(
        cfg, vessels=dataclasses.replace(cfg.vessels, model_dir=vessel_model_dir),
        pseudo_labels=dataclasses.replace(cfg.pseudo_labels, model_dir=lesion_model_dir))


__all__ = ["IMAGE_ARRAY", "LabelModels", "VESSEL_PROB_ARRAY", "build_label_pipeline", "check_pool_cpus",
           "commit_label_batch",
           "label_hashes", "model_kwargs", "stage_table", "label_preprocess_batch", "label_vessels_batch", "run_label", "split_stage_tables",
           "stream_column", "with_models"]
