"""Ray start-up and the cluster-side checks and paths every stage shares: joining or starting Ray (with the
single-machine Ray Train settings), ``<output.dir>/<stage>`` folders and absolute paths (never inside a Ray job's
uploaded working dir), refusing an output that is not shared storage on a multi-node cluster, the cluster's CPUs
and metadata blocks for its tasks, and the training stages' model directories and checkpoint export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pyarrow as pa

from dr_ray.config import RayConfig
from dr_ray.io import fs


# Ray Train settings for a single-machine Ray: no spot instances to watch for preemption (one actor process less
# per run), and the controller polls its workers every 0.25 s instead of 2 s (seconds of idle per tiny run).
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def use_local_ray_train_settings() -> None:
    """Put :data:`LOCAL_RAY_TRAIN_ENV` into the environment (a value already set there wins). Call before Ray
    starts: Ray Train passes these variables from the driver to its controllers."""
    for k, v in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(k, v)


_QUIET = {"on": False}


def set_quiet_console(on: bool) -> None:
    """Quiet console (``dr-ray demo`` when its output is not a terminal): Ray workers' output stays in Ray's log
    folder instead of reaching the driver's console (``log_to_driver=False``), Ray Data draws no progress bars and
    Tune prints no status tables. Errors still propagate as exceptions. Call before Ray starts."""
    _QUIET["on"] = bool(on)
    if on:
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"


def quiet_console() -> bool:
    """Whether :func:`set_quiet_console` turned the console quiet."""
    return _QUIET["on"]


def init_ray(cfg: RayConfig) -> None:
    """Join or start Ray once. Inside `ray job submit` (RAY_ADDRESS set) this joins that cluster."""
    import ray

    if ray.is_initialized():
        return
    from dr_ray.faults import FAULT_ENVS

    kwargs: dict = {"configure_logging": False}
    if quiet_console():
        kwargs["log_to_driver"] = False
    faults = {k: os.environ[k] for k in FAULT_ENVS if os.environ.get(k)}
    if faults:  # tests only: the job's workers get the fault spec even on a cluster started without it
        kwargs["runtime_env"] = {"env_vars": faults}
    if cfg.address:
        kwargs["address"] = cfg.address
    elif "RAY_ADDRESS" not in os.environ and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(**kwargs)
    if quiet_console():
        import logging

        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        # Ray Data logs each dataset's start/plan/finish at INFO on its own console handler (not the root's);
        # on a quiet console only its warnings reach the terminal, its file log under Ray's log folder keeps all
        for h in logging.getLogger("ray.data").handlers:
            if not isinstance(h, logging.FileHandler) and type(h).__name__ != "SessionFileHandler":
                h.setLevel(logging.WARNING)


def stage_dir(output_dir: str, stage: str) -> str:
    """``<output.dir>/<stage>`` as an absolute local path or a URI."""
    return fs.join(resolve_path(output_dir, "output.dir"), stage)


def blocks_of(table: pa.Table, *, max_rows: int, min_blocks: int) -> list[pa.Table]:
    """Split a (metadata) table into blocks: at most ``max_rows`` rows, at least ``min_blocks`` blocks when
    there are enough rows, so small runs still use every CPU and large runs get files of ``max_rows`` rows."""
    n = table.num_rows
    if n == 0:
        return []
    rows = max(1, min(max_rows, -(-n // max(1, min_blocks))))
    return [table.slice(i, rows) for i in range(0, n, rows)]


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
    from dr_ray.training.fit import load_training_state

    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state, history = load_training_state(d)
    model = build()
    model.load_state_dict(state["model"])
    save_model_dir(model, model_dir, config=config, train_data_hash=data_hash,
                   extra={"epoch": int(state["epoch"]), "metrics": history[-1] if history else {}}, overwrite=True)
    return model, history
