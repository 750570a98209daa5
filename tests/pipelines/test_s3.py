"""Dataset and outputs on object storage: catalog, preprocessing job and resume against a local S3 (moto on
loopback), through the same s3:// URIs a cluster run uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    pytest.importorskip("moto")
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir("dr-ray-test")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


def _upload(local: Path, uri: str) -> None:
    from dr_ray.io import fs

    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.write_bytes(f"{uri}/{p.relative_to(local).as_posix()}", p.read_bytes())


def _job(env: dict, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--set", "ray.num_cpus=2",
           "--set", "preprocess.size=128", *[a for o in overrides for a in ("--set", o)]]
    # its own local Ray (no RAY_ADDRESS): the S3 endpoint and keys must be in the environment its workers start
    # with, as they are on a real cluster's nodes; the session cluster's workers were started without them
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**base, **env, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})


def test_preprocess_from_and_to_s3_with_resume(s3_env, tmp_path):
    from dr_ray.io import fs
    from dr_ray.pipelines.catalog import synthetic_sample

    local = synthetic_sample(tmp_path / "sample", n_patients=3, width=600, height=400, seed=5, quality=90,
                             bad_files=True)
    (local / ".complete").unlink()
    root, out = "s3://dr-ray-test/eyepacs", "s3://dr-ray-test/out"
    _upload(local, root)

    first = _job(s3_env, "data.dataset=eyepacs", f"data.root={root}", "data.folds=2", f"output.dir={out}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads(fs.read_text(f"{out}/preprocess/summary.json"))
    # 6 good images + 3 broken files in the catalog; the label row without a file is a label problem
    assert (summary["catalog_rows"], summary["written"], summary["quarantined"]) == (9, 6, 3)
    assert summary["label_problems"] == 1 and summary["reconciles"]
    shards = [p for p in fs.list_files(f"{out}/preprocess", recursive=True) if p.endswith(".parquet")]
    assert any("/status=ok/" in p for p in shards) and any("/status=quarantined/" in p for p in shards)
    assert "truncated JPEG" in fs.read_text(f"{out}/preprocess/quarantine.csv")

    again = _job(s3_env, "data.dataset=eyepacs", f"data.root={root}", "data.folds=2", f"output.dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    summary2 = json.loads(fs.read_text(f"{out}/preprocess/summary.json"))
    assert summary2["processed_now"] == 0 and summary2["already_done"] == 9 and summary2["duplicates"] == 0
