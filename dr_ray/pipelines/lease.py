"""One writer per stage folder: :class:`StageLease` writes ``_lease.json`` (exclusive create on local paths;
write-then-verify on object storage, where pyarrow has no conditional put) and refreshes its heartbeat from a
driver thread; a lease whose heartbeat is older than its TTL, or whose holder process is gone (same host), is taken
over by the next run, and a commit checks the lease first (:func:`check_lease`: fencing)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Sequence

from dr_ray.io import fs
from dr_ray.pipelines.stage_layout import LEASE_FILE, STAGING_DIR

log = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another live run holds the stage folder's lease."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (its heartbeat went stale): it must not commit anything more."""


def now_s() -> float:
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
    now = now_s() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > float(lease.get("ttl_s", 0)):
        return True
    return lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1)))


def describe_lease(lease: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("started", 0))))
    age = now_s() - float(lease.get("heartbeat", 0))
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
        self.started = now_s()
        self._held: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: list[str] = []

    def _content(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self.started, "heartbeat": now_s(), "ttl_s": self.ttl_s}).encode()

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


__all__ = ["LeaseHeldError", "LeaseLostError", "StageLease", "check_lease", "describe_lease", "lease_is_stale",
           "read_lease"]
