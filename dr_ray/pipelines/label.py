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
:func:`dr_ray.pipelines.vessels.analyse_record` (with ``image=`` / ``prob=``). The stream's steps are in
:mod:`dr_ray.pipelines.label_steps`; images the stream leaves without a row (dead workers, a stalled stream) go
through :mod:`dr_ray.pipelines.label_recovery`.

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
reconciles as written + quarantined (:func:`dr_ray.pipelines.reconcile.finish_stage`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, config_hash, dump_yaml
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog import problems_table, write_catalog
from dr_ray.pipelines.catalog import build_catalog
from dr_ray.pipelines.label_steps import (
    LES,
    PRE,
    STAGES,
    TODO,
    VES,
    build_label_pipeline,
    commit_label_batch,
    ids_in,
)
from dr_ray.pipelines.reconcile import StageSummary
from dr_ray.pipelines.runtime import blocks_of, init_ray, stage_dir, total_cpus

log = logging.getLogger(__name__)


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
    vm = check_model_dir(cfg.vessels.model_dir, "vessels.model_dir", "")  # resolved: see resolve_label
    lm = check_model_dir(cfg.pseudo_labels.model_dir, "pseudo_labels.model_dir",
                         "train a lesion model with `dr-ray train-lesions` and pass "
                         "--set pseudo_labels.model_dir=<its model folder>")
    from dr_ray.pipelines.preprocess import preprocess_hash

    return {PRE: preprocess_hash(cfg.preprocess),
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


def run_label(cfg: Config) -> dict[str, StageSummary]:
    """Build the catalog, then preprocess, segment, graph and measure every image whose rows are not all written
    yet, in one stream; returns the reconciled summary of each stage folder (keys ``preprocess``, ``vessels``,
    ``pseudo_labels``)."""
    import ray

    from dr_ray.pipelines.commit_stream import (
        StreamStalled,
        bounded_data_context,
        consume,
        task_retry_args,
        with_context,
    )
    from dr_ray.pipelines.lease import StageLease
    from dr_ray.pipelines.label_recovery import recover_missing
    from dr_ray.pipelines.reconcile import check_resumable, finish_stage, release_retryable
    from dr_ray.pipelines.runtime import check_shared_storage
    from dr_ray.pipelines.scan import read_committed, scan_outputs

    from dr_ray.pipelines.vessels import resolve_vessels

    # an empty vessels.model_dir = the shipped model, at the input size its training FOV asks for
    cfg = dataclasses.replace(cfg, vessels=resolve_vessels(cfg.vessels, cfg.preprocess.fov_margin))
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
        todo_pre = ~ids_in(ids, before[PRE].ids())
        has_image = todo_pre | ids_in(ids, pre_ok)  # preprocessed now, or stored ok before
        todo = {PRE: todo_pre, VES: has_image & ~ids_in(ids, before[VES].ids()),
                LES: has_image & ~ids_in(ids, before[LES].ids())}
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
        has_input = ids_in(ids, inputs.column(C.IMAGE_ID).combine_chunks())
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


__all__ = ["check_pool_cpus", "label_hashes", "run_label", "with_models"]
