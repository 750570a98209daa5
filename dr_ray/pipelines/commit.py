"""Exactly-once output of the batch stages: atomic commits of a task's rows, one writer per stage folder.

Layout of a stage folder (``<output.dir>/<stage>/``)::

    status=ok/part-<key>-<attempt>.parquet           committed rows (the ``status`` column is the partition)
    status=quarantined/part-<key>-<attempt>.parquet
    _commits/<key>.json                              commit marker: which attempt of task <key> is THE one
    _staging/<status>.part-<key>-<attempt>.parquet   written here first, renamed into place after the marker
    _lease.json                                      the one run allowed to write (host, pid, start, heartbeat)

Why a commit marker per task key (and not just "temporary name, then rename"): one task writes two files
(its ok rows and its quarantined rows), and a retried attempt can put a row in the other partition (a
transient error quarantined it the first time). A rename is atomic per file, not per pair; the marker is the
single atomic step that says which attempt's files are the task's output, so a reader never sees a row of one
attempt next to a row of another. Commit protocol of :func:`commit_tables`, per stage folder:

1. the attempt's files are written under ``_staging/`` (``_``-prefixed: pyarrow's dataset discovery and
   ``ray.data.read_parquet`` skip it), transient I/O errors retried;
2. the lease is checked (a run whose lease was taken over by a successor stops here: fencing);
3. the marker ``_commits/<key>.json`` is written atomically (staged, then renamed): **the commit point**;
4. the staged files are renamed into ``status=*/`` and the files of the attempt the marker replaced are deleted.

A crash before 3 leaves only staging garbage (removed by the next run's scan); a crash after 3 is rolled
forward by the next scan (:func:`roll_forward`). Readers that go through :func:`dr_ray.pipelines.runtime.
read_committed` see exactly the files named by markers (plus legacy files without the ``part-<key>-<attempt>``
name, written before this layout), deduplicated by image id. Plain tools (``pyarrow.dataset`` /
``ray.data.read_parquet`` on ``status=ok``) see the same rows once the stage has finished (its last scan rolls
every commit forward and repairs duplicates); during a run they may briefly see a task's old and new attempt.

The task key is a hash of the rows' image ids, so a retried task (same input block) overwrites its own commit
instead of adding a second copy. Lease: :class:`StageLease` writes ``_lease.json`` (exclusive create on local
paths; write-then-verify on object storage, where pyarrow has no conditional put) and refreshes its heartbeat
from a driver thread; a lease whose heartbeat is older than its TTL, or whose holder process is gone (same
host), is taken over by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.io import columns as C
from dr_ray.io import fs

log = logging.getLogger(__name__)

COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LEASE_FILE = "_lease.json"
STATUSES = (C.STATUS_OK, C.STATUS_QUARANTINED)
PART_PREFIX = "part-"


class LeaseHeldError(RuntimeError):
    """Another live run holds the stage folder's lease."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (its heartbeat went stale): it must not commit anything more."""


def part_name(key: str, attempt: str) -> str:
    return f"{PART_PREFIX}{key}-{attempt}.parquet"


def parse_part_name(name: str) -> tuple[str, str] | None:
    """``part-<key>-<attempt>.parquet`` -> (key, attempt); None for any other (legacy) file name."""
    if not (name.startswith(PART_PREFIX) and name.endswith(".parquet")):
        return None
    body = name[len(PART_PREFIX):-len(".parquet")]
    key, sep, attempt = body.rpartition("-")
    if not sep or not key or not attempt:
        return None
    return key, attempt


def task_key_of(ids: Sequence[str]) -> str:
    """Deterministic key of a task's rows: sha256 of the sorted image ids (16 hex digits)."""
    h = hashlib.sha256()
    for i in sorted(ids):
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def marker_path(stage_path: str, key: str) -> str:
    return fs.join(stage_path, COMMITS_DIR, f"{key}.json")


def status_dir(stage_path: str, status: str) -> str:
    return fs.join(stage_path, f"{C.STATUS}={status}")


def _staged_path(stage_path: str, status: str, name: str) -> str:
    return fs.join(stage_path, STAGING_DIR, f"{status}.{name}")


def read_marker(stage_path: str, key: str) -> dict | None:
    try:
        return json.loads(fs.read_bytes(marker_path(stage_path, key)))
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- lease

