"""Reading what a stage folder holds: the committed shards (those a commit marker names, plus legacy ones),
:func:`recover` (roll unfinished commits forward, delete uncommitted attempts), :func:`scan_outputs` (the small
id/status/catalog columns of every committed row, for resume and reconciliation) and :func:`read_committed`, the
reader every downstream stage uses, deduplicated by image id (the latest commit wins)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.commit import roll_forward
from dr_ray.pipelines.lease import LeaseHeldError, describe_lease, lease_is_stale, read_lease
from dr_ray.pipelines.stage_layout import COMMITS_DIR, LEASE_FILE, STAGING_DIR, marker_path, parse_part_name

log = logging.getLogger(__name__)


def partition_status(path: str) -> str | None:
    """``.../status=ok/x.parquet`` -> "ok" (the hive partition of a stage folder's shards)."""
    for part in path.replace("\\", "/").split("/"):
        if part.startswith(f"{C.STATUS}="):
            return part.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class CommittedFile:
    """One Parquet shard a stage folder holds as its output (see :mod:`dr_ray.pipelines.commit`)."""

    path: str
    status: str
    key: str | None  # task key; None for a legacy shard (written before commit markers, or by hand)
    time: float  # commit time (s since the epoch); 0 for a legacy shard


@dataclass
class _Listing:
    committed: list[CommittedFile]
    uncommitted: list[str]  # part files no marker names (an attempt a later one replaced, or never committed)
    staged: list[str]  # files under _staging/
    markers: dict[str, dict]


def _list_stage(stage_path: str) -> _Listing:
    markers: dict[str, dict] = {}
    files, staged = [], []
    for path in fs.list_files(stage_path, recursive=True):
        rel = path[len(stage_path):].lstrip("/")
        if rel.startswith(STAGING_DIR + "/"):
            staged.append(path)
        elif rel.startswith(COMMITS_DIR + "/") and path.endswith(".json"):
            try:
                m = json.loads(fs.read_bytes(path))
            except FileNotFoundError:  # replaced between listing and reading
                continue
            except ValueError as e:  # markers are renamed into place whole: this is not ours
                raise ValueError(f"{path}: unreadable commit marker ({e}); delete it to redo its task") from e
            markers[m["key"]] = m
        elif path.endswith(".parquet"):
            files.append(path)
    committed, uncommitted = [], []
    for path in files:
        status = partition_status(path)
        if status is None:
            continue
        parsed = parse_part_name(path.rsplit("/", 1)[-1])
        if parsed is None:
            committed.append(CommittedFile(path, status, None, 0.0))
            continue
        key, attempt = parsed
        m = markers.get(key)
        if m is not None and m["attempt"] == attempt and status in m["files"]:
            committed.append(CommittedFile(path, status, key, float(m["time"])))
        else:
            uncommitted.append(path)
    return _Listing(committed, uncommitted, staged, markers)


def committed_files(stage_path: str, status: str | None = None) -> list[CommittedFile]:
    """The shards that are the stage folder's output (those a commit marker names, plus legacy shards), of
    one ``status`` or all. Read-only: an unfinished commit is not rolled forward here (the next run does)."""
    files = _list_stage(stage_path).committed
    return [f for f in files if status is None or f.status == status]


def committed_paths(stage_path: str, status: str = C.STATUS_OK) -> list[str]:
    """Paths of the committed shards of ``status``, for ``ray.data.read_parquet(paths)``. Exactly once per
    image id when the stage has finished (its last scan repairs duplicates); :func:`read_committed` dedupes
    itself."""
    return [f.path for f in committed_files(stage_path, status)]


def recover(stage_path: str, *, run_id: str | None = None) -> list[str]:
    """Bring a stage folder to its committed state before a run writes into it: roll forward every commit
    whose marker is written, delete staged files and part files no marker names (attempts that died or were
    replaced). Only the lease holder may call this (``run_id``; refused while another live run holds the
    lease). Returns the paths deleted."""
    lease = read_lease(stage_path)
    if lease is not None and lease.get("run_id") != run_id and not lease_is_stale(lease):
        raise LeaseHeldError(f"{stage_path} is being written by another run ({describe_lease(lease)}): "
                               "not touching its files")
    listing = _list_stage(stage_path)
    for m in listing.markers.values():
        roll_forward(stage_path, m)
    listing = _list_stage(stage_path)
    removed = []
    for path in [*listing.uncommitted, *listing.staged]:
        if path.endswith(LEASE_FILE) or f"lease.{run_id}." in path:
            continue
        if fs.delete_if_exists(path):
            removed.append(path)
    if removed:
        log.info("%s: removed %d uncommitted files of earlier attempts", stage_path, len(removed))
    return removed


@dataclass
class OutputScan:
    """What a stage folder already holds: one row per committed record (no image bytes), duplicates kept so
    they can be counted; :meth:`unique` is the deduplicated view (the latest commit of each image id)."""

    table: pa.Table  # image_id, status, error, path, config_hash, patient_id, grade, fold, _file, _time
    removed_incomplete: list[str] = field(default_factory=list)  # shards proven incomplete and deleted

    def ids(self) -> pa.Array:
        return self.unique().column(C.IMAGE_ID).combine_chunks()

    def unique(self) -> pa.Table:
        return dedupe_latest(self.table)

    @property
    def duplicates(self) -> int:
        n = self.table.num_rows
        return n - (pc.count_distinct(self.table.column(C.IMAGE_ID)).as_py() if n else 0)


_SCAN_SCHEMA = pa.schema([(C.IMAGE_ID, pa.string()), (C.STATUS, pa.string()), (C.ERROR, pa.string()),
                          (C.PATH, pa.string()), (C.CONFIG_HASH, pa.string()), (C.PATIENT_ID, pa.string()),
                          (C.GRADE, pa.int8()), (C.FOLD, pa.int8()), ("_file", pa.string()),
                          ("_time", pa.float64())])


def dedupe_latest(table: pa.Table) -> pa.Table:
    """One row per image id: the row of the latest commit (``_time``), ties broken by file name."""
    if table.num_rows == 0 or pc.count_distinct(table.column(C.IMAGE_ID)).as_py() == table.num_rows:
        return table
    ids = table.column(C.IMAGE_ID).to_pylist()
    times = table.column("_time").to_pylist() if "_time" in table.column_names else [0.0] * len(ids)
    files = table.column("_file").to_pylist() if "_file" in table.column_names else [""] * len(ids)
    best: dict[str, int] = {}
    for i, iid in enumerate(ids):
        j = best.get(iid)
        if j is None or (times[i], files[i]) > (times[j], files[j]):
            best[iid] = i
    return table.take(pa.array(sorted(best.values()), pa.int64()))


def _read_shards(files: list[CommittedFile], columns: list[str], *, remove_incomplete: bool,
                 stage_path: str) -> tuple[list[pa.Table], list[str], int]:
    """Read ``columns`` of every shard (threads: object storage latency), with ``status``/``_file``/``_time``
    added. A shard is deleted only when PROVEN incomplete: it parses as no Parquet file (``ArrowInvalid``)
    twice; a transient ``OSError`` is retried (``fs.retry``) and then raised, never taken as a verdict."""
    from concurrent.futures import ThreadPoolExecutor

    def read(f: CommittedFile):
        try:
            return fs.read_parquet(f.path, columns)
        except FileNotFoundError:
            # listed, then gone: a legacy shard deleted, or a committed one replaced by a retried attempt
            # between the listing and now (a live run): the caller rescans
            return "gone"
        except pa.ArrowInvalid as first:
            try:
                return fs.read_parquet(f.path, columns)
            except pa.ArrowInvalid:
                return first

    tables, removed, gone = [], [], 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(read, files))
    for f, t in zip(files, results):
        if isinstance(t, str):
            gone += 1
            continue
        if isinstance(t, Exception):
            if not remove_incomplete:
                raise ValueError(f"{f.path}: not a readable Parquet shard ({t})") from t
            log.warning("removing incomplete shard %s (%s): its images will be processed again", f.path, t)
            if f.key is not None:  # the whole task goes: marker first (the commit point), then its files
                fs.delete_if_exists(marker_path(stage_path, f.key))
            fs.delete_if_exists(f.path)
            removed.append(f.path)
            continue
        n = t.num_rows
        t = t.append_column(C.STATUS, pa.array([f.status] * n, pa.string()))
        t = t.append_column("_file", pa.array([f.path] * n, pa.string()))
        t = t.append_column("_time", pa.array([f.time] * n, pa.float64()))
        tables.append(t)
    return tables, removed, gone


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [t.column(n).cast(schema.field(n).type) if n in t.column_names else pa.nulls(t.num_rows,
            schema.field(n).type) for n in schema.names]
    return pa.table(cols, schema=schema)


