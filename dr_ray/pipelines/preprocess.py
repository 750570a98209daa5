"""Preprocess stage: catalog rows -> decode + FOV crop + resize + CLAHE (CPU) -> Parquet shards.

Output layout under ``<output.dir>/preprocess/``:
``status=ok/*.parquet`` (processed images and measures), ``status=quarantined/*.parquet`` (bad inputs with
their reason), ``catalog.parquet``, ``label_problems.csv``, ``quarantine.csv``, ``config.yaml``, ``summary.json``.
Rerunning with the same config processes only the images not yet in either folder.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, PreprocessConfig, config_hash, dump_yaml
from dr_ray.imaging import ImageDecodeError, PreprocessResult, encode_png, preprocess_decoded, preprocess_image
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog import problems_table, write_catalog
from dr_ray.pipelines.catalog import build_catalog
from dr_ray.faults import maybe_inject
from dr_ray.pipelines.reconcile import StageSummary, check_resumable, finish_stage
from dr_ray.pipelines.runtime import blocks_of, init_ray, stage_dir, total_cpus
from dr_ray.pipelines.scan import scan_outputs

log = logging.getLogger(__name__)

STAGE = "preprocess"
_OUTPUT_SCHEMA = C.PREPROCESS_SCHEMA


def preprocess_hash(pre) -> str:
    """The preprocess stage's ``config_hash``: the settings that change a row. ``decode_gpus_per_task`` (a
    resource) is left out, and so is ``decode_device`` while it is "cpu", so outputs written before the GPU decode
    switch existed keep their hash and resume."""
    import hashlib
    import json

    from dr_ray.config import to_dict

    d = to_dict(pre)
    d.pop("decode_gpus_per_task", None)
    if d.get("decode_device") == "cpu":
        d.pop("decode_device")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def preprocess_record(row: dict, cfg: PreprocessConfig, cfg_hash: str) -> dict:
    """One catalog row -> one output row (status ok with the image, or quarantined with the reason)."""
    return preprocess_record_image(row, cfg, cfg_hash)[0]


def _new_row(row: dict, cfg_hash: str) -> dict:
    out = {name: None for name in _OUTPUT_SCHEMA.names}
    out.update({k: row.get(k) for k in C.CATALOG_COLUMNS})
    out[C.CONFIG_HASH] = cfg_hash
    return out


def _read_image(row: dict) -> bytes:
    """The row's file bytes (fault injection first: an injected transient OSError is quarantined as a read error)."""
    maybe_inject(STAGE, row[C.IMAGE_ID])
    return fs.read_bytes(row[C.PATH])


def _failure_reason(err: Exception, path: str) -> str:
    """The quarantine reason for an error raised while reading or preprocessing the file at ``path``."""
    if isinstance(err, ImageDecodeError):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, OSError):
        return f"cannot read file ({type(err).__name__}: {err})"
    log.error("unexpected error on %s", path, exc_info=err)
    return f"unexpected error ({type(err).__name__}: {err})"


def _ok_row(out: dict, res: PreprocessResult, cfg: PreprocessConfig) -> dict:
    q = res.quality
    out.update({
        C.STATUS: C.STATUS_OK,
        C.IMAGE_PNG: encode_png(res.image, cfg.png_compression),
        C.SIZE: cfg.size,
        C.ORIG_WIDTH: res.header.width,
        C.ORIG_HEIGHT: res.header.height,
        C.DECODE_SCALE: res.scale,
        C.FOV_CX: res.fov.cx, C.FOV_CY: res.fov.cy, C.FOV_RADIUS: res.fov.radius,
        C.FOV_FRACTION: q.fov_fraction, C.BRIGHTNESS: q.brightness, C.CONTRAST: q.contrast,
        C.SHARPNESS: q.sharpness, C.GRADABLE: res.gradable,
        C.CANNY_PNG: None if res.canny is None else encode_png(res.canny, cfg.png_compression),
        C.TOPHAT_PNG: None if res.tophat is None else encode_png(res.tophat, cfg.png_compression),
    })
    return out


def _quarantined_row(out: dict, path: str, reason: str) -> dict:
    out[C.STATUS] = C.STATUS_QUARANTINED
    out[C.ERROR] = f"{path}: {reason}"
    return out


def preprocess_record_image(row: dict, cfg: PreprocessConfig, cfg_hash: str) -> tuple[dict, np.ndarray | None]:
    """:func:`preprocess_record` and the processed image it encoded: ((output row), (size, size, 3) uint8 RGB or
    None when quarantined). ``dr-ray label`` hands the array to its models instead of decoding the PNG again.
    Always decodes on CPU; :func:`preprocess_records_images` honours ``cfg.decode_device``."""
    out = _new_row(row, cfg_hash)
    try:
        res = preprocess_image(_read_image(row), cfg)
    except Exception as e:  # noqa: BLE001 - an unforeseen bad input must not stop 88k images; it is recorded
        return _quarantined_row(out, row[C.PATH], _failure_reason(e, row[C.PATH])), None
    return _ok_row(out, res, cfg), res.image


