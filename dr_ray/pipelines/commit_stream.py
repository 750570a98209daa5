"""Running a stage's Ray Data stream to its commits: the bounded Ray Data context and retry arguments every stage
uses, :func:`run_commits` / :func:`consume` (a stream ending in :func:`~dr_ray.pipelines.commit.commit_batch`, with
clear errors for an unplaceable actor pool or a stalled stream), and :func:`isolate_missing`, which reruns the rows
a stream did not commit in small isolated Ray tasks and quarantines an image that kills or hangs its worker."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow as pa

from dr_ray.pipelines.commit import COMMIT_RESULT_SCHEMA, commit_batch, commit_tables
from dr_ray.pipelines.stage_layout import task_key_of

log = logging.getLogger(__name__)


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
           "run_commits", "task_retry_args", "with_context"]
