"""The classifiers' training data: the preprocess stage's images joined by ``image_id`` with the pseudo-label
stage's lesion maps and the vessel stage's graphs and biomarkers (Ray Data hash join), written once as Parquet and
then streamed per fold into Ray Train.

Layout: ``<output.dir>/fusion_data/<hash>/`` with ``status=ok/`` (joined rows, ``FUSION_COLUMNS``),
``status=quarantined/`` (a preprocessed image that a needed stage quarantined or never processed, or that has no
grade: ``error`` says which and why), ``quarantine.csv``, ``summary.json`` and ``_SUCCESS.json`` (written last). The
hash covers the stages joined, their settings (config hashes, which include the model hashes) and the
ids, grades and folds of their rows, so a changed input builds a new folder and an unchanged one is reused; a folder
without ``_SUCCESS.json`` (a killed build) is rebuilt. Rows in (preprocessed ``status=ok`` images) = joined +
quarantined, always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.runtime import init_ray, scan_outputs, stage_dir, summarise

log = logging.getLogger(__name__)

STAGE = "fusion_data"
FORMAT_VERSION = 1
SUCCESS_FILE = "_SUCCESS.json"
STAGES = ("pseudo_labels", "vessels")  # stages that can be joined onto the preprocessed images

# Columns each joined stage contributes (besides image_id).
LESION_COLUMNS = (C.LESION_MAPS_PNG, C.LESION_MAP_KINDS, C.LESION_MAP_SIZE,
                  *[C.lesion_area_column(k) for k in C.LESION_KINDS],
                  *[C.lesion_count_column(k) for k in C.LESION_KINDS])
VESSEL_COLUMNS = (C.N_NODES, C.N_EDGES, C.GRAPH_X, C.GRAPH_POS, C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR,
                  C.DISC_FOUND, *C.BIOMARKERS, C.BIOMARKER_REASONS)
STAGE_COLUMNS = {"pseudo_labels": LESION_COLUMNS, "vessels": VESSEL_COLUMNS}
_STAGE_SCHEMAS = {"pseudo_labels": C.PSEUDO_LABELS_SCHEMA, "vessels": C.VESSELS_SCHEMA}
_PRESENCE = {"pseudo_labels": C.LESION_MAP_KINDS, "vessels": C.N_NODES}  # non-null in every joined ok row
_BULKY = {C.IMAGE_PNG, C.LESION_MAPS_PNG, C.GRAPH_X, C.GRAPH_POS, C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR}
MODALITY_STAGES = {"lesion": "pseudo_labels", "graph": "vessels", "stats": "vessels"}


def stages_for(modalities: Sequence[str]) -> tuple[str, ...]:
    """The stages whose outputs ``modalities`` need, in ``STAGES`` order."""
    need = {MODALITY_STAGES[m] for m in modalities if m in MODALITY_STAGES}
    return tuple(s for s in STAGES if s in need)


def fusion_schema(stages: Sequence[str]) -> pa.Schema:
    """Schema of the joined rows for ``stages``: catalog columns, status/error/config_hash (= the data hash),
    the image, then each stage's columns."""
    pre = C.PREPROCESS_SCHEMA
    fields = [*C.CATALOG_SCHEMA, pa.field(C.STATUS, pa.string(), nullable=False), pa.field(C.ERROR, pa.string()),
              pa.field(C.CONFIG_HASH, pa.string()), pre.field(C.IMAGE_PNG), pre.field(C.SIZE)]
    for s in stages:
        fields += [_STAGE_SCHEMAS[s].field(c) for c in STAGE_COLUMNS[s]]
    return pa.schema(fields)


@dataclass(frozen=True)
class FusionData:
    """A built joined dataset: where it is, its hash, the stages joined and its counts."""

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


def _stage_index(cfg: Config, stage: str) -> pa.Table:
    """id/status/error/config_hash of every row of a stage folder; FileNotFoundError when it holds nothing."""
    path = stage_input(cfg, stage)
    scan = scan_outputs(path, remove_incomplete=False)
    if scan.table.num_rows == 0:
        raise FileNotFoundError(f"{path} holds no {stage} output: run `dr-ray {stage.replace('_', '-')}` first "
                                f"(or set train.{stage}_input to its folder)")
    return scan.table


