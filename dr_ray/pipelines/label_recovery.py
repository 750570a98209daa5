"""``dr-ray label``'s second pass, after the stream: the images it did not commit in every stage folder they
needed run again in isolated Ray tasks (:func:`dr_ray.pipelines.commit_stream.isolate_missing`: a few at a time, a
group whose worker dies split in two, then one by one). Why an image can be left over: its task or actor call
died ``ray.max_task_retries`` + 1 times (a native crash, the OOM killer, a lost node; Ray Data then drops the
block instead of retrying forever), or the stream stalled for ``ray.no_progress_timeout_s`` (a hung image).
An image that kills its worker again, or runs past the timeout alone, is quarantined "worker died" /
"timed out" in each stage it still lacks, so every stage's counts reconcile and the job ends.

Which rows an image still lacks is read from the folders themselves (committed shards only), not from what the
stream reported: a stage's row committed before the crash is never written twice. A model-stage row is needed
only while the image has a preprocess row with ``status=ok`` (stored earlier or committed now), as in the
stream; an isolated task commits each step's rows as soon as they exist, so a step that kills its worker costs
the image only the rows of that step and the steps after it.
"""

from __future__ import annotations

import functools
import logging

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.pipelines.label_steps import (
    LES,
    PRE,
    STAGES,
    TODO,
    VES,
    LabelModels,
    ids_in,
    label_preprocess_batch,
    label_vessels_batch,
    model_kwargs,
    stage_table,
)

log = logging.getLogger(__name__)


def still_missing(plan: pa.Table, paths: dict[str, str]) -> pa.Table:
    """The rows of ``plan`` (catalog columns + ``_todo_*`` flags) whose image still lacks a row it was planned
    to get, with the flags narrowed to the stages it lacks (none where the folder holds the row now; no model
    stage where its preprocess row is now quarantined)."""
    from dr_ray.pipelines.scan import scan_outputs

    ids = plan.column(C.IMAGE_ID).combine_chunks()
    scans = {s: scan_outputs(paths[s], remove_incomplete=False) for s in STAGES}
    pre = scans[PRE].unique()
    pre_bad = pre.filter(pc.equal(pre.column(C.STATUS), C.STATUS_QUARANTINED)).column(C.IMAGE_ID).combine_chunks()
    flags = {PRE: plan.column(TODO[PRE]).to_numpy(zero_copy_only=False) & ~ids_in(ids, scans[PRE].ids())}
    for s in (VES, LES):
        flags[s] = (plan.column(TODO[s]).to_numpy(zero_copy_only=False) & ~ids_in(ids, scans[s].ids())
                    & ~ids_in(ids, pre_bad))
    out = plan
    for s in STAGES:
        out = out.set_column(out.schema.get_field_index(TODO[s]), TODO[s], pa.array(flags[s], pa.bool_()))
    return out.filter(pa.array(flags[PRE] | flags[VES] | flags[LES], pa.bool_()))


def _rows(ids: list[str], *, table: pa.Table) -> pa.Table:
    return table.filter(pc.is_in(table.column(C.IMAGE_ID), value_set=pa.array(ids, pa.string())))


def fetch_missing(ids: list[str], *, plan: pa.Table, paths: dict[str, str]) -> pa.Table:
    """In the isolated task: the plan rows of ``ids`` with the flags of what the folders still lack NOW (an
    earlier attempt of a group may have committed some of its rows before it died: never write them twice)."""
    return still_missing(_rows(ids, table=plan), paths)


