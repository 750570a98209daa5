"""A real multi-node Ray cluster on one machine, for the node-loss tests and the scale benchmark.

One head node plus worker nodes, each its own raylet, object store and worker processes
(:class:`ray.cluster_utils.Cluster`), so removing a node kills its tasks, actors and the objects only it held,
as losing a machine would. The creating process does not connect to it; jobs join it as a ``ray job submit``
job would, through ``RAY_ADDRESS`` (:meth:`LocalCluster.job_env`), so the test's own Ray session (if any) is
untouched. Nodes get small object stores (``object_store_mb``) so three fit next to a test session's cluster.

    with local_cluster(worker_cpus=(2, 2)) as c:
        proc = subprocess.Popen([...jobs/label.py...], env=c.job_env())
        ...
        c.kill_worker(0)            # the node's raylet and workers die at once (no graceful drain)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster
    workers: list = field(default_factory=list)  # ray._private.node.Node of each worker node, in order
    auth_mode: str | None = None  # RAY_AUTH_MODE the nodes were started with (their clients must use the same)

    @property
    def address(self) -> str:
        return self.cluster.address

    def job_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver process that joins this cluster: ``RAY_ADDRESS``, and the ``RAY_AUTH_MODE``
        the nodes were started with (a 2.60 client in token mode cannot reach the objects of a cluster without
        it: ``OwnerDiedError``; a client without it is refused by a token cluster: ``InvalidAuthToken``)."""
        env = {**os.environ, "RAY_ADDRESS": self.address, **extra}
        env.pop("RAY_AUTH_MODE", None)
        if self.auth_mode:
            env["RAY_AUTH_MODE"] = self.auth_mode
        return env

    def kill_worker(self, index: int) -> None:
        """Kill worker node ``index`` at once (raylet, object store, workers: a lost machine)."""
        node = self.workers[index]
        self.cluster.remove_node(node, allow_graceful=False)


@contextlib.contextmanager
def local_cluster(*, head_cpus: float = 0, worker_cpus: Sequence[float] = (2, 2), object_store_mb: int = 200,
                  worker_memory_mb: int | None = None) -> Iterator[LocalCluster]:
    """Start a head node (``head_cpus`` CPUs: 0 keeps the work on the worker nodes, as on a cluster whose head
    only coordinates) and one worker node per entry of ``worker_cpus``; shut everything down on exit."""
    from ray.cluster_utils import Cluster

    store = int(object_store_mb) * 1024 * 1024
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # the node processes inherit this process's environment
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "object_store_memory": store, "include_dashboard": False})
    try:
        out = LocalCluster(cluster, auth_mode=auth_mode)
        for cpus in worker_cpus:
            args = {"num_cpus": cpus, "object_store_memory": store}
            if worker_memory_mb:
                args["memory"] = int(worker_memory_mb) * 1024 * 1024
            out.workers.append(cluster.add_node(**args))
        cluster.wait_for_nodes()
        yield out
    finally:
        cluster.shutdown()


__all__ = ["LocalCluster", "local_cluster"]