def data_hash(preprocess_rows: pa.Table, indexes: dict[str, pa.Table]) -> str:
    """Hash of what the joined rows are made of: ids/grades/folds of the images and each stage's settings/ids."""
    parts = {"format": FORMAT_VERSION, "stages": sorted(indexes),
             "images": _ids_hash(preprocess_rows, [C.IMAGE_ID, C.GRADE, C.FOLD, C.CONFIG_HASH])}
    for stage, index in sorted(indexes.items()):
        parts[stage] = {"config_hashes": sorted(map(str, pc.unique(index.column(C.CONFIG_HASH)).to_pylist())),
                        "rows": _ids_hash(index, [C.IMAGE_ID, C.STATUS])}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def mark_rows(batch: pa.Table, *, stages: Sequence[str], schema: pa.Schema, data_hash: str,
              stage_errors: dict[str, dict[str, str]], stage_paths: dict[str, str]) -> pa.Table:
    """Ray Data batch function after the joins: status ok when every stage joined and the grade is known, else
    quarantined with the reason (the stage's own quarantine reason, or that the stage never processed it)."""
    n = batch.num_rows
    ids = batch.column(C.IMAGE_ID).to_pylist()
    errors: list[str | None] = [None] * n
    grades = batch.column(C.GRADE).to_pylist()
    for i in range(n):
        if grades[i] is None:
            errors[i] = f"{ids[i]}: no grade label (cannot train or evaluate a classifier on it)"
    for stage in stages:
        present = batch.column(_PRESENCE[stage]).to_pylist()
        for i in range(n):
            if errors[i] is None and present[i] is None:
                why = stage_errors[stage].get(ids[i])
                errors[i] = (f"{ids[i]}: quarantined by {stage}: {why}" if why else
                             f"{ids[i]}: not in the {stage} output {stage_paths[stage]} (run that stage on it)")
    ok = [e is None for e in errors]
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
            if name in _BULKY:
                # a quarantined row keeps its catalog columns and reason, not the bulky arrays
                col = pc.if_else(pa.array(ok, pa.bool_()), col, pa.nulls(n, col.type))
            cols[name] = col
    return pa.table([cols[nm] for nm in schema.names], schema=schema)


def _lesion_kinds(ok_dir: str) -> tuple[str, ...]:
    t = _read_columns(ok_dir, [C.LESION_MAP_KINDS])
    kinds = [k for k in pc.unique(t.column(0)).to_pylist() if k is not None]
    if len(kinds) != 1:
        raise ValueError(f"{ok_dir}: lesion maps of several kind sets {kinds} (pseudo labels from different "
                         f"models?); rerun pseudo-labels into one folder")
    return tuple(kinds[0].split(","))