def process_isolated(rows: pa.Table, *, cfg: Config, hashes: dict, paths: dict[str, str], run_id: str) -> dict:
    """The whole stream for a few images in one task, each step's rows committed as soon as they exist
    (preprocess, then the lesion maps, then the vessel graphs), so a step that kills the worker costs the
    image only the rows of that step and those after it. Returns ``{}`` (nothing left for the caller)."""
    from dr_ray.pipelines.commit import commit_tables

    b = label_preprocess_batch(rows, cfg=cfg.preprocess, cfg_hash=hashes[PRE], threads=cfg.label.cpus_per_actor)
    commit_tables({paths[PRE]: stage_table(b, PRE)}, run_id=run_id)
    if not any(pc.any(b.column(TODO[s])).as_py() for s in (VES, LES)):
        return {}
    b = LabelModels(**model_kwargs(cfg, stages=(VES, LES), hashes=hashes, section=cfg.label))(b)
    commit_tables({paths[LES]: stage_table(b, LES)}, run_id=run_id)
    b = label_vessels_batch(b, cfg=cfg.vessels, cfg_hash=hashes[VES], fov_margin=cfg.preprocess.fov_margin,
                            threads=cfg.label.cpus_per_actor)
    commit_tables({paths[VES]: stage_table(b, VES)}, run_id=run_id)
    return {}


def quarantine_isolated(ids: list[str], reason: str, *, plan: pa.Table, cfg: Config, hashes: dict,
                        paths: dict[str, str]) -> dict:
    """Driver side, no image data: quarantine rows for the stages these images still lack."""
    from dr_ray.pipelines.preprocess import quarantine_rows

    left = still_missing(_rows(ids, table=plan), paths)
    cat = list(C.CATALOG_COLUMNS)
    pre = left.filter(left.column(TODO[PRE]))
    out = {paths[PRE]: quarantine_rows(pre.select(cat), reason, schema=C.PREPROCESS_SCHEMA, cfg_hash=hashes[PRE],
                                       who=C.PATH)}
    has_image = left.filter(pc.invert(left.column(TODO[PRE])))  # its preprocess row is stored ok
    for s, schema, model in ((VES, C.VESSELS_SCHEMA, "vessel_model"), (LES, C.PSEUDO_LABELS_SCHEMA, "lesion_model")):
        t = has_image.filter(has_image.column(TODO[s]))
        out[paths[s]] = quarantine_rows(t.select(cat), reason, schema=schema, cfg_hash=hashes[s], who=C.IMAGE_ID,
                                        extra={C.SIZE: cfg.preprocess.size, C.MODEL_HASH: hashes[model]})
    return out


def recover_missing(plan: pa.Table, cfg: Config, *, hashes: dict, paths: dict[str, str], run_id: str) -> dict:
    """Run the images of ``plan`` that the stream left without a planned row in isolated tasks; returns
    :func:`~dr_ray.pipelines.commit_stream.isolate_missing`'s counts (all zero when nothing was left)."""
    from dr_ray.pipelines.commit_stream import Isolation, isolate_missing
    from dr_ray.pipelines.preprocess import decode_resources

    left = still_missing(plan, paths)
    if not left.num_rows:
        return {"committed": 0, "worker_died": 0, "timed_out": 0}
    log.warning("label: %d images lack a row the stream did not commit (a task died or the stream stalled); "
                "running them in isolated tasks", left.num_rows)
    iso = Isolation(
        process=functools.partial(process_isolated, cfg=cfg, hashes=hashes, paths=paths, run_id=run_id),
        fetch=functools.partial(fetch_missing, plan=left, paths=paths),
        quarantine=functools.partial(quarantine_isolated, plan=left, cfg=cfg, hashes=hashes, paths=paths),
        options={"num_cpus": max(cfg.label.cpus_per_actor, cfg.ray.cpus_per_task),
                 "num_gpus": max(cfg.label.gpus_per_actor,
                                 decode_resources(cfg.preprocess).get("num_gpus", 0.0))})
    return isolate_missing(left.column(C.IMAGE_ID).to_pylist(), iso, paths[PRE], run_id=run_id,
                           max_retries=cfg.ray.max_task_retries, group_size=cfg.label.batch_size,
                           timeout_s=cfg.ray.no_progress_timeout_s)


__all__ = ["fetch_missing", "process_isolated", "quarantine_isolated", "recover_missing", "still_missing"]
