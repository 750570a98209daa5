"""Fault injection for tests of interruption and recovery (never set in production).

``DR_RAY_INJECT_FAULT="<stage>:<image_id>:<mode>"`` makes the stage fail when it reaches that image:
``raise`` raises :class:`InjectedFault` (a BaseException, so per-record quarantine does not catch it and
the Ray job stops, as a crash would); ``exit`` kills the worker process (``os._exit``), as a lost node, a
native crash or the OOM killer would; ``oserror`` raises a transient ``OSError`` (an S3 503, a dropped NFS
read: the stage quarantines the row as "cannot read file" and a later resume retries it); ``hang`` sleeps
for an hour (a stuck read or a deadlocked native library). The image id may be ``*`` (every image).
The driver forwards both variables to every worker of its job through the job's runtime env
(:func:`dr_ray.pipelines.runtime.init_ray`), so they also reach workers of a cluster that was already running.
With ``DR_RAY_FAULT_ONCE=<file>`` as well, the fault fires only while that file does not exist and creates it
first: a worker that dies once and is restarted (Ray's actor restart, task retry) then gets through.
"""

from __future__ import annotations

import os

FAULT_ENV = "DR_RAY_INJECT_FAULT"
FAULT_ONCE_ENV = "DR_RAY_FAULT_ONCE"
FAULT_ENVS = (FAULT_ENV, FAULT_ONCE_ENV)


class InjectedFault(BaseException):
    """Raised by :func:`maybe_inject`; deliberately not an ``Exception``."""


def maybe_inject(stage: str, image_id: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) < 3:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected <stage>:<image_id>:<raise|exit|oserror|hang>")
    want_stage, mode = parts[0], parts[-1]
    want_id = ":".join(parts[1:-1])
    if want_stage != stage or want_id not in (image_id, "*"):
        return
    once = os.environ.get(FAULT_ONCE_ENV)
    if once:
        try:
            with open(once, "x"):  # atomic: only the first worker to get here fires
                pass
        except FileExistsError:
            return
    if mode == "exit":
        os._exit(17)
    if mode == "raise":
        raise InjectedFault(f"injected fault in {stage} at {image_id}")
    if mode == "oserror":
        raise OSError(f"injected transient I/O error in {stage} at {image_id} (503 Slow Down)")
    if mode == "hang":
        import time

        time.sleep(3600)
        return
    raise ValueError(f"{FAULT_ENV}={spec!r}: mode must be raise, exit, oserror or hang, got {mode!r}")
