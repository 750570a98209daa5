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
forward by the next scan (:func:`roll_forward`). Readers that go through :func:`dr_ray.pipelines.scan.
read_committed` see exactly the files named by markers (plus legacy files without the ``part-<key>-<attempt>``
name, written before this layout), deduplicated by image id. Plain tools (``pyarrow.dataset`` /
``ray.data.read_parquet`` on ``status=ok``) see the same rows once the stage has finished (its last scan rolls
every commit forward and repairs duplicates); during a run they may briefly see a task's old and new attempt.

The task key is a hash of the rows' image ids, so a retried task (same input block) overwrites its own commit
instead of adding a second copy. The lease (one writer per stage folder, step 2's fencing) is
:class:`dr_ray.pipelines.lease.StageLease`; the folder's names are in :mod:`dr_ray.pipelines.stage_layout`, and
running a stage's stream to its commits is :mod:`dr_ray.pipelines.commit_stream`.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.lease import check_lease, now_s
from dr_ray.pipelines.stage_layout import (
    STAGING_DIR,
    STATUSES,
    marker_path,
    part_name,
    read_marker,
    staged_path,
    status_dir,
    task_key_of,
)


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
        staged = staged_path(stage_path, status, info["name"])
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
            fs.write_parquet(staged_path(stage_path, s, name), part)
            files[s] = {"name": name, "rows": part.num_rows}
    if require_lease:
        check_lease(stage_path, run_id)
    previous = read_marker(stage_path, key)
    replaces = []
    if previous is not None and previous.get("attempt") != attempt:
        replaces = [{"attempt": previous["attempt"], "files": previous["files"]}, *previous.get("replaces", [])]
    marker = {"key": key, "attempt": attempt, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "time": now_s(), "rows": table.num_rows, "files": files, "replaces": replaces[:8]}
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


__all__ = ["COMMIT_RESULT_SCHEMA", "commit_batch", "commit_tables", "recommit_without", "roll_forward"]
