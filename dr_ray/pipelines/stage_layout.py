"""Names inside a stage folder (``<output.dir>/<stage>/``): the ``status=*/`` partitions, the ``_commits/``
markers, the ``_staging/`` area and the ``_lease.json`` file, the ``part-<key>-<attempt>.parquet`` shard names and
the task key they carry; the layout and the commit protocol over it are described in :mod:`dr_ray.pipelines.commit`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from dr_ray.io import columns as C
from dr_ray.io import fs

COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LEASE_FILE = "_lease.json"
STATUSES = (C.STATUS_OK, C.STATUS_QUARANTINED)
PART_PREFIX = "part-"


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


def staged_path(stage_path: str, status: str, name: str) -> str:
    return fs.join(stage_path, STAGING_DIR, f"{status}.{name}")


def read_marker(stage_path: str, key: str) -> dict | None:
    try:
        return json.loads(fs.read_bytes(marker_path(stage_path, key)))
    except FileNotFoundError:
        return None


__all__ = ["COMMITS_DIR", "LEASE_FILE", "STAGING_DIR", "parse_part_name", "read_marker", "task_key_of"]
