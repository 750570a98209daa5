"""Building the joined index (:func:`build_fusion_data`): the small columns of every stage shard read in the
driver (:func:`stage_file_index`), joined by image id with pyarrow, each row marked ok or quarantined with its
reason (:func:`mark_rows`) and written under ``<output.dir>/fusion_data/<hash>/`` (the hash: :func:`data_hash`),
then the earlier builds it supersedes deleted; a complete build of the same inputs is reused instead."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.fusion_data import (
    BULKY,
    FORMAT_VERSION,
    PRESENCE,
    STAGE,
    STAGES,
    SUCCESS_FILE,
    FusionData,
    dedupe_first,
    image_input_column,
    index_schema,
    small_columns,
    source_stage,
    stage_input,
)
from dr_ray.pipelines.reconcile import summarise
from dr_ray.pipelines.runtime import stage_dir
from dr_ray.pipelines.scan import scan_outputs

log = logging.getLogger(__name__)


def _ids_hash(table: pa.Table, columns: Sequence[str]) -> str:
    t = table.select(list(columns)).sort_by([(C.IMAGE_ID, "ascending")])
    h = hashlib.sha256()
    for col in columns:
        h.update(json.dumps(t.column(col).to_pylist()).encode())
    return h.hexdigest()[:16]


def _read_shard(path: str, columns: Sequence[str], presence: Sequence[str] = ()) -> pa.Table:
    filesystem, inner = fs.resolve(path)
    try:
        t = pq.read_table(inner, columns=list(columns), filesystem=filesystem)
        for c in presence:  # only whether the (bulky) column is set; read one file at a time, then dropped
            names = pq.read_schema(inner, filesystem=filesystem).names
            has = (pq.read_table(inner, columns=[c], filesystem=filesystem).column(c).is_valid() if c in names
                   else pa.array([False] * t.num_rows))
            t = t.append_column(c, pc.if_else(has, pa.scalar(b"", pa.binary()), pa.scalar(None, pa.binary())))
    except (pa.ArrowInvalid, OSError) as e:
        raise OSError(f"{path}: cannot read this stage shard ({e}); rerun its stage to repair the folder "
                      f"(its resume scan removes incomplete shards)") from e
    return t.append_column(C.SOURCE_FILE, pa.array([path] * t.num_rows, pa.string()))


def stage_file_index(ok_dir: str, columns: Sequence[str], *, presence: Sequence[str] = (),
                     threads: int = 16) -> pa.Table:
    """``columns`` (small ones) of every row under a stage's ``status=ok`` folder plus ``C.SOURCE_FILE`` (the
    shard holding the row), one row per image: a duplicated id keeps the row of the first shard in path order.
    Each ``presence`` column comes back as empty bytes where the row has a value and null where not (its bytes
    are read to know, one shard at a time, and dropped). Shards are read in parallel (footers on object storage
    are latency-bound); only ``columns`` are kept."""
    files = [f for f in fs.list_files(ok_dir, recursive=True) if f.endswith(".parquet")]
    cols = [C.IMAGE_ID, *[c for c in columns if c != C.IMAGE_ID]]
    if not files:
        return pa.schema([pa.field(C.IMAGE_ID, pa.string()), pa.field(C.SOURCE_FILE, pa.string())]).empty_table()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        tables = list(pool.map(lambda f: _read_shard(f, cols, presence), files))
    t = pa.concat_tables(tables, promote_options="permissive")
    return dedupe_first(t, ok_dir)


def _stage_index(cfg: Config, stage: str) -> pa.Table:
    """id/status/error/config_hash of every row of a stage folder; FileNotFoundError when it holds nothing."""
    path = stage_input(cfg, stage)
    scan = scan_outputs(path, remove_incomplete=False)
    if scan.table.num_rows == 0:
        raise FileNotFoundError(f"{path} holds no {stage} output: run `dr-ray {stage.replace('_', '-')}` first "
                                f"(or set train.{stage}_input to its folder)")
    return scan.table


def data_hash(preprocess_rows: pa.Table, indexes: dict[str, pa.Table], files: dict[str, Sequence[str]] = None
              ) -> str:
    """Hash of what the joined rows are made of: ids/grades/folds of the images, each stage's settings/ids, and
    the shard files the index references (a rewritten stage folder makes a new index, never stale references)."""
    parts = {"format": FORMAT_VERSION, "stages": sorted(indexes),
             "images": _ids_hash(preprocess_rows, [C.IMAGE_ID, C.GRADE, C.FOLD, C.CONFIG_HASH])}
    for stage, index in sorted(indexes.items()):
        parts[stage] = {"config_hashes": sorted(map(str, pc.unique(index.column(C.CONFIG_HASH)).to_pylist())),
                        "rows": _ids_hash(index, [C.IMAGE_ID, C.STATUS])}
    if files:
        parts["files"] = {s: sorted(v) for s, v in sorted(files.items())}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


_MISSING_MAP = {C.CANNY_PNG: "the preprocess stage ran without preprocess.extra_maps: [canny] "
                             "(train.image_input=canny)",
                C.VESSEL_PROB_PNG: "the vessel stage stored no probability map for it (train.image_input=segmented)"}


def mark_rows(batch: pa.Table, *, stages: Sequence[str], schema: pa.Schema, data_hash: str,
              stage_errors: dict[str, dict[str, str]], stage_paths: dict[str, str],
              image_column: str = C.IMAGE_PNG, require_grade: bool = True) -> pa.Table:
    """Joined index rows (left joins of the preprocessed images with each stage) -> ``schema``: status ok when
    every stage joined, the grade is known (unless not ``require_grade``) and the image branch's input
    (``image_column``, non-null in ``batch`` where the row has it) exists, else quarantined with the reason (the
    stage's own quarantine reason, or that the stage never processed it, or that the map was never stored); a
    quarantined row keeps no references."""
    n = batch.num_rows
    ids = batch.column(C.IMAGE_ID).to_pylist()
    errors: list[str | None] = [None] * n
    grades = batch.column(C.GRADE).to_pylist()
    for i in range(n):
        if require_grade and grades[i] is None:
            errors[i] = f"{ids[i]}: no grade label (cannot train or evaluate a classifier on it)"
    for stage in stages:
        present = batch.column(PRESENCE[stage]).to_pylist()
        for i in range(n):
            if errors[i] is None and present[i] is None:
                why = stage_errors[stage].get(ids[i])
                errors[i] = (f"{ids[i]}: quarantined by {stage}: {why}" if why else
                             f"{ids[i]}: not in the {stage} output {stage_paths[stage]} (run that stage on it)")
    if image_column != C.IMAGE_PNG:
        has = batch.column(image_column).is_valid().to_pylist()
        for i in range(n):
            if errors[i] is None and not has[i]:
                errors[i] = f"{ids[i]}: no {image_column}: {_MISSING_MAP[image_column]}"
    ok = [e is None for e in errors]
    refs = {C.source_file_column(s) for s in ("preprocess", *stages)}
    cols = {}
    for name in schema.names:
        if name == C.STATUS:
            cols[name] = pa.array([C.STATUS_OK if o else C.STATUS_QUARANTINED for o in ok], pa.string())
        elif name == C.ERROR:
            cols[name] = pa.array(errors, pa.string())
        elif name == C.CONFIG_HASH:
            cols[name] = pa.array([data_hash] * n, pa.string())
        else:
            col = batch.column(name).cast(schema.field(name).type)
            if name in refs or name in BULKY:
                col = pc.if_else(pa.array(ok, pa.bool_()), col, pa.nulls(n, col.type))
            cols[name] = col
    return pa.table([cols[nm] for nm in schema.names], schema=schema)


def _lesion_kinds(ok: pa.Table, where: str) -> tuple[str, ...]:
    kinds = [k for k in pc.unique(ok.column(C.LESION_MAP_KINDS)).to_pylist() if k is not None]
    if len(kinds) != 1:
        raise ValueError(f"{where}: lesion maps of several kind sets {kinds} (pseudo labels from different "
                         f"models?); rerun pseudo-labels into one folder")
    return tuple(kinds[0].split(","))


def _write_table(table: pa.Table, path: str) -> None:
    filesystem, inner = fs.resolve(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, inner, filesystem=filesystem)


def _delete_dir(path: str) -> None:
    filesystem, inner = fs.resolve(path)
    filesystem.delete_dir(inner)


def _remove_superseded(root: str, keep: str, stages: Sequence[str], inputs: dict[str, str],
                       kind: dict | None = None) -> list[str]:
    """Delete earlier builds under ``root`` of the same stages from the same stage folders and of the same
    ``kind`` (image input, graded only or not: a build of another kind is still in use by its own run), whose
    inputs have changed since, so nothing new will reuse them, and every full-copy build of FORMAT_VERSION 1;
    returns them."""
    kind = kind or {}
    filesystem, inner = fs.resolve(root)
    import pyarrow.fs as pafs

    removed = []
    for info in filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
        d = fs.join(root, info.base_name)
        if info.type != pafs.FileType.Directory or d == keep:
            continue
        marker = fs.join(d, SUCCESS_FILE)
        if not fs.exists(marker):
            continue  # a build in progress (or killed): its own run deals with it
        old = json.loads(fs.read_text(marker))
        if old.get("format_version", 1) < FORMAT_VERSION or (
                old.get("stages") == list(stages) and old.get("inputs") == inputs
                and all(old.get(k) == v for k, v in kind.items())):
            log.info("fusion data: removing superseded build %s (format %s)", d, old.get("format_version", 1))
            _delete_dir(d)
            removed.append(d)
    return removed


def build_fusion_data(cfg: Config, stages: Sequence[str], *, require_grade: bool = True) -> FusionData:
    """Join the preprocessed images with ``stages`` (subset of ``STAGES``) into the index
    ``<output.dir>/fusion_data/<hash>``, or reuse a complete earlier build of the same inputs. No Ray: the join
    is of small columns, in this process (peak memory ~1 KB per image). ``require_grade=False`` (``dr-ray
    predict``): an image without a grade is joined too (its own index: the flag is part of the hash)."""
    image_column = image_input_column(cfg.train.image_input)
    if image_column == C.VESSEL_PROB_PNG:
        stages = (*stages, "vessels")  # the image branch sees the vessel stage's probability map
    stages = tuple(s for s in STAGES if s in stages)
    image_stage = source_stage(image_column, stages)
    presence = (lambda s: [image_column] if image_column != C.IMAGE_PNG and s == image_stage else [])
    pre_dir = stage_input(cfg, "preprocess")
    pre_ok = fs.join(pre_dir, f"{C.STATUS}={C.STATUS_OK}")
    if not fs.is_dir(pre_ok):
        raise FileNotFoundError(f"{pre_ok} not found: run `dr-ray preprocess` first (or set train.preprocess_input)")
    t0 = time.perf_counter()
    pre_rows = stage_file_index(pre_ok, [*C.CATALOG_COLUMNS, C.CONFIG_HASH, C.SIZE], presence=presence("preprocess"))
    if pre_rows.num_rows == 0:
        raise ValueError(f"{pre_ok} holds no preprocessed images")
    indexes = {s: _stage_index(cfg, s) for s in stages}
    stage_paths = {s: stage_input(cfg, s) for s in stages}
    rows = {s: stage_file_index(fs.join(stage_paths[s], f"{C.STATUS}={C.STATUS_OK}"), small_columns(s),
                                presence=presence(s)) for s in stages}
    files = {s: pc.unique(t.column(C.SOURCE_FILE)).to_pylist() for s, t in
             {"preprocess": pre_rows, **rows}.items()}
    extra = {"image_input": [image_column]}
    if not require_grade:
        extra["ungraded"] = ["kept"]
    dhash = data_hash(pre_rows, indexes, {**files, **extra})
    root = stage_dir(cfg.output.dir, STAGE)
    out = fs.join(root, dhash)
    marker = fs.join(out, SUCCESS_FILE)
    if fs.exists(marker):
        info = json.loads(fs.read_text(marker))
        log.info("fusion data %s: reusing %s (%d joined, %d quarantined)", dhash, out, info["written"],
                 info["quarantined"])
        return FusionData(path=out, data_hash=dhash, stages=stages, rows_in=info["rows_in"],
                          written=info["written"], quarantined=info["quarantined"],
                          lesion_kinds=tuple(info["lesion_kinds"]), reused=True)
    if fs.is_dir(out):  # an earlier build died before its marker: its files are incomplete
        log.warning("fusion data %s: removing the incomplete build in %s", dhash, out)
        _delete_dir(out)

    stage_errors = {}
    for s, index in indexes.items():
        bad = index.filter(pc.equal(index.column(C.STATUS), C.STATUS_QUARANTINED))
        stage_errors[s] = dict(zip(bad.column(C.IMAGE_ID).to_pylist(), bad.column(C.ERROR).to_pylist()))

    joined = pre_rows.rename_columns([C.source_file_column("preprocess") if c == C.SOURCE_FILE else c
                                      for c in pre_rows.column_names]).drop_columns([C.CONFIG_HASH])
    for s in stages:
        right = rows[s].rename_columns([C.source_file_column(s) if c == C.SOURCE_FILE else c
                                        for c in rows[s].column_names])
        joined = joined.join(right, keys=C.IMAGE_ID, join_type="left outer", use_threads=False)
    joined = joined.sort_by([(C.IMAGE_ID, "ascending")])
    n = pre_rows.num_rows
    schema = index_schema(stages)
    table = mark_rows(joined, stages=stages, schema=schema, data_hash=dhash, stage_errors=stage_errors,
                      stage_paths=stage_paths, image_column=image_column, require_grade=require_grade)
    ok_mask = pc.equal(table.column(C.STATUS), C.STATUS_OK)
    ok, bad = table.filter(ok_mask), table.filter(pc.invert(ok_mask))
    for status, part in ((C.STATUS_OK, ok), (C.STATUS_QUARANTINED, bad)):
        if part.num_rows:
            _write_table(part.drop_columns([C.STATUS]), fs.join(out, f"{C.STATUS}={status}", "index.parquet"))
    elapsed = time.perf_counter() - t0

    scan = scan_outputs(out)
    summary = summarise(STAGE, pre_rows.select([C.IMAGE_ID]), scan, label_problems=0, already_done=0,
                        processed_now=n, output=out, run_seconds=elapsed)
    fs.write_csv(fs.join(out, "quarantine.csv"), bad.select([C.IMAGE_ID, C.PATH, C.ERROR]))
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary.as_dict(), indent=2))
    if not summary.reconciles:
        raise RuntimeError(f"fusion data counts do not reconcile: {summary.as_dict()}")
    if summary.written == 0:
        raise ValueError(f"fusion data {out}: no image has every needed input ({', '.join(stages) or 'images'}); "
                         f"reasons: {summary.quarantine_reasons}")
    kinds = _lesion_kinds(ok, out) if "pseudo_labels" in stages else ()
    inputs = {"preprocess": pre_dir, **stage_paths}
    kind = {"image_input": image_column, "require_grade": require_grade}
    info = {"format_version": FORMAT_VERSION, "data_hash": dhash, "stages": list(stages), "rows_in": n,
            "written": summary.written, "quarantined": summary.quarantined, "lesion_kinds": list(kinds),
            "inputs": inputs, **kind, "seconds": elapsed}
    fs.write_text(marker, json.dumps(info, indent=2))
    _remove_superseded(root, out, stages, inputs, kind)
    log.info("fusion data %s: %d images -> %d joined + %d quarantined in %.1f s -> %s", dhash, n, summary.written,
             summary.quarantined, elapsed, out)
    return FusionData(path=out, data_hash=dhash, stages=stages, rows_in=n, written=summary.written,
                      quarantined=summary.quarantined, lesion_kinds=kinds, reused=False)


__all__ = ["build_fusion_data", "data_hash", "mark_rows", "stage_file_index"]