def _records_images_batched(rows: list[dict], cfg: PreprocessConfig,
                            cfg_hash: str) -> list[tuple[dict, np.ndarray | None]]:
    """:func:`preprocess_records_images` with ``decode_device`` cuda: every file read, the readable ones decoded
    together (:func:`dr_ray.pipelines.gpu_decode.decode_batch`), then the rest of the chain per image on CPU."""
    from dr_ray.pipelines import gpu_decode

    device = gpu_decode.select_device(cfg.decode_device)  # outside any per-row handler: a missing GPU fails the task
    outs = [_new_row(r, cfg_hash) for r in rows]
    reasons: list[str | None] = [None] * len(rows)
    blobs: dict[int, bytes] = {}
    for i, r in enumerate(rows):
        try:
            blobs[i] = _read_image(r)
        except Exception as e:  # noqa: BLE001 - recorded as the row's quarantine reason, as on the CPU path
            reasons[i] = _failure_reason(e, r[C.PATH])
    idx = list(blobs)
    decoded = gpu_decode.decode_batch([blobs.pop(i) for i in idx], target=cfg.size, reduced=cfg.reduced_decode,
                                      max_pixels=cfg.max_pixels, min_side=cfg.min_side, device=device) if idx else []
    results: dict[int, PreprocessResult] = {}
    for i, d in zip(idx, decoded):
        if isinstance(d, ImageDecodeError):
            reasons[i] = str(d)
            continue
        try:
            results[i] = preprocess_decoded(*d, cfg)
        except Exception as e:  # noqa: BLE001 - as on the CPU path: recorded, the batch goes on
            reasons[i] = _failure_reason(e, rows[i][C.PATH])
    del decoded
    return [(_ok_row(out, results[i], cfg), results[i].image) if i in results
            else (_quarantined_row(out, rows[i][C.PATH], reasons[i]), None) for i, out in enumerate(outs)]


def preprocess_records_images(rows: list[dict], cfg: PreprocessConfig,
                              cfg_hash: str) -> list[tuple[dict, np.ndarray | None]]:
    """:func:`preprocess_record_image` for each catalog row, in order (one result per row). With
    ``cfg.decode_device`` cuda the JPEGs of all rows are decoded in one batched nvJPEG call; the task must then
    hold a GPU (``preprocess.decode_gpus_per_task``), else RuntimeError."""
    if cfg.decode_device == "cpu":
        return [preprocess_record_image(r, cfg, cfg_hash) for r in rows]
    return _records_images_batched(rows, cfg, cfg_hash)


def preprocess_batch(batch: pa.Table, *, cfg: PreprocessConfig, cfg_hash: str, threads: float = 1) -> pa.Table:
    """Ray Data batch function. Input: catalog columns (``C.CATALOG_SCHEMA``). Output: ``C.PREPROCESS_SCHEMA``,
    one row per input row. Decoding is per image (libjpeg) or, with ``cfg.decode_device`` cuda, one batched
    nvJPEG call; FOV, crop, CLAHE and PNG encoding are a loop over the rows."""
    # A task holds cpus_per_task CPUs; OpenCV's own thread pool would otherwise use every core of the node
    # in each of the node's concurrent tasks.
    cv2.setNumThreads(max(1, int(threads)))
    rows = [r for r, _ in preprocess_records_images(batch.to_pylist(), cfg, cfg_hash)]
    return pa.Table.from_pylist(rows, schema=_OUTPUT_SCHEMA)


def decode_resources(cfg: PreprocessConfig) -> dict:
    """Ray resources a preprocessing task needs beyond its CPUs: ``{"num_gpus": cfg.decode_gpus_per_task}`` with
    ``decode_device`` cuda, else ``{}``."""
    return {"num_gpus": cfg.decode_gpus_per_task} if cfg.decode_device == "cuda" else {}


def build_preprocess_pipeline(ds, cfg: Config):
    """Catalog dataset -> preprocessed dataset (lazy; nothing runs until it is written)."""
    from dr_ray.pipelines.commit_stream import task_retry_args

    return ds.map_batches(
        preprocess_batch,
        batch_format="pyarrow",
        batch_size=cfg.ray.batch_size,
        num_cpus=cfg.ray.cpus_per_task,
        fn_kwargs={"cfg": cfg.preprocess, "cfg_hash": preprocess_hash(cfg.preprocess), "threads": cfg.ray.cpus_per_task},
        **decode_resources(cfg.preprocess),
        **task_retry_args(cfg.ray),
    )


def _catalog_rows(ids: list[str], *, table: pa.Table) -> pa.Table:
    return table.filter(pc.is_in(table.column(C.IMAGE_ID), value_set=pa.array(ids, pa.string())))


