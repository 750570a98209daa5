"""``dr-ray label`` under failure, as a user's job would meet it (each run a real ``jobs/label.py`` driver process):

- on its own 3-node Ray cluster (head + 2 worker nodes, :func:`dr_ray.testing.cluster.local_cluster`): a worker
  node killed mid-run (raylet, object store and workers at once) -> the job finishes on the surviving node,
  every image exactly once in every stage folder, counts reconcile; then the driver killed mid-run (SIGKILL) ->
  the rerun processes only what the folders lack; both outputs equal a clean run's, value for value;
- on the session's cluster: an image that hangs its model actor -> the stream stalls, fails its no-progress
  timeout, and the images it did not commit run in isolated tasks: the hung one is quarantined "timed out", the
  job ends in bounded time; an image whose graph step kills its worker on every attempt -> quarantined "worker
  died" in the vessels folder only (its preprocess and lesion rows are written).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dr_ray.io import columns as C
from dr_ray.testing.stages import assert_stage_equal, read_stage

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "vessels", "pseudo_labels")
N_IMAGES = 12


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from dr_ray.testing.dataset import write_eyepacs_like_dataset

    return write_eyepacs_like_dataset(tmp_path_factory.mktemp("sample"), N_IMAGES // 2, width=384, height=256)


def _args(out: Path, sample: Path, models, threshold: float, *extra: str) -> list[str]:
    sets = [f"output.dir={out}", "data.dataset=eyepacs", f"data.root={sample}", "preprocess.size=128",
            "ray.rows_per_file=2", "ray.batch_size=2", f"vessels.model_dir={models[0]}",
            f"pseudo_labels.model_dir={models[1]}", f"vessels.threshold={threshold}", "pseudo_labels.map_size=32",
            "label.batch_size=2", "vessels.graph_batch_size=2", "label.gpus_per_actor=0", *extra]
    return [sys.executable, str(REPO / "jobs" / "label.py"), *(a for s in sets for a in ("--set", s))]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def _finish(p: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    p.wait(timeout=timeout)
    text = log.read_text()
    assert p.returncode == 0, text[-4000:]
    return text


def _commits(out: Path, stage: str = "vessels") -> int:
    return len(list((out / stage / "_commits").glob("*.json")))


def _wait_for_commits(p: subprocess.Popen, out: Path, n: int, log: Path, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while _commits(out) < n:
        assert p.poll() is None, f"the job ended before {n} commits: " + log.read_text()[-3000:]
        assert time.monotonic() - t0 < timeout, "no commits in time: " + log.read_text()[-3000:]
        time.sleep(0.2)


def _summaries(out: Path) -> dict[str, dict]:
    return {s: json.loads((out / s / "summary.json").read_text()) for s in STAGES}


def _assert_exactly_once(out: Path) -> None:
    s = _summaries(out)
    for stage in STAGES:
        assert s[stage]["reconciles"] and s[stage]["duplicates"] == 0, (stage, s[stage])
        ids = read_stage(out / stage).column(C.IMAGE_ID).to_pylist()  # every shard on disk, not a deduped view
        assert len(ids) == len(set(ids)) == N_IMAGES, (stage, len(ids), len(set(ids)))


def test_a_lost_worker_node_and_a_killed_driver_leave_the_output_of_a_clean_run(ray_cluster, sample, label_models,
                                                                                label_threshold, tmp_path):
    """``ray_cluster``: the session cluster is up (token auth on, as in the whole suite); this test's own 3-node
    cluster must be reachable all the same (its clients use the auth mode its nodes were started with)."""
    from dr_ray.testing.cluster import local_cluster

    def args(out: Path):
        return _args(out, sample, label_models, label_threshold)

    with local_cluster(head_cpus=0, worker_cpus=(2, 2)) as cluster:
        env = cluster.job_env()
        clean = tmp_path / "clean"
        _finish(_start(args(clean), env, tmp_path / "clean.log"), tmp_path / "clean.log")
        _assert_exactly_once(clean)

        # 1. A worker node dies mid-run: its actor, tasks and objects are gone; the job goes on on the other node.
        lost = tmp_path / "node_lost"
        log = tmp_path / "node_lost.log"
        p = _start(args(lost), env, log)
        _wait_for_commits(p, lost, 1, log)
        assert _commits(lost) < N_IMAGES // 2, "the run finished before the node was killed"
        cluster.kill_worker(0)
        text = _finish(p, log)
        assert "node it was running on is dead" in text  # Ray's own words: work was lost with the node
        _assert_exactly_once(lost)

        # 2. The driver is killed mid-run (Ctrl-C of a `ray job submit` does not stop a job; SIGKILL of its
        # driver does): committed rows stay, the rerun takes the dead run's lease and does only the rest.
        killed = tmp_path / "driver_killed"
        log = tmp_path / "driver_killed.log"
        p = _start(args(killed), env, log)
        _wait_for_commits(p, killed, 1, log)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        from dr_ray.pipelines.scan import scan_outputs

        done = {s: scan_outputs(str(killed / s), remove_incomplete=False).ids().to_pylist() for s in STAGES}
        assert 0 < len(done["vessels"]) < N_IMAGES, done
        log2 = tmp_path / "rerun.log"
        _finish(_start(args(killed), env, log2), log2)
        s = _summaries(killed)
        for stage in STAGES:
            assert s[stage]["already_done"] == len(set(done[stage])), (stage, s[stage], len(done[stage]))
            assert s[stage]["processed_now"] == N_IMAGES - len(set(done[stage])), (stage, s[stage])
        _assert_exactly_once(killed)

    for out in (lost, killed):
        for stage in STAGES:
            assert_stage_equal(read_stage(out / stage), read_stage(clean / stage), f"{out.name}/{stage}")
    assert sum(n or 0 for n in read_stage(clean / "vessels").column(C.N_EDGES).to_pylist()) > 0


def _session_job(ray_cluster, out: Path, sample: Path, models, threshold: float, fault: str, log: Path,
                 *extra: str) -> str:
    env = {**os.environ, "DR_RAY_INJECT_FAULT": fault}
    return _finish(_start(_args(out, sample, models, threshold, *extra), env, log), log, timeout=400)


def test_a_hung_image_is_quarantined_timed_out_in_bounded_time(ray_cluster, sample, label_models, label_threshold,
                                                               tmp_path):
    victim = "eyepacs/3_left"
    out = tmp_path / "hang"
    t0 = time.monotonic()
    text = _session_job(ray_cluster, out, sample, label_models, label_threshold, f"pseudo_labels:{victim}:hang",
                        tmp_path / "hang.log", "ray.no_progress_timeout_s=20", "label.batch_size=1")
    took = time.monotonic() - t0
    assert "made no progress" in text
    s = _summaries(out)
    assert s["preprocess"]["written"] == N_IMAGES and s["preprocess"]["quarantined"] == 0
    for stage in ("vessels", "pseudo_labels"):
        assert (s[stage]["written"], s[stage]["quarantined"]) == (N_IMAGES - 1, 1), (stage, s[stage])
        assert s[stage]["quarantine_reasons"] == {"timed out": 1}, s[stage]
        rows = {r[C.IMAGE_ID]: r for r in read_stage(out / stage).to_pylist()}
        assert rows[victim][C.STATUS] == C.STATUS_QUARANTINED and "timed out" in rows[victim][C.ERROR]
    _assert_exactly_once(out)
    assert took < 300, took  # the fault sleeps for an hour: bounded by the timeouts, not by the fault


def test_an_image_that_kills_its_graph_worker_loses_only_its_vessel_row(ray_cluster, sample, label_models,
                                                                        label_threshold, tmp_path):
    victim = "eyepacs/2_right"
    out = tmp_path / "exit"
    _session_job(ray_cluster, out, sample, label_models, label_threshold, f"vessels:{victim}:exit",
                 tmp_path / "exit.log", "ray.max_task_retries=1")
    s = _summaries(out)
    assert (s["preprocess"]["written"], s["pseudo_labels"]["written"]) == (N_IMAGES, N_IMAGES)
    assert (s["vessels"]["written"], s["vessels"]["quarantined"]) == (N_IMAGES - 1, 1)
    assert s["vessels"]["quarantine_reasons"] == {"worker died": 1}
    rows = {r[C.IMAGE_ID]: r for r in read_stage(out / "vessels").to_pylist()}
    assert "worker died (2 attempts" in rows[victim][C.ERROR]
    _assert_exactly_once(out)