def _now() -> float:
    return time.time()


def read_lease(stage_path: str) -> dict | None:
    """The lease of a stage folder, or None when there is none (or it is unreadable: a half-written lease
    cannot be anybody's valid claim)."""
    try:
        return json.loads(fs.read_bytes(fs.join(stage_path, LEASE_FILE)))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_is_stale(lease: dict, *, now: float | None = None) -> bool:
    """True when the holder is gone: heartbeat older than its TTL, or (same host) its process has exited."""
    now = _now() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > float(lease.get("ttl_s", 0)):
        return True
    return lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1)))


def describe_lease(lease: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("started", 0))))
    age = _now() - float(lease.get("heartbeat", 0))
    return (f"run {lease.get('run_id')} on host {lease.get('host')} pid {lease.get('pid')}, started {started}, "
            f"last heartbeat {age:.0f} s ago (lease TTL {float(lease.get('ttl_s', 0)):.0f} s)")


def check_lease(stage_path: str, run_id: str) -> None:
    """Raise :class:`LeaseLostError` unless ``run_id`` holds the stage folder's lease (commit fencing)."""
    lease = read_lease(stage_path)
    if lease is None or lease.get("run_id") != run_id:
        holder = "nobody" if lease is None else describe_lease(lease)
        raise LeaseLostError(f"{stage_path}: run {run_id} does not hold the lease (holder: {holder}); "
                             f"refusing to commit")