def quarantine_rows(inputs: pa.Table, reason: str, *, schema: pa.Schema, cfg_hash: str, who: str,
                    extra: dict | None = None) -> pa.Table:
    """Output rows (``schema``) quarantining ``inputs``' rows with "<who column value>: <reason>"."""
    rows = []
    for r in inputs.select([c for c in C.CATALOG_COLUMNS if c in inputs.column_names]).to_pylist():
        row = {name: None for name in schema.names}
        row.update(r)
        row.update({C.STATUS: C.STATUS_QUARANTINED, C.ERROR: f"{r[who]}: {reason}", C.CONFIG_HASH: cfg_hash,
                    **(extra or {})})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def _quarantine(ids: list[str], reason: str, *, table: pa.Table, cfg_hash: str) -> pa.Table:
    return quarantine_rows(_catalog_rows(ids, table=table), reason, schema=_OUTPUT_SCHEMA, cfg_hash=cfg_hash,
                           who=C.PATH)


def run_preprocess(cfg: Config) -> StageSummary:
    """Build the catalog, preprocess every image not done yet, commit shards exactly once (one writer per
    stage folder: :class:`~dr_ray.pipelines.lease.StageLease`), write a reconciled summary."""
    import functools

    import ray

    from dr_ray.pipelines.commit_stream import (
        Isolation,
        StreamStalled,
        bounded_data_context,
        isolate_missing,
        run_commits,
        with_context,
    )
    from dr_ray.pipelines.lease import StageLease
    from dr_ray.pipelines.reconcile import release_retryable
    from dr_ray.pipelines.runtime import check_shared_storage

    out = stage_dir(cfg.output.dir, STAGE)
    cfg_hash = preprocess_hash(cfg.preprocess)
    catalog = build_catalog(cfg.data, cfg.output.dir)
    for p in catalog.problems:
        log.warning("label problem %s line %d: %s", p.file, p.line, p.reason)

    with StageLease([out], ttl_s=cfg.output.lease_ttl_s) as lease:
        before = scan_outputs(out, run_id=lease.run_id)
        # Refuse before writing anything, so a refused run leaves the earlier run's side files as they were.
        check_resumable(before.table, cfg_hash, out, cfg.output.resume, what="preprocess settings",
                        catalog=catalog.table)
        retried = release_retryable(out, before, run_id=lease.run_id) if cfg.output.resume else 0
        if retried:
            log.info("%s: %d rows quarantined by a transient I/O error are processed again", STAGE, retried)
            before = scan_outputs(out, run_id=lease.run_id)
        fs.makedirs(out)
        fs.write_text(fs.join(out, "config.yaml"), dump_yaml(cfg))
        write_catalog(catalog.table, fs.join(out, "catalog.parquet"))
        fs.write_csv(fs.join(out, "label_problems.csv"), problems_table(catalog.problems))
        done = before.ids()
        todo = catalog.table.filter(pc.invert(pc.is_in(catalog.table.column(C.IMAGE_ID), value_set=done)))
        already = catalog.table.num_rows - todo.num_rows
        log.info("%s: %d catalog rows, %d done by earlier runs, %d to process -> %s (run %s)",
                 STAGE, catalog.table.num_rows, already, todo.num_rows, out, lease.run_id)

        elapsed = 0.0
        if todo.num_rows:
            init_ray(cfg.ray)
            check_shared_storage(out)
            blocks = blocks_of(todo, max_rows=cfg.ray.rows_per_file, min_blocks=4 * total_cpus())
            t0 = time.perf_counter()
            with with_context(bounded_data_context(cfg.ray)):
                ds = build_preprocess_pipeline(ray.data.from_arrow(blocks), cfg)
                try:
                    run_commits(ds, out, run_id=lease.run_id, rows_per_file=cfg.ray.rows_per_file, ray_cfg=cfg.ray)
                except StreamStalled as e:  # a hung image: the rows not committed go to the isolated pass below
                    log.error("%s", e)
            got = set(scan_outputs(out, remove_incomplete=False).ids().to_pylist())
            missing = [i for i in todo.column(C.IMAGE_ID).to_pylist() if i not in got]
            if missing:
                log.warning("%s: %d rows were not committed by the stream (their tasks died); running them in "
                            "isolated tasks", STAGE, len(missing))
                iso = Isolation(
                    process=functools.partial(preprocess_batch, cfg=cfg.preprocess, cfg_hash=cfg_hash,
                                              threads=cfg.ray.cpus_per_task),
                    fetch=functools.partial(_catalog_rows, table=todo.select(list(C.CATALOG_COLUMNS))),
                    quarantine=functools.partial(_quarantine, table=todo, cfg_hash=cfg_hash),
                    options={"num_cpus": cfg.ray.cpus_per_task, **decode_resources(cfg.preprocess)})
                isolate_missing(missing, iso, out, run_id=lease.run_id, max_retries=cfg.ray.max_task_retries,
                                group_size=cfg.ray.batch_size, timeout_s=cfg.ray.no_progress_timeout_s)
            elapsed = time.perf_counter() - t0

        return finish_stage(STAGE, catalog.table, before, out, label_problems=len(catalog.problems),
                            already_done=already, processed_now=todo.num_rows, run_seconds=elapsed,
                            run_id=lease.run_id, retried=retried)
