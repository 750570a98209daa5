"""The classifiers' training data: the preprocess stage's images joined by ``image_id`` with the pseudo-label
stage's lesion maps and the vessel stage's graphs and biomarkers, as a small **index** that references the stage
shards; the big columns (image PNG, lesion-map PNG, graph arrays) are never copied or shuffled.

The join runs in the driver with pyarrow over the stages' small columns only (ids, status, grades, folds,
biomarkers, lesion areas: ~0.3 KB per image, ~30 MB at EyePACS's 88,702 images) and writes
``<output.dir>/fusion_data/<hash>/`` with ``status=ok/`` (``index_schema``: catalog columns, the small stage
columns and, per stage, the shard file holding the row: ``C.source_file_column(stage)``), ``status=quarantined/``
(a preprocessed image that a needed stage quarantined or never processed, or that has no grade: ``error`` says
which and why), ``quarantine.csv``, ``summary.json`` and ``_SUCCESS.json`` (written last). Training reads
(:func:`fold_datasets`, :func:`rows_dataset`) make one Ray Data block per preprocess shard of the index rows and
let each read task fetch the big columns of its rows straight from the stage shards (:func:`fetch_columns`), so
the bytes that move are the ones the model consumes, once per epoch, and nothing is held until the end.

The hash covers the stages joined, their settings (config hashes, which include the model hashes), the ids,
grades and folds of their rows and the shard files referenced, so a changed input builds a new (small) folder and
an unchanged one is reused; a folder without ``_SUCCESS.json`` (a killed build) is rebuilt. After a build, the
earlier builds of the same stage folders (superseded: their inputs have changed since) and full-copy builds of
FORMAT_VERSION 1 are deleted, so old copies do not pile up. Rows in (preprocessed ``status=ok`` images) = joined +
quarantined, always.

Duplicate rows of one image inside a stage folder (a stage run twice into one folder) are resolved here by keeping
the row of the first shard in path order, and logged; the stages' own exactly-once layer is what prevents them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.runtime import scan_outputs, stage_dir, summarise

log = logging.getLogger(__name__)

STAGE = "fusion_data"
FORMAT_VERSION = 2  # 1: full copies of every joined column (removed when a version-2 build of the same inputs is made)
SUCCESS_FILE = "_SUCCESS.json"
STAGES = ("pseudo_labels", "vessels")  # stages that can be joined onto the preprocessed images
MAX_BLOCK_ROWS = 1024  # index rows per read task at most (a task reads the stage shards of its rows once)

# Columns each joined stage contributes (besides image_id): small ones live in the index, bulky ones are fetched.
LESION_COLUMNS = (C.LESION_MAPS_PNG, C.LESION_MAP_KINDS, C.LESION_MAP_SIZE,
                  *[C.lesion_area_column(k) for k in C.LESION_KINDS],
                  *[C.lesion_count_column(k) for k in C.LESION_KINDS])
VESSEL_COLUMNS = (C.N_NODES, C.N_EDGES, C.GRAPH_X, C.GRAPH_POS, C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR,
                  C.DISC_FOUND, *C.BIOMARKERS, C.BIOMARKER_REASONS)
STAGE_COLUMNS = {"pseudo_labels": LESION_COLUMNS, "vessels": VESSEL_COLUMNS}
_STAGE_SCHEMAS = {"preprocess": C.PREPROCESS_SCHEMA, "pseudo_labels": C.PSEUDO_LABELS_SCHEMA,
                  "vessels": C.VESSELS_SCHEMA}
_PRESENCE = {"pseudo_labels": C.LESION_MAP_KINDS, "vessels": C.N_NODES}  # non-null in every joined ok row
_BULKY = {C.IMAGE_PNG, C.CANNY_PNG, C.TOPHAT_PNG, C.LESION_MAPS_PNG, C.VESSEL_PROB_PNG, C.GRAPH_X, C.GRAPH_POS,
          C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR}
MODALITY_STAGES = {"lesion": "pseudo_labels", "graph": "vessels", "stats": "vessels"}


def stages_for(modalities: Sequence[str]) -> tuple[str, ...]:
    """The stages whose outputs ``modalities`` need, in ``STAGES`` order."""
    need = {MODALITY_STAGES[m] for m in modalities if m in MODALITY_STAGES}
    return tuple(s for s in STAGES if s in need)


def _small(stage: str) -> list[str]:
    return [c for c in STAGE_COLUMNS[stage] if c not in _BULKY]


def index_schema(stages: Sequence[str]) -> pa.Schema:
    """Schema of the index rows for ``stages``: catalog columns, status/error/config_hash (= the data hash), the
    image side, each stage's small columns, then one shard-file reference per stage (preprocess first)."""
    pre = C.PREPROCESS_SCHEMA
    fields = [*C.CATALOG_SCHEMA, pa.field(C.STATUS, pa.string(), nullable=False), pa.field(C.ERROR, pa.string()),
              pa.field(C.CONFIG_HASH, pa.string()), pre.field(C.SIZE)]
    for s in stages:
        fields += [_STAGE_SCHEMAS[s].field(c) for c in _small(s)]
    fields += [pa.field(C.source_file_column(s), pa.string()) for s in ("preprocess", *stages)]
    return pa.schema(fields)


