"""Preprocess job on Ray vs the single-process rate, and peak memory at N vs 10N images.

    python benchmarks/bench_preprocess_job.py [--data DIR] [--rows 2000] [--small 200] [--cpus N] [--json OUT]

1. Single-process rate: ``preprocess_record`` in a loop in this process (cv2 limited to one thread), over
   the real full-resolution EyePACS JPEGs (``../shared/data/EyePACS_kaggle_sample``; synthetic frames if absent).
2. The Ray job (``run_preprocess``) on those files replicated to ``--rows`` catalog rows (distinct ids,
   same files), in a fresh process with its own local Ray of ``--cpus`` CPUs. Efficiency =
   job rate / (single-process rate x CPUs). The job's wall time includes Ray start-up and the write.
3. Streaming memory: the same job on ``--small`` rows; the peak of the summed PSS (proportional set size:
   shared object-store pages are not double counted) of the job process and all its Ray children, sampled
   every 0.2 s, is compared between the two sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "EyePACS_kaggle_sample" / "images"


def _source_files(data: Path, tmp: Path) -> list[Path]:
    files = sorted(data.glob("*.jpeg")) if data.is_dir() else []
    if files:
        return files
    from dr_ray.testing import encode_jpeg, make_fundus

    print(f"# {data} not found: using synthetic 3888x2592 frames", flush=True)
    out = []
    for i in range(6):
        p = tmp / f"synthetic_{i}.jpeg"
        p.write_bytes(encode_jpeg(make_fundus(seed=i, width=3888, height=2592, style="eyepacs").image, 92))
        out.append(p)
    return out


def _catalog(files: list[Path], rows: int, path: Path) -> None:
    import pyarrow as pa

    from dr_ray.io import columns as C
    from dr_ray.io.catalog import write_catalog

    recs = []
    for i in range(rows):
        f = files[i % len(files)]
        recs.append({C.IMAGE_ID: f"bench/{i:06d}", C.PATIENT_ID: f"bench/{i // 2:06d}", C.EYE: None,
                     C.DATASET: "eyepacs", C.PATH: str(f), C.GRADE: None, C.REFERABLE: None, C.FOLD: 0})
    write_catalog(pa.Table.from_pylist(recs, schema=C.CATALOG_SCHEMA), str(path))


def single_process_rate(files: list[Path], size: int, seconds: float = 20.0) -> float:
    import cv2

    from dr_ray.config import load_config
    from dr_ray.config.loader import config_hash
    from dr_ray.io import columns as C
    from dr_ray.pipelines.preprocess import preprocess_record

    cv2.setNumThreads(1)
    cfg = load_config(None, [f"preprocess.size={size}"]).preprocess
    h = config_hash(cfg)
    rows = [{C.IMAGE_ID: f.stem, C.PATH: str(f)} for f in files]
    preprocess_record(rows[0], cfg, h)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for r in rows:
            assert preprocess_record(r, cfg, h)[C.STATUS] == C.STATUS_OK
            n += 1
    return n / (time.perf_counter() - t0)


def _pss_tree(pid: int) -> int:
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_job(catalog: Path, out: Path, cpus: int, size: int) -> dict:
    """The job in a fresh process (own Ray); returns wall time, summary and peak PSS of its process tree."""
    code = (
        "import json, sys, logging; sys.path.insert(0, %r); logging.basicConfig(level='WARNING');"
        "from dr_ray.config import load_config; from dr_ray.pipelines.preprocess import run_preprocess;"
        "cfg = load_config(None, sys.argv[1:]); s = run_preprocess(cfg); print('SUMMARY ' + json.dumps(s.as_dict()))"
    ) % str(REPO)
    args = [f"data.catalog={catalog}", "data.dataset=eyepacs", f"output.dir={out}", f"ray.num_cpus={cpus}",
            f"preprocess.size={size}"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _pss_tree(proc.pid))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(next(line[8:] for line in stdout.splitlines() if line.startswith("SUMMARY ")))
    return {"wall_s": wall, "peak_pss_mb": peak / 2**20, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        files = _source_files(a.data, tmp)
        single = single_process_rate(files, a.size)
        print(f"single process: {single:.2f} images/s", flush=True)
        results = {}
        for rows in (a.small, a.rows):
            cat = tmp / f"catalog_{rows}.parquet"
            _catalog(files, rows, cat)
            r = run_job(cat, tmp / f"out_{rows}", a.cpus, a.size)
            s = r["summary"]
            assert s["reconciles"] and s["written"] == rows, s
            r["rate"] = rows / r["wall_s"]  # end to end, with Ray start-up and catalog
            r["exec_rate"] = rows / s["run_seconds"]  # the Ray execution alone
            results[rows] = r
            print(f"job {rows} rows on {a.cpus} CPUs: {r['wall_s']:.1f} s wall ({r['rate']:.2f} images/s), "
                  f"execution {s['run_seconds']:.1f} s ({r['exec_rate']:.2f} images/s), "
                  f"peak PSS {r['peak_pss_mb']:.0f} MB", flush=True)
    big, small = results[a.rows], results[a.small]
    eff = big["exec_rate"] / (single * a.cpus)
    eff_wall = big["rate"] / (single * a.cpus)
    mem_growth = big["peak_pss_mb"] / small["peak_pss_mb"] - 1
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(), "files": len(files), "cpus": a.cpus, "size": a.size,
        "single_process_images_per_s": single, "job_images_per_s": big["exec_rate"], "efficiency": eff,
        "job_images_per_s_wall": big["rate"], "efficiency_wall": eff_wall,
        "rows": a.rows, "small_rows": a.small, "peak_pss_mb": big["peak_pss_mb"],
        "peak_pss_mb_small": small["peak_pss_mb"], "peak_growth": mem_growth,
    }
    print(f"| {report['date']} | {a.cpus} | {single:.2f} | {big['exec_rate']:.2f} ({big['rate']:.2f} wall) | "
          f"{eff:.0%} ({eff_wall:.0%} wall) | "
          f"{small['peak_pss_mb']:.0f} MB @ {a.small} | {big['peak_pss_mb']:.0f} MB @ {a.rows} | {mem_growth:+.0%} |")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