def scan_outputs(stage_path: str, *, remove_incomplete: bool = True, run_id: str | None = None) -> OutputScan:
    """The id/status/error/catalog columns of every committed shard under ``stage_path``.

    With ``remove_incomplete`` (the start and end of a run, holding the lease as ``run_id``; refused while
    another live run holds it): unfinished commits are rolled forward, uncommitted attempts deleted
    (:func:`recover`) and shards proven incomplete deleted (named in the log; their images are redone).
    Without it the scan is read-only and an unreadable shard raises.
    """
    removed: list[str] = []
    if remove_incomplete:
        recover(stage_path, run_id=run_id)
    cols = [n for n in _SCAN_SCHEMA.names if n not in (C.STATUS, "_file", "_time")]
    for _ in range(5):  # a shard replaced between listing and reading (a live writer): list again
        files = committed_files(stage_path)
        tables, gone, vanished = _read_shards(files, cols, remove_incomplete=remove_incomplete,
                                              stage_path=stage_path)
        removed += gone
        if not vanished:
            break
    table = pa.concat_tables([_conform(t, _SCAN_SCHEMA) for t in tables]) if tables else _SCAN_SCHEMA.empty_table()
    return OutputScan(table=table, removed_incomplete=removed)


def _field_type(name: str) -> pa.DataType:
    for schema in (C.CATALOG_SCHEMA, C.PREPROCESS_SCHEMA, C.VESSELS_SCHEMA, C.PSEUDO_LABELS_SCHEMA,
                   C.PREDICTIONS_SCHEMA):
        if name in schema.names:
            return schema.field(name).type
    return pa.null()