def build_fusion_data(cfg: Config, stages: Sequence[str]) -> FusionData:
    """Join the preprocessed images with ``stages`` (subset of ``STAGES``) into ``<output.dir>/fusion_data/<hash>``,
    or reuse a complete earlier build of the same inputs. Runs Ray Data (hash join) when it has to build."""
    import ray

    stages = tuple(s for s in STAGES if s in stages)
    pre_dir = stage_input(cfg, "preprocess")
    pre_ok = fs.join(pre_dir, f"{C.STATUS}={C.STATUS_OK}")
    if not fs.is_dir(pre_ok):
        raise FileNotFoundError(f"{pre_ok} not found: run `dr-ray preprocess` first (or set train.preprocess_input)")
    pre_rows = _read_columns(pre_ok, [C.IMAGE_ID, C.GRADE, C.FOLD, C.CONFIG_HASH])
    if pre_rows.num_rows == 0:
        raise ValueError(f"{pre_ok} holds no preprocessed images")
    indexes = {s: _stage_index(cfg, s) for s in stages}
    dhash = data_hash(pre_rows, indexes)
    out = fs.join(stage_dir(cfg.output.dir, STAGE), dhash)
    marker = fs.join(out, SUCCESS_FILE)
    if fs.exists(marker):
        info = json.loads(fs.read_text(marker))
        log.info("fusion data %s: reusing %s (%d joined, %d quarantined)", dhash, out, info["written"],
                 info["quarantined"])
        return FusionData(path=out, data_hash=dhash, stages=stages, rows_in=info["rows_in"],
                          written=info["written"], quarantined=info["quarantined"],
                          lesion_kinds=tuple(info["lesion_kinds"]), reused=True)
    if fs.is_dir(out):  # an earlier build died before its marker: its shards are incomplete
        log.warning("fusion data %s: removing the incomplete build in %s", dhash, out)
        for f in fs.list_files(out, recursive=True):
            fs.delete_file(f)

    stage_paths = {s: stage_input(cfg, s) for s in stages}
    stage_errors = {}
    for s, index in indexes.items():
        bad = index.filter(pc.equal(index.column(C.STATUS), C.STATUS_QUARANTINED))
        stage_errors[s] = dict(zip(bad.column(C.IMAGE_ID).to_pylist(), bad.column(C.ERROR).to_pylist()))

    init_ray(cfg.ray)
    n = pre_rows.num_rows
    parts = max(1, -(-n // cfg.ray.rows_per_file))
    ds = ray.data.read_parquet(pre_ok, partitioning=None).select_columns([*C.CATALOG_COLUMNS, C.IMAGE_PNG, C.SIZE])
    for s in stages:
        right = ray.data.read_parquet(fs.join(stage_paths[s], f"{C.STATUS}={C.STATUS_OK}"), partitioning=None)
        right = right.select_columns([C.IMAGE_ID, *STAGE_COLUMNS[s]])
        ds = ds.join(right, join_type="left_outer", num_partitions=parts, on=(C.IMAGE_ID,))
    schema = fusion_schema(stages)
    ds = ds.map_batches(mark_rows, batch_format="pyarrow", batch_size=cfg.ray.rows_per_file,
                        fn_kwargs={"stages": stages, "schema": schema, "data_hash": dhash,
                                   "stage_errors": stage_errors, "stage_paths": stage_paths})
    t0 = time.perf_counter()
    ds.write_parquet(out, partition_cols=[C.STATUS])
    elapsed = time.perf_counter() - t0

    scan = scan_outputs(out)
    catalog = pre_rows.select([C.IMAGE_ID])
    summary = summarise(STAGE, catalog, scan, label_problems=0, already_done=0, processed_now=n, output=out,
                        run_seconds=elapsed)
    bad = scan.table.filter(pc.equal(scan.table.column(C.STATUS), C.STATUS_QUARANTINED))
    fs.write_csv(fs.join(out, "quarantine.csv"), bad.select([C.IMAGE_ID, C.PATH, C.ERROR]))
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary.as_dict(), indent=2))
    if not summary.reconciles:
        raise RuntimeError(f"fusion data counts do not reconcile: {summary.as_dict()}")
    if summary.written == 0:
        raise ValueError(f"fusion data {out}: no image has every needed input ({', '.join(stages) or 'images'}); "
                         f"reasons: {summary.quarantine_reasons}")
    ok_dir = fs.join(out, f"{C.STATUS}={C.STATUS_OK}")
    kinds = _lesion_kinds(ok_dir) if "pseudo_labels" in stages else ()
    info = {"format_version": FORMAT_VERSION, "data_hash": dhash, "stages": list(stages), "rows_in": n,
            "written": summary.written, "quarantined": summary.quarantined, "lesion_kinds": list(kinds),
            "inputs": {"preprocess": pre_dir, **stage_paths}, "seconds": elapsed}
    fs.write_text(marker, json.dumps(info, indent=2))
    log.info("fusion data %s: %d images -> %d joined + %d quarantined in %.1f s -> %s", dhash, n, summary.written,
             summary.quarantined, elapsed, out)
    return FusionData(path=out, data_hash=dhash, stages=stages, rows_in=n, written=summary.written,
                      quarantined=summary.quarantined, lesion_kinds=kinds, reused=False)


def read_index(data: FusionData, columns: Sequence[str] = ()) -> pa.Table:
    """Small columns of the joined ok rows (ids, grades, folds, patients + ``columns``) read with pyarrow: label
    counts, folds and biomarker statistics, never the image bytes."""
    base = [C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.FOLD]
    return _read_columns(data.ok_dir, [*base, *[c for c in columns if c not in base]])


def fold_datasets(data: FusionData, spec, fold: int, *, decode_batch_size: int, decode_cpus: float,
                  augment: bool):
    """(train, val) Ray Datasets of fold ``fold`` (val = rows of that fold, train = the others), decoded and (train
    only) augmented by CPU tasks (:func:`dr_ray.training.fusion_data.decode_rows`). Lazy: they run when iterated."""
    import ray
    from ray.data.expressions import col

    def read(shuffle):
        return ray.data.read_parquet(data.ok_dir, partitioning=None, shuffle=shuffle).select_columns(spec.columns())

    # Training files are read in a new random order every epoch (each epoch re-executes the dataset) and rows are
    # shuffled in each worker's local buffer (train.shuffle_buffer). Not randomize_block_order(): it is a barrier
    # that would hold every block of the fold in the object store before the first batch.
    train = read("files").filter(expr=col(C.FOLD) != fold)
    val = read(None).filter(expr=col(C.FOLD) == fold)

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
           "fusion_schema", "mark_rows", "read_index", "stage_input", "stages_for"]
