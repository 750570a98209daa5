"""Exactly once, whatever dies (issue 11, section 3): one writer per stage folder, attempt-independent commits,
scans that delete only what is proven incomplete, catalog changes refused, transient I/O retried, and an image
that kills its worker quarantined instead of retried forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from dr_ray.io import columns as C
from dr_ray.pipelines import commit as K
from dr_ray.pipelines.commit_stream import Isolation, isolate_missing
from dr_ray.pipelines.lease import LeaseHeldError, LeaseLostError, StageLease, read_lease
from dr_ray.pipelines.reconcile import check_catalog
from dr_ray.pipelines.scan import read_committed, scan_outputs
from dr_ray.pipelines.stage_layout import LEASE_FILE
from dr_ray.testing.stages import read_stage

REPO = Path(__file__).resolve().parents[2]


def _rows(ids, status, error=None):
    return pa.table({C.IMAGE_ID: ids, C.STATUS: [status] * len(ids), C.ERROR: pa.array([error] * len(ids), pa.string()),
                     C.CONFIG_HASH: ["h"] * len(ids), C.PATH: [f"/x/{i}" for i in ids]})


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    stage = str(tmp_path / "pre")
    with StageLease([stage]) as first:
        with pytest.raises(LeaseHeldError, match=rf"host {os.uname().nodename} pid {os.getpid()}, started"):
            with StageLease([stage]):
                pass
        assert read_lease(stage)["run_id"] == first.run_id
    assert read_lease(stage) is None  # released on exit

    # a crashed run: its lease file stays, its process is gone -> the successor takes over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    lease = {"run_id": "crashed", "host": os.uname().nodename, "pid": pid, "started": 0, "heartbeat": 1e12,
             "ttl_s": 1e9}
    (tmp_path / "pre" / LEASE_FILE).write_text(json.dumps(lease))
    with StageLease([stage]) as succ:
        assert read_lease(stage)["run_id"] == succ.run_id
        # the crashed run (if it were a zombie) can no longer commit: fencing
        with pytest.raises(LeaseLostError, match="does not hold the lease"):
            K.commit_tables({stage: _rows(["a"], C.STATUS_OK)}, run_id="crashed")
    # another host's lease with a fresh heartbeat is honoured; one with a stale heartbeat is taken over
    lease.update(host="elsewhere", heartbeat=__import__("time").time())
    (tmp_path / "pre" / LEASE_FILE).write_text(json.dumps(lease))
    with pytest.raises(LeaseHeldError, match="host elsewhere"):
        StageLease([stage]).__enter__()
    lease.update(heartbeat=0.0)
    (tmp_path / "pre" / LEASE_FILE).write_text(json.dumps(lease))
    with StageLease([stage]):
        pass


def test_a_retry_that_changes_a_rows_status_leaves_it_in_one_partition_even_if_it_dies_mid_commit(
        tmp_path, monkeypatch):
    stage = str(tmp_path / "pre")
    with StageLease([stage]) as lease:
        # attempt 1: a transient error quarantined b
        K.commit_tables({stage: pa.concat_tables([_rows(["a"], C.STATUS_OK),
                                                  _rows(["b"], C.STATUS_QUARANTINED, "/x/b: cannot read file")])},
                        run_id=lease.run_id, task_key="t1")
        # attempt 2 of the same task (its worker died after attempt 1 committed): b is ok now; the worker dies
        # again right after the commit point (marker written, files not yet renamed into place)
        def die(*a, **k):
            raise SystemExit("worker died")

        monkeypatch.setattr(K, "roll_forward", die)
        with pytest.raises(SystemExit):
            K.commit_tables({stage: _rows(["a", "b"], C.STATUS_OK)}, run_id=lease.run_id, task_key="t1")
        monkeypatch.undo()
        # a reader during the crash window sees no row of the new attempt next to one of the old
        seen = read_committed(stage, [C.IMAGE_ID], status=None)
        assert seen.num_rows == len(set(seen.column(C.IMAGE_ID).to_pylist()))
        # the next scan (the successor's start) rolls the commit forward
        scan = scan_outputs(stage, run_id=lease.run_id)
    assert scan.duplicates == 0
    u = scan.unique().sort_by(C.IMAGE_ID)
    assert u.column(C.STATUS).to_pylist() == [C.STATUS_OK, C.STATUS_OK]
    # plain tools agree: b is only in status=ok
    plain = read_stage(tmp_path / "pre")
    assert sorted(zip(plain.column(C.IMAGE_ID).to_pylist(), plain.column(C.STATUS).to_pylist())) == [
        ("a", "ok"), ("b", "ok")]
    assert not list((tmp_path / "pre" / "status=quarantined").glob("*.parquet"))


def test_scan_keeps_a_shard_on_a_transient_error_and_deletes_only_one_proven_incomplete(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    stage = tmp_path / "pre"
    with StageLease([str(stage)]) as lease:
        K.commit_tables({str(stage): _rows(["a", "b"], C.STATUS_OK)}, run_id=lease.run_id)
        shard = next((stage / "status=ok").glob("part-*.parquet"))
        real = pq.ParquetFile
        calls = {"n": 0}

        def flaky(*a, **k):  # an S3 503 on the first two reads
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OSError("AWS Error SLOW_DOWN during GetObject: 503")
            return real(*a, **k)

        monkeypatch.setattr(pq, "ParquetFile", flaky)
        monkeypatch.setattr("dr_ray.io.fs.time.sleep", lambda s: None)
        scan = scan_outputs(str(stage), run_id=lease.run_id)
        monkeypatch.undo()
        assert calls["n"] > 2 and shard.exists() and scan.removed_incomplete == []
        assert sorted(scan.ids().to_pylist()) == ["a", "b"]

        # a legacy shard that parses as no Parquet file (a killed write): proven incomplete, deleted
        good = shard.read_bytes()
        (stage / "status=ok" / "killed.parquet").write_bytes(good[: len(good) // 2])
        scan = scan_outputs(str(stage), run_id=lease.run_id)
        assert [Path(p).name for p in scan.removed_incomplete] == ["killed.parquet"] and shard.exists()
    # and never while another live run holds the lease
    (stage / "status=ok" / "killed.parquet").write_bytes(good[: len(good) // 2])
    with StageLease([str(stage)]):
        with pytest.raises(LeaseHeldError):
            scan_outputs(str(stage), run_id="someone-else")
    assert (stage / "status=ok" / "killed.parquet").exists()


def test_a_changed_catalog_is_refused_and_added_rows_are_accepted():
    old = pa.table({C.IMAGE_ID: ["a", "b"], C.PATIENT_ID: ["p1", "p2"], C.GRADE: pa.array([0, 2], pa.int8()),
                    C.FOLD: pa.array([0, 1], pa.int8()), C.PATH: ["/a", "/b"]})
    check_catalog(old, old, "out")
    added = pa.concat_tables([old, pa.table({C.IMAGE_ID: ["c"], C.PATIENT_ID: ["p3"],
                                             C.GRADE: pa.array([1], pa.int8()), C.FOLD: pa.array([0], pa.int8()),
                                             C.PATH: ["/c"]})])
    check_catalog(old, added, "out")  # new ids only: accepted
    refolded = old.set_column(3, C.FOLD, pa.array([1, 1], pa.int8()))  # e.g. data.seed changed
    with pytest.raises(ValueError, match=r"1 of 2 rows written earlier disagree.*a: fold 0 -> 1"):
        check_catalog(old, refolded, "out")
    regraded = old.set_column(2, C.GRADE, pa.array([0, 3], pa.int8()))
    with pytest.raises(ValueError, match="b: grade 2 -> 3"):
        check_catalog(old, regraded, "out")


def _job(out: Path, catalog: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--set", f"data.catalog={catalog}",
           "--set", "data.dataset=eyepacs", "--set", f"output.dir={out}", "--set", "preprocess.size=64",
           "--set", "ray.rows_per_file=2", "--set", "ray.batch_size=2", "--set", "ray.num_cpus=2",
           "--set", "ray.max_task_retries=1"]
    return subprocess.run(cmd, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **env},
                          capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    from dr_ray.io.catalog import assign_folds, write_catalog
    from dr_ray.testing import encode_jpeg, make_fundus

    root = tmp_path_factory.mktemp("eo")
    rows = []
    for i in range(5):
        p = root / f"g{i}.jpeg"
        p.write_bytes(encode_jpeg(make_fundus(seed=i, width=300, height=200, style="eyepacs").image, quality=90))
        rows.append({C.IMAGE_ID: f"t/g{i}", C.PATIENT_ID: f"t/p{i}", C.EYE: "left", C.DATASET: "eyepacs",
                     C.PATH: str(p), C.GRADE: i % 5, C.REFERABLE: i % 5 >= 2})
    cat = root / "catalog.parquet"
    write_catalog(assign_folds(pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA), k=2, seed=0), str(cat))
    return cat


@pytest.mark.slow
@pytest.mark.ray
def test_an_image_that_kills_its_worker_is_quarantined_after_bounded_retries(small_catalog, tmp_path):
    """os._exit on every attempt at t/g2: Ray Data's default would retry forever; the stage drops the block
    after ray.max_task_retries, reruns its rows in isolated tasks and quarantines the killer "worker died"."""
    res = _job(tmp_path, small_catalog, {"DR_RAY_INJECT_FAULT": "preprocess:t/g2:exit"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "preprocess" / "summary.json").read_text())
    assert (s["written"], s["quarantined"], s["duplicates"], s["reconciles"]) == (4, 1, 0, True)
    assert s["quarantine_reasons"] == {"worker died": 1}
    rows = {r[C.IMAGE_ID]: r for r in read_stage(tmp_path / "preprocess").to_pylist()}
    assert rows["t/g2"][C.STATUS] == C.STATUS_QUARANTINED and "worker died (2 attempts" in rows["t/g2"][C.ERROR]


@pytest.mark.slow
@pytest.mark.ray
def test_a_transient_read_error_is_retried_by_the_next_run(small_catalog, tmp_path):
    once = tmp_path / "fired"
    res = _job(tmp_path, small_catalog, {"DR_RAY_INJECT_FAULT": "preprocess:t/g1:oserror",
                                         "DR_RAY_FAULT_ONCE": str(once)})
    assert res.returncode == 0 and once.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "preprocess" / "summary.json").read_text())
    assert (s["written"], s["quarantined"], s["quarantine_reasons"]) == (4, 1, {"cannot read file": 1})
    again = _job(tmp_path, small_catalog, {})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    s2 = json.loads((tmp_path / "preprocess" / "summary.json").read_text())
    assert (s2["written"], s2["quarantined"], s2["retried"], s2["processed_now"], s2["duplicates"]) == (5, 0, 1, 1, 0)
    ids = read_stage(tmp_path / "preprocess").column(C.IMAGE_ID).to_pylist()
    assert sorted(ids) == [f"t/g{i}" for i in range(5)]  # exactly once, in status=ok only



@pytest.mark.ray
def test_isolated_tasks_time_from_their_start_and_an_unplaceable_one_fails_clearly(ray_cluster, tmp_path):
    """Four 1-CPU tasks of ~3 s on the 2-CPU session cluster with a 5 s timeout: the two that wait for a CPU
    would time out if their clocks started at submission; they do not. A task the cluster can never place fails
    the run with a TimeoutError naming its resources instead of quarantining images."""
    def fetch(ids):  # local functions: Ray pickles them by value (the test module is not importable in workers)
        import pyarrow as pa

        return pa.table({"image_id": list(ids), "status": ["ok"] * len(ids)})

    def slow(table):
        import time

        time.sleep(3.0)
        return table

    with StageLease([str(tmp_path / "s")]) as lease:
        iso = Isolation(process=slow, fetch=fetch, options={"num_cpus": 1},
                        quarantine=lambda ids, reason: _rows(list(ids), C.STATUS_QUARANTINED, reason))
        counts = isolate_missing([f"i{k}" for k in range(4)], iso, str(tmp_path / "s"), run_id=lease.run_id,
                                 max_retries=0, group_size=1, timeout_s=5.0)
        assert counts == {"committed": 4, "worker_died": 0, "timed_out": 0}
        assert sorted(read_committed(str(tmp_path / "s"), [C.IMAGE_ID]).column(C.IMAGE_ID).to_pylist()) == [
            f"i{k}" for k in range(4)]
        big = Isolation(process=fetch, fetch=fetch, quarantine=iso.quarantine, options={"num_cpus": 64})
        with pytest.raises(TimeoutError, match="did not start within 3 s.*num_cpus.: 64"):
            isolate_missing(["j0"], big, str(tmp_path / "s"), run_id=lease.run_id, max_retries=0, group_size=1,
                            timeout_s=3.0)
