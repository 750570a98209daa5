"""Ray start-up and the bookkeeping every batch stage shares: stage folders, resume scans, summaries."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import RayConfig
from dr_ray.io import columns as C
from dr_ray.io import fs

log = logging.getLogger(__name__)


# Ray Train settings for a single-machine Ray: no spot instances to watch for preemption (one actor process less
# per run), and the controller polls its workers every 0.25 s instead of 2 s (seconds of idle per tiny run).
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def use_local_ray_train_settings() -> None:
    """Put :data:`LOCAL_RAY_TRAIN_ENV` into the environment (a value already set there wins). Call before Ray
    starts: Ray Train passes these variables from the driver to its controllers."""
    for k, v in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(k, v)


def init_ray(cfg: RayConfig) -> None:
    """Join or start Ray once. Inside `ray job submit` (RAY_ADDRESS set) this joins that cluster."""
    import ray

    if ray.is_initialized():
        return
    from dr_ray.faults import FAULT_ENVS

    kwargs: dict = {"configure_logging": False}
    faults = {k: os.environ[k] for k in FAULT_ENVS if os.environ.get(k)}
    if faults:  # tests only: the job's workers get the fault spec even on a cluster started without it
        kwargs["runtime_env"] = {"env_vars": faults}
    if cfg.address:
        kwargs["address"] = cfg.address
    elif "RAY_ADDRESS" not in os.environ and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(**kwargs)


def stage_dir(output_dir: str, stage: str) -> str:
    """``<output.dir>/<stage>`` as an absolute local path or a URI."""
    return fs.join(resolve_path(output_dir, "output.dir"), stage)


def partition_status(path: str) -> str | None:
    """``.../status=ok/x.parquet`` -> "ok" (the hive partition of a stage folder's shards)."""
    for part in path.replace("\\", "/").split("/"):
        if part.startswith(f"{C.STATUS}="):
            return part.split("=", 1)[1]
    return None


# Quarantine reasons that say nothing about the image (the storage failed, not the file): a resumed run
# processes such rows again instead of counting them as done. Persistent bad inputs stay quarantined.
RETRYABLE_REASONS = ("cannot read file",)


def is_retryable(error: str | None) -> bool:
    return bool(error) and reason_kind(error) in RETRYABLE_REASONS


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
    from dr_ray.pipelines import commit as K

    markers: dict[str, dict] = {}
    files, staged = [], []
    for path in fs.list_files(stage_path, recursive=True):
        rel = path[len(stage_path):].lstrip("/")
        if rel.startswith(K.STAGING_DIR + "/"):
            staged.append(path)
        elif rel.startswith(K.COMMITS_DIR + "/") and path.endswith(".json"):
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
        parsed = K.parse_part_name(path.rsplit("/", 1)[-1])
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
    from dr_ray.pipelines import commit as K

    lease = K.read_lease(stage_path)
    if lease is not None and lease.get("run_id") != run_id and not K.lease_is_stale(lease):
        raise K.LeaseHeldError(f"{stage_path} is being written by another run ({K.describe_lease(lease)}): "
                               "not touching its files")
    listing = _list_stage(stage_path)
    for m in listing.markers.values():
        K.roll_forward(stage_path, m)
    listing = _list_stage(stage_path)
    removed = []
    for path in [*listing.uncommitted, *listing.staged]:
        if path.endswith(K.LEASE_FILE) or f"lease.{run_id}." in path:
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

    from dr_ray.pipelines import commit as K

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
                fs.delete_if_exists(K.marker_path(stage_path, f.key))
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


@dataclass
class StageSummary:
    """Counts that must reconcile: catalog_rows == written + quarantined, no duplicates."""

    stage: str
    catalog_rows: int
    label_problems: int
    already_done: int  # rows found from earlier runs (resume)
    processed_now: int  # rows handed to Ray in this run
    written: int  # status ok, ids in the catalog (all runs)
    quarantined: int  # status quarantined, ids in the catalog (all runs)
    duplicates: int  # ids present more than once in the output (must be 0)
    not_in_catalog: int  # output rows whose id is not in this catalog (e.g. a smaller --set data.limit)
    removed_incomplete: int  # unreadable shards deleted before this run
    output: str
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    run_seconds: float = 0.0  # wall time of this run's Ray execution (read + process + write), no start-up
    duplicates_repaired: int = 0  # rows of an image id committed twice (e.g. a retried task) removed at the end
    retried: int = 0  # quarantined-for-I/O rows of earlier runs processed again by this run
    catalog_hash: str = ""  # hash of the input rows' ids, patients, grades, folds, paths

    @property
    def reconciles(self) -> bool:
        return self.duplicates == 0 and self.catalog_rows == self.written + self.quarantined

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["reconciles"] = self.reconciles
        return d

    def lines(self) -> list[str]:
        return [
            f"{self.stage}: catalog rows {self.catalog_rows} (label problems {self.label_problems})",
            f"  in: {self.catalog_rows} = written {self.written} + quarantined {self.quarantined}"
            f"  [{'reconciles' if self.reconciles else 'DOES NOT RECONCILE'}]",
            f"  this run: processed {self.processed_now} in {self.run_seconds:.1f} s"
            f" ({self.processed_now / max(self.run_seconds, 1e-9):.1f} images/s), found done from earlier runs"
            f" {self.already_done}, removed incomplete shards {self.removed_incomplete}",
            f"  duplicates by image id {self.duplicates} (repaired {self.duplicates_repaired}), quarantined"
            f" rows retried {self.retried}",
            *(f"  quarantined: {n} x {reason}" for reason, n in sorted(self.quarantine_reasons.items())),
            f"  output: {self.output}",
        ]


def reason_kind(error: str) -> str:
    """The reason part of an error string "<path>: <reason> (...)" with details stripped, for grouping."""
    reason = error.split(": ", 1)[1] if ": " in error else error
    return reason.split(" (")[0].split(":")[0].strip()


def summarise(stage: str, catalog: pa.Table, scan: OutputScan, *, label_problems: int, already_done: int,
              processed_now: int, output: str, run_seconds: float = 0.0,
              removed_incomplete: int | None = None, duplicates_repaired: int = 0) -> StageSummary:
    """Counts of ``scan`` against ``catalog``: written/quarantined count image ids (the latest commit of
    each), ``duplicates`` the rows beyond one per image id. ``removed_incomplete`` defaults to the shards
    ``scan`` removed."""
    ids = catalog.column(C.IMAGE_ID)
    out = scan.unique()
    in_cat = pc.is_in(out.column(C.IMAGE_ID), value_set=ids.combine_chunks())
    inside = out.filter(in_cat)
    ok = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_OK)).num_rows
    bad = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_QUARANTINED))
    reasons: dict[str, int] = {}
    for err in bad.column(C.ERROR).to_pylist():
        k = reason_kind(err or "no reason recorded")
        reasons[k] = reasons.get(k, 0) + 1
    return StageSummary(
        stage=stage, catalog_rows=catalog.num_rows, label_problems=label_problems, already_done=already_done,
        processed_now=processed_now, written=ok, quarantined=bad.num_rows, duplicates=scan.duplicates,
        not_in_catalog=out.num_rows - inside.num_rows,
        removed_incomplete=len(scan.removed_incomplete) if removed_incomplete is None else removed_incomplete,
        output=output, quarantine_reasons=reasons, run_seconds=run_seconds,
        duplicates_repaired=duplicates_repaired,
    )