def _image_column(image_input: str) -> str:
    from dr_ray.training.fusion_data import IMAGE_INPUT_COLUMN

    if image_input not in IMAGE_INPUT_COLUMN:
        raise ValueError(f"train.image_input={image_input!r}: known inputs {sorted(IMAGE_INPUT_COLUMN)}")
    return IMAGE_INPUT_COLUMN[image_input]


def fusion_schema(stages: Sequence[str], image_input: str = "clahe") -> pa.Schema:
    """Schema of fully fetched joined rows for ``stages`` (what :func:`read_rows` returns for every column):
    catalog columns, status/error/config_hash, the image, each stage's columns, then the image branch's input map
    when ``image_input`` is not the preprocessed image (``canny_png`` or ``vessel_prob_png``)."""
    pre = C.PREPROCESS_SCHEMA
    fields = [*C.CATALOG_SCHEMA, pa.field(C.STATUS, pa.string(), nullable=False), pa.field(C.ERROR, pa.string()),
              pa.field(C.CONFIG_HASH, pa.string()), pre.field(C.IMAGE_PNG), pre.field(C.SIZE)]
    for s in stages:
        fields += [_STAGE_SCHEMAS[s].field(c) for c in STAGE_COLUMNS[s]]
    column = _image_column(image_input)
    if column != C.IMAGE_PNG:
        fields.append(_STAGE_SCHEMAS[_source_stage(column, STAGES)].field(column))
    return pa.schema(fields)


@dataclass(frozen=True)
class FusionData:
    """A built joined index: where it is, its hash, the stages joined and its counts."""

    path: str  # <output.dir>/fusion_data/<hash>
    data_hash: str
    stages: tuple[str, ...]
    rows_in: int  # preprocessed status=ok images
    written: int  # joined rows (status=ok)
    quarantined: int
    lesion_kinds: tuple[str, ...]  # kinds of the joined lesion maps (empty without pseudo_labels)
    reused: bool  # found complete from an earlier run

    @property
    def ok_dir(self) -> str:
        return fs.join(self.path, f"{C.STATUS}={C.STATUS_OK}")

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["stages"], d["lesion_kinds"] = list(self.stages), list(self.lesion_kinds)
        return d


def stage_input(cfg: Config, stage: str) -> str:
    """The folder a train run reads ``stage`` from (``train.<stage>_input`` or ``<output.dir>/<stage>``)."""
    explicit = {"preprocess": cfg.train.preprocess_input, "pseudo_labels": cfg.train.pseudo_labels_input,
                "vessels": cfg.train.vessels_input}[stage]
    return explicit or stage_dir(cfg.output.dir, stage)


def _read_columns(path: str, columns: Sequence[str]) -> pa.Table:
    filesystem, inner = fs.resolve(path)
    return pads.dataset(inner, filesystem=filesystem, format="parquet").to_table(columns=list(columns))


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
    return _dedupe(t, ok_dir)