class StageLease:
    """Context manager: this run is the one writer of each of ``stage_paths`` (local paths or URIs).

    Entering refuses with :class:`LeaseHeldError` naming the holder (host, pid, start time) when another live
    run holds any of them, and takes over a stale lease (heartbeat older than ``ttl_s``, or a holder process
    on this host that has exited). A daemon thread refreshes the heartbeat every ``heartbeat_s`` (default
    ``ttl_s / 4``); leaving deletes the lease files still held. ``run_id`` is unique per run and goes into
    every commit marker; :func:`commit_tables` refuses to commit once the lease is no longer this run's.
    """

    def __init__(self, stage_paths: Sequence[str], *, ttl_s: float = 120.0, heartbeat_s: float | None = None,
                 run_id: str | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        if not stage_paths:
            raise ValueError("stage_paths is empty: a lease needs at least one stage folder")
        self.stage_paths = list(dict.fromkeys(stage_paths))
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else self.ttl_s / 4
        self.run_id = run_id or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.started = _now()
        self._held: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []

    def _content(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self.started, "heartbeat": _now(), "ttl_s": self.ttl_s}).encode()

    def _acquire(self, stage_path: str) -> None:
        path = fs.join(stage_path, LEASE_FILE)
        fs.makedirs(stage_path)
        if not fs.is_uri(path) or path.startswith("file://"):
            _, inner = fs.resolve(path)
            try:  # exclusive create: of two runs starting together exactly one gets here
                fd = os.open(inner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(self._content())
                self._held.append(stage_path)
                return
        lease = read_lease(stage_path)
        if lease is not None and lease.get("run_id") != self.run_id and not lease_is_stale(lease):
            raise LeaseHeldError(f"{stage_path} is being written by another run ({describe_lease(lease)}); "
                                 f"wait for it, stop it (`ray job stop`), or choose another output.dir")
        if lease is not None:
            log.warning("%s: taking over the stale lease of %s", stage_path, describe_lease(lease))
        # staged + renamed so a reader never sees half a lease; then read back: of two runs taking over the
        # same stale lease at once, the one whose content is not there backs off
        tmp = fs.join(stage_path, STAGING_DIR, f"lease.{self.run_id}.json")
        fs.write_bytes(tmp, self._content())
        fs.move(tmp, path)
        time.sleep(0.05)
        now = read_lease(stage_path)
        if now is None or now.get("run_id") != self.run_id:
            raise LeaseHeldError(f"{stage_path}: another run took the lease at the same time "
                                 f"({'?' if now is None else describe_lease(now)})")
        self._held.append(stage_path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            for p in list(self._held):
                try:
                    lease = read_lease(p)
                    if lease is None or lease.get("run_id") != self.run_id:
                        log.error("%s: lease lost to %s", p, "nobody" if lease is None else describe_lease(lease))
                        self._held.remove(p)
                        self.lost.append(p)
                        continue
                    tmp = fs.join(p, STAGING_DIR, f"lease.{self.run_id}.json")
                    fs.write_bytes(tmp, self._content())
                    fs.move(tmp, fs.join(p, LEASE_FILE))
                except OSError as e:  # the next beat tries again; the TTL is several beats long
                    log.warning("%s: heartbeat failed (%s: %s)", p, type(e).__name__, e)

    def __enter__(self) -> "StageLease":
        try:
            for p in self.stage_paths:
                self._acquire(p)
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for p in self._held:
            try:
                lease = read_lease(p)
                if lease is not None and lease.get("run_id") == self.run_id:
                    fs.delete_if_exists(fs.join(p, LEASE_FILE))
            except OSError as e:
                log.warning("%s: could not release the lease (%s); it goes stale in %.0f s", p, e, self.ttl_s)
        self._held = []


# ---------------------------------------------------------------- commits

@dataclass(frozen=True)
class CommitResult:
    stage_path: str
    key: str
    attempt: str
    rows: int
    ok: int
    quarantined: int


def roll_forward(stage_path: str, marker: dict) -> None:
    """Finish a commit whose marker is written: rename its staged files into place, delete the files of the
    attempts it replaced. Idempotent (a crash in here is finished by the next call)."""
    attempt = marker["attempt"]
    for status, info in marker["files"].items():
        final = fs.join(status_dir(stage_path, status), info["name"])
        staged = _staged_path(stage_path, status, info["name"])
        if fs.exists(staged):
            fs.move(staged, final)
    for old in marker.get("replaces", []):
        for status, info in old.get("files", {}).items():
            if old.get("attempt") != attempt:
                fs.delete_if_exists(fs.join(status_dir(stage_path, status), info["name"]))


def _commit_one(stage_path: str, table: pa.Table, *, run_id: str, key: str, require_lease: bool) -> CommitResult:
    if C.STATUS not in table.column_names:
        raise ValueError(f"commit to {stage_path}: the table has no {C.STATUS!r} column (columns: "
                         f"{table.column_names})")
    status = table.column(C.STATUS)
    bad = set(pc.unique(status).to_pylist()) - set(STATUSES)
    if bad:
        raise ValueError(f"commit to {stage_path}: {C.STATUS} values {sorted(map(str, bad))} (allowed: {STATUSES})")
    attempt = uuid.uuid4().hex[:12]
    name = part_name(key, attempt)
    files: dict[str, dict] = {}
    for s in STATUSES:
        part = table.filter(pc.equal(status, s)).drop_columns([C.STATUS])
        if part.num_rows:
            fs.write_parquet(_staged_path(stage_path, s, name), part)
            files[s] = {"name": name, "rows": part.num_rows}
    if require_lease:
        check_lease(stage_path, run_id)
    previous = read_marker(stage_path, key)
    replaces = []
    if previous is not None and previous.get("attempt") != attempt:
        replaces = [{"attempt": previous["attempt"], "files": previous["files"]}, *previous.get("replaces", [])]
    marker = {"key": key, "attempt": attempt, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "time": _now(), "rows": table.num_rows, "files": files, "replaces": replaces[:8]}
    tmp = fs.join(stage_path, STAGING_DIR, f"marker.{key}.{attempt}.json")
    fs.write_bytes(tmp, json.dumps(marker).encode())
    fs.move(tmp, marker_path(stage_path, key))  # the commit point
    roll_forward(stage_path, marker)
    return CommitResult(stage_path, key, attempt, table.num_rows, files.get(C.STATUS_OK, {}).get("rows", 0),
                        files.get(C.STATUS_QUARANTINED, {}).get("rows", 0))


COMMIT_RESULT_SCHEMA = pa.schema([("stage_path", pa.string()), ("rows", pa.int64()), ("ok", pa.int64()),
                                  ("quarantined", pa.int64())])


def commit_tables(tables: Mapping[str, pa.Table], *, run_id: str, task_key: str | None = None,
                  require_lease: bool = True) -> pa.Table:
    """Ray Data batch-function helper: atomically commit each table (the rows of one stage, with that stage's
    ``status``/``error`` columns, in that stage's output schema) under its stage folder (the mapping key,
    absolute path or URI), by the protocol in the module docstring.

    ``task_key`` names the task (a retry of the same task must pass the same key, so its commit replaces the
    earlier attempt's); default: a hash of each table's image ids. An empty table commits nothing.
    ``require_lease``: refuse (:class:`LeaseLostError`) unless ``run_id`` holds the folder's lease.
    Returns a SMALL table (``COMMIT_RESULT_SCHEMA``), one row per stage folder: stage_path, rows, ok,
    quarantined (no per-image data), so a pipeline ending here sends the driver a few bytes per task.
    """
    if not run_id:
        raise ValueError("run_id is empty: pass the StageLease's run_id")
    rows = []
    for stage_path, table in tables.items():
        if table.num_rows == 0:
            rows.append({"stage_path": stage_path, "rows": 0, "ok": 0, "quarantined": 0})
            continue
        key = task_key or task_key_of(table.column(C.IMAGE_ID).to_pylist())
        r = _commit_one(stage_path, table, run_id=run_id, key=key, require_lease=require_lease)
        rows.append({"stage_path": stage_path, "rows": r.rows, "ok": r.ok, "quarantined": r.quarantined})
    return pa.Table.from_pylist(rows, schema=COMMIT_RESULT_SCHEMA)


def commit_batch(batch: pa.Table, *, stage_path: str, run_id: str) -> pa.Table:
    """Ray Data batch function ending a single-stage pipeline: commit ``batch`` to ``stage_path``."""
    return commit_tables({stage_path: batch}, run_id=run_id)


def recommit_without(stage_path: str, key: str | None, files: Sequence[str], drop_ids: set[str], *,
                     run_id: str) -> int:
    """Rewrite the commit of task ``key`` (its ``files``, any status) without the rows ``drop_ids``: used to
    retry quarantined-for-I/O rows and to repair duplicates. A legacy file (``key`` None) becomes a new
    commit and is then deleted. Returns the number of rows dropped."""
    parts, dropped = [], 0
    for path in files:
        status = next((s for s in STATUSES if f"/{C.STATUS}={s}/" in path.replace("\\", "/")), None)
        if status is None:
            raise ValueError(f"{path}: not under a {C.STATUS}=<...> folder")
        t = fs.read_parquet(path)
        keep = pc.invert(pc.is_in(t.column(C.IMAGE_ID), value_set=pa.array(sorted(drop_ids), pa.string())))
        dropped += t.num_rows - int(pc.sum(keep.cast(pa.int64())).as_py() or 0)
        t = t.filter(keep)
        parts.append(t.append_column(C.STATUS, pa.array([status] * t.num_rows, pa.string())))
    if not dropped:
        return 0
    table = pa.concat_tables(parts, promote_options="permissive") if parts else None
    new_key = key or "legacy" + task_key_of([posixpath.basename(p) for p in files])[:10]
    if table is not None and table.num_rows:
        _commit_one(stage_path, table, run_id=run_id, key=new_key, require_lease=True)
    else:  # nothing left of this task: the marker goes (the commit point), then its files
        check_lease(stage_path, run_id)
        if key is not None:
            fs.delete_if_exists(marker_path(stage_path, key))
        for p in files:
            fs.delete_if_exists(p)
    if key is None:
        for p in files:
            fs.delete_if_exists(p)
    return dropped


# ---------------------------------------------------------------- running a stage stream to its commits

def _crash_types() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "LocalRayletDiedError", "ActorDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def bounded_data_context(ray_cfg, *, drop_failed_blocks: bool = True):
    """A copy of the current Ray Data context for a stage run: blocks whose task failed after
    ``ray.max_task_retries`` are dropped instead of failing the job (their rows then go through
    :func:`isolate_missing`), an actor pool that cannot start fails after ``ray.actor_start_timeout_s``, and
    a stream without progress for ``ray.no_progress_timeout_s`` fails (a dead actor never hangs the job)."""
    import ray

    ctx = ray.data.DataContext.get_current().copy()
    ctx.max_errored_blocks = -1 if drop_failed_blocks else 0  # 0: fail the job (no isolated pass follows)
    ctx.wait_for_min_actors_s = int(ray_cfg.actor_start_timeout_s)
    ctx.execution_no_progress_timeout_s = float(ray_cfg.no_progress_timeout_s)
    return ctx


def task_retry_args(ray_cfg) -> dict:
    """``map_batches`` keyword arguments bounding the retries of a task pool stage."""
    return {"max_retries": int(ray_cfg.max_task_retries)}


def actor_retry_args(ray_cfg) -> dict:
    """``map_batches`` keyword arguments for an actor pool: actors always come back (a pool that lost every actor
    would wait forever), but each call is retried at most ``ray.max_task_retries`` times."""
    return {"max_restarts": -1, "max_task_retries": int(ray_cfg.max_task_retries)}


class StreamStalled(TimeoutError):
    """A stage stream made no progress for ``ray.no_progress_timeout_s`` (a hung image, a dead actor Ray Data
    waits on): what it committed is kept; the rows it did not commit are run in isolated tasks or left to a
    resume."""


def consume(ds, what: str, ray_cfg) -> pa.Table:
    """Run a stream ending in commits to the end and return its small count rows (``COMMIT_RESULT_SCHEMA``);
    clear errors for an actor pool that cannot be placed (:class:`TimeoutError`) and for a stream without
    progress (:class:`StreamStalled`)."""
    import ray
    from ray.data.exceptions import ExecutionTimeoutError

    try:
        parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    except ray.exceptions.GetTimeoutError as e:  # an actor pool that cannot be placed (Ray Data's own wording)
        raise TimeoutError(
            f"{what}: an actor pool of this stage did not start within ray.actor_start_timeout_s="
            f"{ray_cfg.actor_start_timeout_s:g} s: the cluster lacks what each actor asks for (the stage's "
            f"gpus_per_actor / cpus_per_actor, times its actors); lower them or add nodes ({e})") from e
    except ExecutionTimeoutError as e:
        raise StreamStalled(
            f"{what}: the stream made no progress for ray.no_progress_timeout_s={ray_cfg.no_progress_timeout_s:g} "
            f"s (a hung image or a dead actor); its committed rows are kept ({str(e).splitlines()[0]})") from e
    return pa.concat_tables(parts) if parts else COMMIT_RESULT_SCHEMA.empty_table()


def run_commits(ds, stage_path: str, *, run_id: str, rows_per_file: int, ray_cfg) -> pa.Table:
    """Execute a stage dataset (its output rows, with status/error) by committing batches of
    ``rows_per_file`` rows to ``stage_path``; returns the small per-commit results (``COMMIT_RESULT_SCHEMA``).
    Build ``ds`` inside ``with_context(bounded_data_context(...))`` so its operators see the same limits."""
    committed = ds.map_batches(commit_batch, batch_format="pyarrow", batch_size=rows_per_file,
                               fn_kwargs={"stage_path": stage_path, "run_id": run_id}, **task_retry_args(ray_cfg))
    return consume(committed, stage_path, ray_cfg)


def with_context(ctx):
    """``with with_context(ctx):`` makes ``ctx`` the current Ray Data context: datasets created inside seal it."""
    import ray

    return ray.data.DataContext.current(ctx)


@dataclass(frozen=True)
class Isolation:
    """How to run a few rows of a stage outside its stream, one small Ray task per group of rows.

    ``process(table) -> table``: input rows -> stage output rows (status/error columns), picklable;
    ``fetch(ids) -> table``: the input rows of those ids (picklable; runs in the task, so the driver never holds
    image data); ``quarantine(ids, reason) -> table``: output rows quarantining ids (driver side, no image data);
    ``options``: the task's resources (``num_cpus``, ``num_gpus``). A stream that writes several stage folders
    (``dr-ray label``) returns ``{stage folder: table}`` from ``process`` and ``quarantine`` instead."""

    process: object
    fetch: object
    quarantine: object
    options: dict


@dataclass
class _Attempt:
    """One isolated task in flight: its generator, its rows, and its deadline (infinite until it starts)."""

    gen: object
    group: list[str]
    deadline: float = float("inf")

    @property
    def started(self) -> bool:
        return self.deadline != float("inf")


def _as_tables(out, stage_path: str) -> Mapping[str, pa.Table]:
    return out if isinstance(out, Mapping) else {stage_path: out}


def _isolated_task(fetch, process, ids: list[str], stage_path: str, run_id: str):
    """A Ray generator task: its first item says it runs (the timeout clock starts then, not while it waits for
    a CPU), its second is the commit counts."""
    yield None
    yield commit_tables(_as_tables(process(fetch(ids)), stage_path), run_id=run_id)


def isolate_missing(missing: Sequence[str], iso: Isolation, stage_path: str, *, run_id: str, max_retries: int,
                    group_size: int, timeout_s: float) -> dict[str, int]:
    """Rows that the stream did not commit (their task died ``max_retries`` + 1 times, or the stream stalled)
    run again in isolated tasks: groups of ``group_size`` first, a group whose worker dies or that runs past
    ``timeout_s`` is split in two, and a single row whose task dies ``max_retries`` + 1 times (native crash,
    OOM, os._exit) or runs past ``timeout_s`` alone is quarantined "worker died" / "timed out". A task's clock
    starts when it starts running (its first generator item), so waiting for a CPU never times an image out;
    when tasks are waiting and none starts or ends for ``timeout_s`` (the cluster cannot place
    ``iso.options``), the run fails with a TimeoutError, as that is no image's fault. An application error is
    raised (it would fail for every row).
    Returns counts."""
    import ray

    crash = _crash_types()
    task = ray.remote(_isolated_task)
    queue = [list(missing[i:i + group_size]) for i in range(0, len(missing), max(1, group_size))]
    counts = {"committed": 0, "worker_died": 0, "timed_out": 0}
    running: list[_Attempt] = []

    def failed(g: list[str], reason: str) -> None:
        if len(g) > 1:
            h = len(g) // 2
            queue.extend([g[:h], g[h:]])
            return
        log.error("%s: %s quarantined: %s", stage_path, g[0], reason)
        commit_tables(_as_tables(iso.quarantine(g, reason), stage_path), run_id=run_id,
                      task_key=f"died{task_key_of(g)}")
        counts["timed_out" if reason.startswith("timed out") else "worker_died"] += 1

    last_progress = time.monotonic()
    while queue or running:
        for g in queue:  # all at once: Ray queues what the cluster cannot run yet
            opts = {**iso.options, "max_retries": max_retries if len(g) == 1 else 0}
            running.append(_Attempt(task.options(**opts).remote(iso.fetch, iso.process, g, stage_path, run_id), g))
        queue.clear()
        next_deadline = min(min(a.deadline for a in running), last_progress + timeout_s)
        ready, _ = ray.wait([a.gen for a in running], num_returns=1,
                            timeout=max(0.0, next_deadline - time.monotonic()))
        for a in [a for a in running if any(a.gen is x for x in ready)]:
            last_progress = time.monotonic()
            try:
                ray.get(next(a.gen))
            except crash as e:
                running.remove(a)
                failed(a.group, f"worker died ({max_retries + 1} attempts; {type(e).__name__})")
                continue
            if not a.started:  # its first item: from now on it has timeout_s to finish
                a.deadline = time.monotonic() + timeout_s
            else:
                running.remove(a)
                counts["committed"] += len(a.group)
        now = time.monotonic()
        for a in [a for a in running if a.deadline <= now]:
            running.remove(a)
            ray.cancel(a.gen, force=True)
            last_progress = now
            failed(a.group, f"timed out (task ran past {timeout_s:.0f} s)")
        if running and not any(a.started for a in running) and now - last_progress > timeout_s:
            for a in running:
                ray.cancel(a.gen, force=True)
            raise TimeoutError(f"{stage_path}: {len(running)} isolated tasks did not start within {timeout_s:.0f} "
                               f"s: the cluster cannot place {iso.options}")
    return counts


__all__ = ["Isolation", "StreamStalled", "actor_retry_args", "bounded_data_context", "consume", "isolate_missing",
           "run_commits",
           "task_retry_args", "with_context", "COMMITS_DIR", "COMMIT_RESULT_SCHEMA", "LEASE_FILE", "LeaseHeldError", "LeaseLostError", "STAGING_DIR",
           "StageLease", "check_lease", "commit_batch", "commit_tables", "describe_lease", "lease_is_stale",
           "parse_part_name", "read_lease", "read_marker", "recommit_without", "roll_forward", "task_key_of"]