def blocks_of(table: pa.Table, *, max_rows: int, min_blocks: int) -> list[pa.Table]:
    """Split a (metadata) table into blocks: at most ``max_rows`` rows, at least ``min_blocks`` blocks when
    there are enough rows, so small runs still use every CPU and large runs get files of ``max_rows`` rows."""
    n = table.num_rows
    if n == 0:
        return []
    rows = max(1, min(max_rows, -(-n // max(1, min_blocks))))
    return [table.slice(i, rows) for i in range(0, n, rows)]


# Input columns a stage's rows copy from its input: a resumed run must see the same values for the same ids.
CATALOG_CHECK_COLUMNS = (C.PATIENT_ID, C.GRADE, C.FOLD, C.PATH)


def catalog_hash(catalog: pa.Table) -> str:
    """Hash of a catalog's content: ids, patients, grades, folds, paths (sorted by id), 16 hex digits."""
    import hashlib

    cols = [c for c in (C.IMAGE_ID, *CATALOG_CHECK_COLUMNS) if c in catalog.column_names]
    t = catalog.select(cols).sort_by([(C.IMAGE_ID, "ascending")])
    h = hashlib.sha256()
    for c in cols:
        h.update(json.dumps([c, t.column(c).to_pylist()]).encode())
    return h.hexdigest()[:16]


def check_catalog(scan_table: pa.Table, catalog: pa.Table, out: str) -> None:
    """Refuse a resume whose input rows disagree with the rows already written for the same image ids.

    Row by row, stronger than one hash: any id whose patient, grade, fold or path differs (a changed
    ``data.seed`` moves folds, a corrected grade, a re-rooted dataset) is refused. Rows only ADDED to the
    catalog (new ids, every earlier row unchanged) are accepted and processed; rows removed (a smaller
    ``data.limit``) are counted as ``not_in_catalog``. Adding patients normally re-draws folds, and is then
    refused by the fold check.
    """
    if scan_table.num_rows == 0:
        return
    cols = [c for c in CATALOG_CHECK_COLUMNS if c in catalog.column_names and c in scan_table.column_names
            and scan_table.column(c).null_count < scan_table.num_rows]
    if not cols:
        return
    cat = catalog.select([C.IMAGE_ID, *cols])
    cat = cat.rename_columns([C.IMAGE_ID, *[f"new_{c}" for c in cols]])
    old = dedupe_latest(scan_table).select([C.IMAGE_ID, *cols])
    j = old.join(cat, C.IMAGE_ID, join_type="inner")
    bad_mask = None
    for c in cols:
        a, b = j.column(c).cast(catalog.schema.field(c).type), j.column(f"new_{c}")
        differ = pc.fill_null(pc.not_equal(a, b), True)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        differ = pc.and_(differ, pc.invert(both_null))
        bad_mask = differ if bad_mask is None else pc.or_(bad_mask, differ)
    bad = j.filter(bad_mask)
    if bad.num_rows:
        r = bad.slice(0, 1).to_pylist()[0]
        what = ", ".join(f"{c} {r[c]!r} -> {r['new_' + c]!r}" for c in cols if r[c] != r["new_" + c])
        raise ValueError(
            f"{out}: {bad.num_rows} of {j.num_rows} rows written earlier disagree with the input rows now "
            f"(e.g. {r[C.IMAGE_ID]}: {what}): the catalog changed (data.seed, grades, folds, paths or patients); "
            "a resumed run must see the same catalog; choose a new output.dir")


def check_resumable(scan_table: pa.Table, cfg_hash: str, out: str, resume: bool, *, what: str,
                    catalog: pa.Table | None = None) -> None:
    """Refuse (before anything is written) a run over an output made with other settings, or any run over a
    non-empty output when ``resume`` is false. ``what`` names the settings, e.g. "preprocess settings".
    With ``catalog`` (the stage's input rows), also :func:`check_catalog`."""
    if scan_table.num_rows == 0:
        return
    if not resume:
        raise FileExistsError(
            f"{out} already holds {scan_table.num_rows} rows and output.resume=false: "
            "choose a new output.dir or delete the old one (rows are never overwritten or duplicated)")
    hashes = set(pc.unique(scan_table.column(C.CONFIG_HASH)).to_pylist())
    if hashes != {cfg_hash}:
        raise ValueError(
            f"{out} holds rows made with other {what} (config hash {sorted(map(str, hashes))}, "
            f"now {cfg_hash}): a resumed run must use the same settings; choose a new output.dir")
    if catalog is not None:
        check_catalog(scan_table, catalog, out)


def _drop_rows(out: str, scan_table: pa.Table, drop: dict[str, set[str]], *, run_id: str) -> int:
    """Rewrite the commits holding ``drop`` (file -> ids to remove from it) without those rows. A commit's
    files (one per status) are rewritten together, as one new attempt of the same task key."""
    from dr_ray.pipelines import commit as K

    all_files = sorted(set(scan_table.column("_file").to_pylist()))
    key_of = {f: (K.parse_part_name(f.rsplit("/", 1)[-1]) or (None,))[0] for f in all_files}
    groups: dict = {}
    for f, ids in drop.items():
        key = key_of.get(f)
        g = ("legacy", f) if key is None else key
        files = [f] if key is None else [x for x in all_files if key_of[x] == key]
        prev = groups.get(g, (files, set()))
        groups[g] = (files, prev[1] | ids)
    dropped = 0
    for g, (files, ids) in groups.items():
        dropped += K.recommit_without(out, None if isinstance(g, tuple) else g, files, ids, run_id=run_id)
    return dropped


def release_retryable(out: str, scan: OutputScan, *, run_id: str) -> int:
    """Remove the quarantined rows whose reason is transient (``RETRYABLE_REASONS``: the storage failed, not
    the image) from their commits, so this run processes them again. Returns how many."""
    t = scan.unique()
    t = t.filter(pc.equal(t.column(C.STATUS), C.STATUS_QUARANTINED))
    ids = {i for i, e in zip(t.column(C.IMAGE_ID).to_pylist(), t.column(C.ERROR).to_pylist()) if is_retryable(e)}
    if not ids:
        return 0
    drop: dict[str, set[str]] = {}
    for i, f in zip(scan.table.column(C.IMAGE_ID).to_pylist(), scan.table.column("_file").to_pylist()):
        if i in ids:
            drop.setdefault(f, set()).add(i)
    return _drop_rows(out, scan.table, drop, run_id=run_id)


def repair_duplicates(out: str, scan: OutputScan, *, run_id: str) -> int:
    """Keep one row per image id (the latest commit), rewriting the older commits without theirs."""
    if scan.duplicates == 0:
        return 0
    counts = pc.value_counts(scan.table.column(C.IMAGE_ID))
    dup = {d["values"] for d in counts.to_pylist() if d["counts"] > 1}
    log.warning("%s: %d image ids were committed more than once; keeping each one's latest commit", out, len(dup))
    latest = dedupe_latest(scan.table)
    keep_file = dict(zip(latest.column(C.IMAGE_ID).to_pylist(), latest.column("_file").to_pylist()))
    drop: dict[str, set[str]] = {}
    for i, f in zip(scan.table.column(C.IMAGE_ID).to_pylist(), scan.table.column("_file").to_pylist()):
        if i in dup and f != keep_file[i]:
            drop.setdefault(f, set()).add(i)
    return _drop_rows(out, scan.table, drop, run_id=run_id)


def finish_stage(stage: str, catalog: pa.Table, before: OutputScan, out: str, *, label_problems: int,
                 already_done: int, processed_now: int, run_seconds: float, run_id: str | None = None,
                 retried: int = 0) -> StageSummary:
    """Scan what the stage folder holds now (as the lease holder ``run_id``: unfinished commits rolled forward,
    duplicates by image id repaired), write ``quarantine.csv`` and ``summary.json``, and fail unless every
    input row is written or quarantined exactly once."""
    after = scan_outputs(out, run_id=run_id)
    repaired = 0
    if after.duplicates and run_id is not None:
        repaired = repair_duplicates(out, after, run_id=run_id)
        after = scan_outputs(out, run_id=run_id)
    summary = summarise(stage, catalog, after, label_problems=label_problems, already_done=already_done,
                        processed_now=processed_now, output=out, run_seconds=run_seconds,
                        removed_incomplete=len(before.removed_incomplete) + len(after.removed_incomplete),
                        duplicates_repaired=repaired)
    summary.retried = retried
    summary.catalog_hash = catalog_hash(catalog)
    u = after.unique()
    bad = u.filter(pc.equal(u.column(C.STATUS), C.STATUS_QUARANTINED))
    fs.write_csv(fs.join(out, "quarantine.csv"), bad.select([C.IMAGE_ID, C.PATH, C.ERROR]))
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary.as_dict(), indent=2))
    if not summary.reconciles:
        raise RuntimeError(f"{stage} counts do not reconcile: {summary.as_dict()}")
    return summary


def check_shared_storage(path: str, *, timeout_s: float = 60.0) -> None:
    """On a cluster of several nodes, refuse an output path that is not shared storage: a URI is; a local path
    is when a file the driver writes there is visible from a task on every alive node (NFS, EFS, ...).
    Otherwise each node's shards would land on its own disk and the counts could never reconcile."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if fs.is_uri(path) and not path.startswith("file://"):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    probe = fs.join(path, "_storage_check", f"{uuid.uuid4().hex}.txt")
    fs.write_text(probe, "written by the driver")
    _, inner = fs.resolve(probe)

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(p: str) -> bool:
        return os.path.exists(p)

    try:
        refs = {n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(inner)
            for n in nodes}
        blind = []
        for name, ref in refs.items():
            try:
                if not ray.get(ref, timeout=timeout_s):
                    blind.append(name)
            except ray.exceptions.GetTimeoutError:
                blind.append(name + " [no answer in time]")
    finally:
        fs.delete_if_exists(probe)
    if blind:
        raise ValueError(
            f"output.dir: {path} is not shared storage: {len(blind)} of {len(nodes)} Ray nodes do not see a file "
            f"the driver wrote there ({', '.join(blind)}); each node would write to its own disk. On a multi-node "
            "cluster use a URI (s3://..., gs://...) or a path every node mounts (NFS, EFS)")


RAY_PACKAGE_MARK = "_ray_pkg_"


def resolve_path(path: str, key: str) -> str:
    """``path`` as an absolute path (or the URI itself). Refuses a relative path inside a Ray job's uploaded
    working dir (``ray job submit --working-dir .`` runs the job in Ray's per-upload package folder, so a
    relative output would land there and a resume after any code change would find nothing)."""
    if not path or fs.is_uri(path) or os.path.isabs(path):
        return path
    cwd = os.getcwd()
    if RAY_PACKAGE_MARK in cwd:
        raise ValueError(
            f"{key}={path!r} is relative and this job runs in Ray's uploaded working dir {cwd}: it would land "
            f"in that package folder; pass an absolute path or a URI (e.g. --set {key}=$PWD/{path}, or "
            f"`dr-ray submit`, which resolves paths before submitting)")
    return os.path.abspath(path)


def total_cpus() -> int:
    """CPUs of the connected Ray cluster (>= 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def training_dir(cfg, name: str, stage: str) -> Path:
    """``<output.dir>/<name>`` for a training stage (created, with the resolved config saved); training writes
    a local model directory, so ``output.dir`` must be a local (or mounted shared) path."""
    from dr_ray.config import dump_yaml

    if fs.is_uri(cfg.output.dir):
        raise ValueError(f"output.dir={cfg.output.dir!r}: {stage} writes a local model directory; "
                         f"use a local (or mounted shared) path")
    out = Path(stage_dir(cfg.output.dir, name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    return out


def export_latest_checkpoint(result, model_dir: Path, *, build: Callable, config: dict, data_hash: str):
    """A Ray Train result's latest checkpoint -> saved model directory ``model_dir``; returns (model, history).

    ``build()`` makes the architecture (without pretrained weights: they come from the checkpoint).
    """
    from dr_ray.models import save_model_dir
    from dr_ray.training.loops import load_training_state

    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state, history = load_training_state(d)
    model = build()
    model.load_state_dict(state["model"])
    save_model_dir(model, model_dir, config=config, train_data_hash=data_hash,
                   extra={"epoch": int(state["epoch"]), "metrics": history[-1] if history else {}}, overwrite=True)
    return model, history
