from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dr_ray.io import columns as C
from dr_ray.pipelines.reconcile import reason_kind, summarise
from dr_ray.pipelines.runtime import blocks_of
from dr_ray.pipelines.scan import partition_status, scan_outputs


def test_blocks_of_splits_for_parallelism_and_file_size():
    t = pa.table({"i": list(range(100))})
    small = blocks_of(t, max_rows=256, min_blocks=8)  # a small run still makes >= 8 blocks
    assert len(small) == 8 and sum(b.num_rows for b in small) == 100
    big = blocks_of(t, max_rows=10, min_blocks=2)  # a large run is capped at max_rows per block
    assert [b.num_rows for b in big] == [10] * 10
    assert pa.concat_tables(big).equals(t)  # order and content kept
    assert blocks_of(t.slice(0, 0), max_rows=5, min_blocks=2) == []
    assert [b.num_rows for b in blocks_of(t.slice(0, 3), max_rows=5, min_blocks=8)] == [1, 1, 1]


def test_partition_status_and_reason_kind():
    assert partition_status("/o/preprocess/status=ok/a.parquet") == "ok"
    assert partition_status("s3://b/o/status=quarantined/x.parquet") == "quarantined"
    assert partition_status("/o/preprocess/catalog.parquet") is None
    assert reason_kind("/d/a.jpeg: truncated JPEG (no end-of-image marker)") == "truncated JPEG"
    assert reason_kind("/d/a.jpeg: file not found") == "file not found"
    assert reason_kind("s3://b/a.jpeg: cannot read file (OSError: x)") == "cannot read file"


def _shard(path, ids, error=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({C.IMAGE_ID: ids, C.PATH: [f"/x/{i}" for i in ids], C.ERROR: [error] * len(ids),
                             C.CONFIG_HASH: ["h"] * len(ids), "image_png": [b"\x89PNG"] * len(ids)}), path)


def test_scan_removes_unreadable_shards_and_summary_reconciles(tmp_path):
    _shard(tmp_path / "status=ok" / "a.parquet", ["i1", "i2"])
    _shard(tmp_path / "status=quarantined" / "b.parquet", ["i3"], "/x/i3: empty file (0 bytes)")
    good = (tmp_path / "status=ok" / "a.parquet").read_bytes()
    (tmp_path / "status=ok" / "killed.parquet").write_bytes(good[: len(good) // 2])
    (tmp_path / "config.yaml").write_text("not parquet")

    scan = scan_outputs(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in scan.removed_incomplete] == ["killed.parquet"]
    assert not (tmp_path / "status=ok" / "killed.parquet").exists()
    assert sorted(scan.ids().to_pylist()) == ["i1", "i2", "i3"]

    catalog = pa.table({C.IMAGE_ID: ["i1", "i2", "i3", "i4"]})
    s = summarise("preprocess", catalog, scan, label_problems=0, already_done=0, processed_now=4, output="o")
    assert (s.written, s.quarantined, s.duplicates, s.not_in_catalog) == (2, 1, 0, 0)
    assert not s.reconciles  # i4 is neither written nor quarantined: the counts must not reconcile
    assert s.quarantine_reasons == {"empty file": 1}

    _shard(tmp_path / "status=ok" / "dup.parquet", ["i2"])
    s2 = summarise("preprocess", catalog.slice(0, 3), scan_outputs(str(tmp_path)), label_problems=0,
                   already_done=0, processed_now=0, output="o")
    assert s2.duplicates == 1 and not s2.reconciles


def test_resolve_path_makes_paths_absolute_and_refuses_relative_ones_inside_a_ray_job_package(tmp_path,
                                                                                              monkeypatch):
    from dr_ray.pipelines.runtime import RAY_PACKAGE_MARK, resolve_path

    monkeypatch.chdir(tmp_path)
    assert resolve_path("outputs/run", "output.dir") == str(tmp_path / "outputs" / "run")
    assert resolve_path("/abs/run", "output.dir") == "/abs/run"
    assert resolve_path("s3://bucket/run", "output.dir") == "s3://bucket/run" and resolve_path("", "x") == ""
    package = tmp_path / f"{RAY_PACKAGE_MARK}0123abcd"  # where `ray job submit --working-dir .` runs a job
    package.mkdir()
    monkeypatch.chdir(package)
    with pytest.raises(ValueError, match=r"predict.run_dir='runs/gf' is relative.*absolute path or a URI"):
        resolve_path("runs/gf", "predict.run_dir")
    assert resolve_path("/data/runs/gf", "predict.run_dir") == "/data/runs/gf"