def read_committed(stage_path: str, columns: Sequence[str], status: str | None = C.STATUS_OK) -> pa.Table:
    """``columns`` of the committed rows of a stage folder (``status`` ok by default; None: both, with a
    ``status`` column), one row per image id (the latest commit when a crash left two). The reader every
    downstream stage uses instead of listing ``status=ok/`` itself. FileNotFoundError when the folder is missing.
    """
    if not fs.is_dir(stage_path):
        raise FileNotFoundError(f"{stage_path} not found (run the stage that writes it first)")
    want = list(dict.fromkeys([C.IMAGE_ID, *columns]))
    files = committed_files(stage_path, status)
    tables, _, _ = _read_shards(files, [c for c in want if c != C.STATUS], remove_incomplete=False,
                                stage_path=stage_path)
    if not tables:
        return pa.table({c: pa.array([], _field_type(c) if c != C.STATUS else pa.string())
                         for c in [*columns] or [C.IMAGE_ID]})
    t = dedupe_latest(pa.concat_tables(tables, promote_options="permissive"))
    out = [c for c in columns] if columns else [C.IMAGE_ID]
    if status is None and C.STATUS not in out:
        out.append(C.STATUS)
    missing = [c for c in out if c not in t.column_names]
    if missing:
        raise ValueError(f"{stage_path}: its shards have no column(s) {missing} (columns: "
                         f"{[c for c in t.column_names if not c.startswith('_')]})")
    return t.select(out)