def _dedupe(t: pa.Table, where: str) -> pa.Table:
    if t.num_rows == 0:
        return t
    first = t.append_column("_i", pa.array(np.arange(t.num_rows))).group_by(C.IMAGE_ID, use_threads=False).aggregate(
        [("_i", "min")])
    if first.num_rows == t.num_rows:
        return t
    log.warning("%s: %d duplicate rows of %d images; keeping the first shard's row of each", where,
                t.num_rows - first.num_rows, first.num_rows)
    return t.take(pc.sort_indices(first.column("_i_min")))


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
        present = batch.column(_PRESENCE[stage]).to_pylist()
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
            if name in refs or name in _BULKY:
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
    image_column = _image_column(cfg.train.image_input)
    if image_column == C.VESSEL_PROB_PNG:
        stages = (*stages, "vessels")  # the image branch sees the vessel stage's probability map
    stages = tuple(s for s in STAGES if s in stages)
    image_stage = _source_stage(image_column, stages)
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
    rows = {s: stage_file_index(fs.join(stage_paths[s], f"{C.STATUS}={C.STATUS_OK}"), _small(s),
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


def read_index(data: FusionData | str, columns: Sequence[str] = ()) -> pa.Table:
    """Small columns of the joined ok rows (ids, grades, folds, patients + ``columns``) read with pyarrow: label
    counts, folds and biomarker statistics, never the image bytes. ``data``: a FusionData or its path."""
    base = [C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.FOLD]
    path = data.path if isinstance(data, FusionData) else data
    return _read_columns(_ok_dir(path), [*base, *[c for c in columns if c not in base]])


def _ok_dir(path: str) -> str:
    marker = fs.join(path, SUCCESS_FILE)
    if not fs.exists(marker):
        raise FileNotFoundError(f"{path}: no {SUCCESS_FILE}: this joined index is gone or incomplete (rerun "
                                f"`dr-ray train` to rebuild it)")
    version = json.loads(fs.read_text(marker)).get("format_version", 1)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: joined data of format {version}, this dr-ray reads format {FORMAT_VERSION} "
                         f"(rerun `dr-ray train` to rebuild it)")
    return fs.join(path, f"{C.STATUS}={C.STATUS_OK}")


def _source_stage(column: str, stages: Sequence[str]) -> str:
    for s in ("preprocess", *stages):
        if column in _STAGE_SCHEMAS[s].names:
            return s
    raise ValueError(f"column {column!r} is in none of the joined stages {('preprocess', *stages)}")


def fetch_columns(index: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Index rows (with their ``C.source_file_column`` references) -> a table of ``columns`` for the same rows in
    the same order; a column the index lacks is read from the stage shard named in the row's reference, each shard
    once per call with only the needed rows' ids as filter. Raises FileNotFoundError / ValueError naming the
    shard when it is gone or no longer holds a referenced image (the stage folder changed after the join)."""
    refs = {c[:-len("_file")]: c for c in index.column_names if c.endswith("_file") and c.startswith(
        ("preprocess", *STAGES))}
    stages = [s for s in STAGES if s in refs]
    out: dict[str, pa.ChunkedArray | pa.Array] = {}
    need: dict[str, list[str]] = {}
    for c in columns:
        if c in index.column_names:
            out[c] = index.column(c)
        else:
            need.setdefault(_source_stage(c, stages), []).append(c)
    ids = index.column(C.IMAGE_ID).combine_chunks()
    for stage, cols in need.items():
        ref = index.column(refs[stage]).to_pylist()
        if any(r is None for r in ref):
            raise ValueError(f"{stage}: {sum(r is None for r in ref)} rows without a {stage} shard reference "
                             f"(quarantined rows carry no data)")
        parts = []
        for f in dict.fromkeys(ref):
            want = pc.filter(ids, pa.array([r == f for r in ref]))
            if not fs.exists(f):
                raise FileNotFoundError(f"{f}: {stage} shard referenced by the joined index is gone (the stage "
                                        f"folder changed after the join: rerun `dr-ray train` to rebuild it)")
            filesystem, inner = fs.resolve(f)
            t = pq.read_table(inner, columns=[C.IMAGE_ID, *cols], filesystem=filesystem,
                              filters=pc.field(C.IMAGE_ID).isin(want))
            t = _dedupe(t, f)
            if t.num_rows != len(want):
                missing = set(want.to_pylist()) - set(t.column(C.IMAGE_ID).to_pylist())
                raise ValueError(f"{f}: {stage} shard no longer holds {sorted(missing)[:5]} (rerun `dr-ray train`)")
            parts.append(t)
        got = pa.concat_tables(parts)
        order = pc.index_in(ids, value_set=got.column(C.IMAGE_ID).combine_chunks())
        for c in cols:
            out[c] = got.column(c).take(order)
    return pa.table({c: out[c] for c in columns})


def read_rows(path: str, columns: Sequence[str], *, ids: Sequence[str] | None = None) -> pa.Table:
    """Joined ok rows of the index at ``path`` (all of them, or those of ``ids`` in index order) with any
    ``columns`` (big ones fetched from the stage shards): for a handful of rows in the driver (Grad-CAM,
    thumbnails, tests). Training and evaluation stream through :func:`rows_dataset` instead."""
    filesystem, inner = fs.resolve(_ok_dir(path))
    flt = None if ids is None else pc.field(C.IMAGE_ID).isin(list(ids))
    index = pads.dataset(inner, filesystem=filesystem, format="parquet").to_table(filter=flt)
    return fetch_columns(index, columns)


def _index_blocks(index: pa.Table) -> list[pa.Table]:
    """One block per preprocess shard of ``index`` (split at MAX_BLOCK_ROWS): a read task then reads each big
    column chunk once."""
    ref = C.source_file_column("preprocess")
    index = index.sort_by([(ref, "ascending"), (C.IMAGE_ID, "ascending")])
    files = index.column(ref).to_pylist()
    blocks, start = [], 0
    for i in range(1, len(files) + 1):
        if i == len(files) or files[i] != files[start] or i - start >= MAX_BLOCK_ROWS:
            blocks.append(index.slice(start, i - start))
            start = i
    return blocks


def rows_dataset(path: str, columns: Sequence[str], *, fold: int | None = None, exclude_fold: bool = False,
                 shuffle: bool = False, fetch_cpus: float = 1.0, image_ids: Sequence[str] | None = None):
    """A Ray Dataset of the joined ok rows of the index at ``path`` (optionally only fold ``fold``, or with
    ``exclude_fold`` every other fold) with ``columns``. The driver reads the index (small columns), cuts it into
    one block per preprocess shard, and each read task fetches its rows' big columns from the stage shards
    (:func:`fetch_columns`). ``shuffle``: the blocks come in a new random order every execution (every epoch);
    this is a barrier over the small index blocks only, never over fetched image bytes. ``image_ids``: keep only
    these rows (after the fold filter): the nested-CV splits of :func:`fold_datasets`."""
    import ray

    filesystem, inner = fs.resolve(_ok_dir(path))
    refs = [c for c in pads.dataset(inner, filesystem=filesystem, format="parquet").schema.names
            if c.endswith("_file")]
    keep = list(dict.fromkeys([C.IMAGE_ID, C.FOLD, *refs, *[c for c in columns if c not in _BULKY]]))
    index = pads.dataset(inner, filesystem=filesystem, format="parquet").to_table()
    index = index.select([c for c in keep if c in index.column_names])
    if fold is not None:
        m = pc.equal(index.column(C.FOLD), fold)
        index = index.filter(pc.invert(m) if exclude_fold else m)
    if image_ids is not None:
        index = index.filter(pc.is_in(index.column(C.IMAGE_ID), value_set=pa.array(list(image_ids), pa.string())))
    blocks = _index_blocks(index)
    if not blocks:
        ds = ray.data.from_arrow(index.select([c for c in columns if c in index.column_names]))
        return ds
    ds = ray.data.from_arrow(blocks)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(fetch_columns, batch_format="pyarrow", batch_size=None, num_cpus=fetch_cpus,
                          fn_kwargs={"columns": list(columns)})


def fold_datasets(data: FusionData, spec, *, train_ids: Sequence[str], val_ids: Sequence[str],
                  decode_batch_size: int, decode_cpus: float, augment: bool):
    """(train, val) Ray Datasets of the rows ``train_ids`` and ``val_ids``, fetched from the stage shards
    (:func:`rows_dataset`), decoded and (train only) augmented by CPU tasks
    (:func:`dr_ray.training.fusion_data.decode_rows`). Lazy: they run when iterated.

    Nested CV: the caller draws both id sets from the outer training folds only (``train`` = inner training rows,
    ``val`` = the inner validation split that the LR schedule, early stopping and the epoch choice read; see
    :func:`dr_ray.io.folds.inner_split`), so the outer test fold is not in either dataset."""
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise ValueError(f"fold_datasets: {len(overlap)} image(s) in both train_ids and val_ids, e.g. "
                         f"{sorted(overlap)[:3]}")
    if not len(train_ids) or not len(val_ids):
        raise ValueError(f"fold_datasets: empty split ({len(train_ids)} training, {len(val_ids)} validation ids)")
    # Training blocks come in a new random order every epoch (each epoch re-executes the dataset) and rows are
    # shuffled in each worker's local buffer (train.shuffle_buffer).
    train = rows_dataset(data.path, spec.columns(), shuffle=True, fetch_cpus=decode_cpus, image_ids=train_ids)
    val = rows_dataset(data.path, spec.columns(), fetch_cpus=decode_cpus, image_ids=val_ids)

    def stage(d, aug: bool):
        return d.map_batches(decode_batch, batch_format="numpy", batch_size=decode_batch_size, num_cpus=decode_cpus,
                             fn_kwargs={"spec": spec, "augment": aug})

    return stage(train, augment), stage(val, False)


def decode_batch(batch: dict, *, spec, augment: bool) -> dict:
    """Ray Data batch function: joined rows (numpy batch) -> :func:`decode_rows` arrays. Augmentation draws from
    a fresh generator per call (Ray Data re-executes the dataset every epoch, so each epoch sees new transforms)."""
    from dr_ray.training.fusion_data import decode_rows

    return decode_rows(batch, spec, augment=augment, rng=np.random.default_rng() if augment else None)


__all__ = ["FusionData", "MODALITY_STAGES", "STAGES", "build_fusion_data", "decode_batch", "fold_datasets",
           "fusion_schema", "mark_rows", "read_index", "rows_dataset", "stage_input", "stages_for"]
