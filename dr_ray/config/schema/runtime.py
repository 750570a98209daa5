"""Sections every stage reads: ``ray`` (:class:`RayConfig`: the cluster to use, task batch sizes, retries and
timeouts of the Ray Data streams) and ``output`` (:class:`OutputConfig`: the output folder, resume, leases).
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_ray.config.schema.common import check


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start a local Ray (or join RAY_ADDRESS / the job's cluster); "auto" = join a running one
    num_cpus: int = 0  # local cluster only: CPUs to use (0 = all)
    batch_size: int = 8  # images per map_batches call; 8 x 512 px keeps a task at ~50 MB and ~0.3 s
    rows_per_file: int = 256  # rows per output Parquet file (~256 x 300 KB = ~75 MB at 512 px)
    cpus_per_task: float = 1.0  # CPU slots per preprocess task (decode + CLAHE are single-threaded)
    max_task_retries: int = 2  # retries of a task/actor call whose worker died; then its rows run one by one and
    # an image that kills its worker again is quarantined "worker died" (Ray Data's default retries forever)
    actor_start_timeout_s: float = 600.0  # an actor pool that cannot be placed (e.g. GPUs the cluster lacks) fails
    no_progress_timeout_s: float = 1800.0  # a stage whose stream makes no progress this long fails (never hangs)

    def __post_init__(self) -> None:
        check(self.num_cpus >= 0, "ray.num_cpus", self.num_cpus, "must be >= 0")
        check(1 <= self.batch_size <= 4096, "ray.batch_size", self.batch_size, "must be in 1..4096")
        check(1 <= self.rows_per_file <= 1_000_000, "ray.rows_per_file", self.rows_per_file, "must be in 1..1e6")
        check(0.0 < self.cpus_per_task <= 64, "ray.cpus_per_task", self.cpus_per_task, "must be in (0, 64]")
        check(0 <= self.max_task_retries <= 100, "ray.max_task_retries", self.max_task_retries, "must be in 0..100")
        check(self.actor_start_timeout_s > 0, "ray.actor_start_timeout_s", self.actor_start_timeout_s, "must be > 0")
        check(self.no_progress_timeout_s > 0, "ray.no_progress_timeout_s", self.no_progress_timeout_s, "must be > 0")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "outputs/demo"  # local path or s3:// URI; each stage writes a sub-folder
    resume: bool = True  # skip images already written or quarantined by an earlier run
    lease_ttl_s: float = 120.0  # a run's lease on a stage folder expires this long after its last heartbeat

    def __post_init__(self) -> None:
        check(bool(self.dir), "output.dir", self.dir, "must not be empty")
        check(self.lease_ttl_s >= 1, "output.lease_ttl_s", self.lease_ttl_s, "must be >= 1")

