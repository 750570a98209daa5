"""The preprocess stage on Ray: quarantine of every bad-input kind, reconciled counts, resume after an
interruption equal to a clean run row for row, refusal of mixed settings, and the README demo command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dr_ray.config import load_config
from dr_ray.imaging import decode_png
from dr_ray.io import columns as C
from dr_ray.io.catalog import assign_folds, write_catalog
from dr_ray.faults import FAULT_ENV
from dr_ray.pipelines.preprocess import run_preprocess
from dr_ray.testing import encode_jpeg, make_bad_files, make_fundus

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray]

# The reason each bad kind must be quarantined with (a fragment of the error text).
EXPECTED_REASON = {
    "zero_byte": "empty file",
    "truncated_jpeg": "truncated",
    "not_an_image": "not a decodable image",
    "tiny_1x1": "smaller than min_side",
    "grayscale": "grayscale",
    "sixteen_bit": "16-bit",
    "all_black": "no field of view",
    "decompression_bomb": "max_pixels",
    "missing": "file not found",
}


def _catalog_rows(paths: dict[str, Path]) -> pa.Table:
    rows = []
    for i, (name, path) in enumerate(sorted(paths.items())):
        rows.append({C.IMAGE_ID: f"test/{name}", C.PATIENT_ID: f"test/p{i}", C.EYE: "left", C.DATASET: "eyepacs",
                     C.PATH: str(path), C.GRADE: i % 5, C.REFERABLE: (i % 5) >= 2})
    table = pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA)
    return assign_folds(table, k=2, seed=0)


@pytest.fixture(scope="module")
def mixed_catalog(tmp_path_factory) -> Path:
    """6 good synthetic EyePACS-style JPEGs + one file of every bad kind, as a catalog Parquet."""
    root = tmp_path_factory.mktemp("mixed")
    paths: dict[str, Path] = {}
    for i in range(6):
        f = make_fundus(seed=100 + i, width=600, height=400, style="eyepacs")
        p = root / f"good_{i}.jpeg"
        p.write_bytes(encode_jpeg(f.image, quality=90))
        paths[f"good_{i}"] = p
    for kind, p in make_bad_files(root / "bad").items():
        paths[f"bad_{kind}"] = p
    catalog = root / "catalog.parquet"
    write_catalog(_catalog_rows(paths), str(catalog))
    return catalog


def _cfg(catalog: Path, out: Path, *extra: str):
    return load_config(None, [f"data.catalog={catalog}", "data.dataset=eyepacs", f"output.dir={out}",
                              "preprocess.size=128", "ray.rows_per_file=2", "ray.batch_size=2", *extra])


def _read(stage_dir: Path) -> pa.Table:
    """Every shard of a stage folder (both status partitions), sorted by image id."""
    files = sorted(str(p) for p in stage_dir.glob("status=*/*.parquet"))
    part = pads.partitioning(pa.schema([(C.STATUS, pa.string())]), flavor="hive")
    t = pads.dataset(files, format="parquet", partitioning=part, partition_base_dir=str(stage_dir)).to_table()
    return t.sort_by(C.IMAGE_ID)


def test_bad_inputs_are_quarantined_and_counts_reconcile(ray_cluster, mixed_catalog, tmp_path):
    summary = run_preprocess(_cfg(mixed_catalog, tmp_path, "preprocess.extra_maps=[canny, tophat]"))
    n_bad = len(EXPECTED_REASON)
    assert summary.catalog_rows == 6 + n_bad
    assert (summary.written, summary.quarantined, summary.duplicates) == (6, n_bad, 0)
    assert summary.reconciles
    assert sum(summary.quarantine_reasons.values()) == n_bad

    out = tmp_path / "preprocess"
    rows = {r[C.IMAGE_ID]: r for r in _read(out).to_pylist()}
    assert len(rows) == 6 + n_bad  # rows in = rows out + quarantined, every id exactly once
    for kind, fragment in EXPECTED_REASON.items():
        r = rows[f"test/bad_{kind}"]
        assert r[C.STATUS] == C.STATUS_QUARANTINED, kind
        assert fragment in r[C.ERROR], (kind, r[C.ERROR])
        assert r[C.ERROR].startswith(r[C.PATH]), "the error names the file"
        assert r[C.IMAGE_PNG] is None
    for i in range(6):
        r = rows[f"test/good_{i}"]
        assert r[C.STATUS] == C.STATUS_OK and r[C.ERROR] is None
        img = decode_png(r[C.IMAGE_PNG])
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert decode_png(r[C.CANNY_PNG]).shape == (128, 128)
        assert decode_png(r[C.TOPHAT_PNG]).shape == (128, 128)
        # the FOV circle of a 600x400 eyepacs-style frame is about as tall as the frame
        assert 0.4 * 400 < r[C.FOV_RADIUS] < 0.65 * 400
        assert abs(r[C.FOV_CX] - 300) < 20
        assert r[C.SIZE] == 128 and r[C.ORIG_WIDTH] == 600 and r[C.ORIG_HEIGHT] == 400
        assert r[C.FOLD] in (0, 1)

    # the side files say the same thing
    quarantine_csv = (out / "quarantine.csv").read_text().strip().splitlines()
    assert len(quarantine_csv) == 1 + n_bad
    saved = json.loads((out / "summary.json").read_text())
    assert saved["reconciles"] and saved["written"] == 6 and saved["quarantined"] == n_bad
    assert load_config(out / "config.yaml").preprocess.size == 128


def test_rerun_is_a_no_op_and_mixed_settings_are_refused(ray_cluster, mixed_catalog, tmp_path):
    first = run_preprocess(_cfg(mixed_catalog, tmp_path))
    files_before = sorted(p.name for p in (tmp_path / "preprocess").rglob("*.parquet"))
    again = run_preprocess(_cfg(mixed_catalog, tmp_path))
    assert again.processed_now == 0 and again.already_done == first.catalog_rows
    assert (again.written, again.quarantined, again.duplicates) == (first.written, first.quarantined, 0)
    assert sorted(p.name for p in (tmp_path / "preprocess").rglob("*.parquet")) == files_before

    saved = (tmp_path / "preprocess" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="other preprocess settings"):
        run_preprocess(_cfg(mixed_catalog, tmp_path, "preprocess.size=256"))
    with pytest.raises(FileExistsError, match="output.resume=false"):
        run_preprocess(_cfg(mixed_catalog, tmp_path, "output.resume=false"))
    # a refused run leaves the saved config describing the rows that are there
    assert (tmp_path / "preprocess" / "config.yaml").read_text() == saved
    assert load_config(tmp_path / "preprocess" / "config.yaml").preprocess.size == 128


@pytest.mark.slow
def test_interrupted_run_resumed_equals_clean_run(ray_cluster, mixed_catalog, tmp_path):
    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    run_preprocess(_cfg(mixed_catalog, clean_dir))

    # 1. A job that crashes part-way (a fault injected at the last image stops the whole Ray job),
    #    in its own process and Ray instance, as `ray job submit` would run it.
    last_id = pq.read_table(mixed_catalog, columns=[C.IMAGE_ID]).column(0).to_pylist()[-1]
    env = {**os.environ, FAULT_ENV: f"preprocess:{last_id}:raise", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--set", f"data.catalog={mixed_catalog}",
           "--set", "data.dataset=eyepacs", "--set", f"output.dir={resumed_dir}", "--set", "preprocess.size=128",
           "--set", "ray.rows_per_file=2", "--set", "ray.batch_size=2", "--set", "ray.num_cpus=2"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0, crashed.stdout[-2000:]
    assert "injected fault" in crashed.stdout + crashed.stderr
    stage = resumed_dir / "preprocess"
    partial = _read(stage).num_rows
    total = pq.read_metadata(mixed_catalog).num_rows
    assert 0 < partial < total, f"the crash should leave a partial output, found {partial}/{total} rows"

    # 2. A write killed mid-file leaves a shard without its Parquet footer: plant one.
    ok_dir = stage / "status=ok"
    ok_dir.mkdir(parents=True, exist_ok=True)
    victim = sorted(ok_dir.glob("*.parquet"))[0]
    (ok_dir / "zz_killed_write.parquet").write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])

    # 3. Rerun: only the missing images are processed, the broken shard is removed, nothing duplicates.
    summary = run_preprocess(_cfg(mixed_catalog, resumed_dir))
    assert summary.removed_incomplete == 1
    assert summary.already_done == partial and summary.processed_now == total - partial
    assert summary.reconciles and summary.duplicates == 0
    clean, resumed = _read(clean_dir / "preprocess"), _read(stage)
    assert resumed.num_rows == clean.num_rows == total
    assert resumed.select(clean.column_names).equals(clean), "resumed output differs from a clean run"
