"""``dr-ray label`` at scale on a real multi-node Ray cluster on this machine: images/s, peak memory of the driver
and of the whole cluster, object-store spilling, at ``--small`` and at ``--rows`` catalog rows (10x), one run.

    python benchmarks/bench_label_scale.py --rows 20000 --small 2000 --out docs/bench_label_scale.md

- Cluster: a head node with 0 CPUs (it only coordinates, as on a real cluster) and 2 worker nodes with
  ``--node-cpus`` logical CPUs each, every node its own raylet, object store (``--store-mb``) and workers
  (:func:`dr_ray.testing.cluster.local_cluster`); a fresh cluster for each size, so both start equal.
- Data: ``--frames`` distinct small synthetic EyePACS-style JPEGs (``--width`` x ``--height``) behind every
  catalog row (distinct image ids and patients, the same files): the cost per row is what scales, not the
  pixels. Models: a tiny vessel U-Net and a tiny 4-lesion U-Net (mobilenetv3_small_100, random weights, input
  ``--size`` px); the vessel threshold sits inside the random model's output band, so graphs are not empty.
- The job is the user's: ``python jobs/label.py --set ...`` as a separate driver process joining the cluster
  through ``RAY_ADDRESS`` (what ``ray job submit`` does). Memory: PSS (shared pages counted once) summed every
  0.5 s, for the driver process and for every other process of the cluster (GCS, raylets, object stores,
  workers); peaks reported. Spilling: ``ray memory --stats-only``'s spilled/restored totals after the run.
- Pass/fail: every stage writes each row exactly once and reconciles; peak memory (driver, cluster) at ``--rows``
  within 20% of the peak at ``--small``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("preprocess", "vessels", "pseudo_labels")
GROWTH_LIMIT = 0.20


def make_inputs(tmp: Path, frames: int, width: int, height: int, size: int, *, tiny: bool = True) -> dict:
    """JPEG frames, the two models (``tiny``: mobilenetv3_small_100 U-Nets; else the defaults, vessel_unet on
    resnet18 and lesion_unet on resnet34; random weights either way), and a vessel threshold inside the random
    vessel model's output band (its 85th percentile on a synthetic fundus: ~15% of pixels pass)."""
    import numpy as np
    import torch

    from dr_ray.models import create_model, load_model_dir, save_model_dir
    from dr_ray.models.tiny import tiny_label_models
    from dr_ray.testing import encode_jpeg, make_fundus
    from dr_ray.training import predict_image

    files = []
    for i in range(frames):
        p = tmp / "frames" / f"f{i:03d}.jpeg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_jpeg(make_fundus(seed=i, width=width, height=height, style="eyepacs").image, 90))
        files.append(p)
    if tiny:
        vd, ld = tiny_label_models(tmp, lesion_input_size=size)
    else:
        torch.manual_seed(0)
        v = create_model("vessel_unet")
        torch.manual_seed(1)
        les = create_model("lesion_unet", input_size=size)
        vd = save_model_dir(v.eval(), tmp / "vessel_model", config={}, train_data_hash=None)
        ld = save_model_dir(les.eval(), tmp / "lesion_model", config={}, train_data_hash=None)
    model, _ = load_model_dir(vd)
    prob = predict_image(model, make_fundus(0, size, size).image, mean=model.spec.mean, std=model.spec.std)
    return {"files": files, "vessel": vd, "lesion": ld, "threshold": round(float(np.percentile(prob, 85)), 4)}


def write_catalog_rows(files: list[Path], rows: int, path: Path) -> None:
    import pyarrow as pa

    from dr_ray.io import columns as C
    from dr_ray.io.catalog import write_catalog

    recs = [{C.IMAGE_ID: f"scale/{i:06d}", C.PATIENT_ID: f"scale/p{i // 2:06d}",
             C.EYE: "left" if i % 2 == 0 else "right", C.DATASET: "eyepacs", C.PATH: str(files[i % len(files)]),
             C.GRADE: i % 5, C.REFERABLE: i % 5 >= 2, C.FOLD: (i // 2) % 5} for i in range(rows)]
    write_catalog(pa.Table.from_pylist(recs, schema=C.CATALOG_SCHEMA), str(path))


def _pss(pids: set[int], kinds: dict | None = None) -> int:
    """Summed PSS of ``pids``; ``kinds`` (if given) gets {process title: [count, PSS]} (Ray titles its workers
    ``ray::<task or actor>``, idle ones ``ray::IDLE``)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            pss = proc.memory_full_info().pss
            if kinds is not None:
                cmd = proc.cmdline()
                title = (cmd[0] if cmd and cmd[0].startswith("ray::") else proc.name())[:48]
                k = kinds.setdefault(title, [0, 0])
                k[0], k[1] = k[0] + 1, k[1] + pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
    return total


def _tree(pid: int) -> set[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def spill_stats(address: str) -> dict:
    """Spilled / restored MiB and objects of the whole cluster (``ray memory --stats-only``)."""
    out = subprocess.run([str(Path(sys.executable).with_name("ray")), "memory", "--stats-only", "--address", address], capture_output=True, text=True,
                         env={**os.environ, "RAY_ADDRESS": address}, timeout=120)
    text = out.stdout + out.stderr
    got = {}
    for kind in ("Spilled", "Restored"):
        m = re.search(rf"{kind} (\d+) MiB, (\d+) objects", text)
        got[kind.lower() + "_mib"] = int(m.group(1)) if m else None
        got[kind.lower() + "_objects"] = int(m.group(2)) if m else None
    if out.returncode == 0 and "Aggregate object store stats" in text:  # nothing spilled: no such line
        got = {k: 0 if v is None else v for k, v in got.items()}
    else:
        raise RuntimeError(f"ray memory --stats-only failed (rc {out.returncode}): {text[-600:]}")
    return got


def run_size(rows: int, inputs: dict, tmp: Path, a) -> dict:
    from dr_ray.testing.cluster import local_cluster

    cat = tmp / f"catalog_{rows}.parquet"
    write_catalog_rows(inputs["files"], rows, cat)
    out = tmp / f"out_{rows}"
    sets = [f"output.dir={out}", "data.dataset=eyepacs", f"data.catalog={cat}", f"preprocess.size={a.size}",
            "preprocess.min_side=64", f"vessels.model_dir={inputs['vessel']}",
            f"pseudo_labels.model_dir={inputs['lesion']}", f"vessels.threshold={inputs['threshold']}",
            f"vessels.input_size={a.size}", "pseudo_labels.map_size=16", "label.gpus_per_actor=0",
            f"ray.batch_size={a.batch}", f"label.batch_size={a.batch}", f"vessels.graph_batch_size={a.batch}",
            f"ray.rows_per_file={a.rows_per_file}"]
    args = [sys.executable, str(REPO / "jobs" / "label.py"), *(x for s in sets for x in ("--set", s))]
    with local_cluster(head_cpus=0, worker_cpus=(a.node_cpus, a.node_cpus), object_store_mb=a.store_mb) as c:
        me = os.getpid()
        log = (tmp / f"job_{rows}.log").open("w")
        env = c.job_env(RAY_DATA_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        peak = {"driver": 0, "cluster": 0, "total": 0, "cluster_kinds": {}}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                driver = _tree(proc.pid)
                cluster = _tree(me) - driver - {me}
                kinds: dict = {}
                d, cl = _pss(driver), _pss(cluster, kinds)
                peak["driver"] = max(peak["driver"], d)
                if cl > peak["cluster"]:
                    peak["cluster"], peak["cluster_kinds"] = cl, kinds
                peak["total"] = max(peak["total"], d + cl)
                stop.wait(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        log.close()
        if rc != 0:
            raise RuntimeError(f"label job failed (rc {rc}); log: {tmp / f'job_{rows}.log'}\n"
                               + (tmp / f"job_{rows}.log").read_text()[-3000:])
        spill = spill_stats(c.address)
    summaries = {s: json.loads((out / s / "summary.json").read_text()) for s in STAGES}
    for s, d in summaries.items():
        assert d["reconciles"] and d["duplicates"] == 0 and d["written"] == rows, (s, d)
    run_s = summaries["preprocess"]["run_seconds"]
    return {"rows": rows, "wall_s": wall, "run_s": run_s, "images_per_s": rows / run_s,
            "images_per_s_wall": rows / wall, "peak_driver_mb": peak["driver"] / 2**20,
            "peak_cluster_mb": peak["cluster"] / 2**20, "peak_total_mb": peak["total"] / 2**20, **spill,
            "peak_cluster_processes": {k: [n, round(v / 2**20)] for k, (n, v) in
                                       sorted(peak["cluster_kinds"].items(), key=lambda kv: -kv[1][1])}}


def main() -> None:
    from _bench_util import cpu_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    # 125: both sizes get blocks (and commits) of the same size (blocks_of: <= rows_per_file rows, >= 4 x CPUs
    # blocks; 2,000 rows / 16 blocks = 125), so the two runs differ in the number of rows only
    ap.add_argument("--rows-per-file", type=int, default=125)
    ap.add_argument("--node-cpus", type=float, default=2)
    ap.add_argument("--store-mb", type=int, default=300)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    a = ap.parse_args()

    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(dir=a.work) as tmp_s:
        tmp = Path(tmp_s)
        inputs = make_inputs(tmp, a.frames, a.width, a.height, a.size)
        results = []
        for rows in (a.small, a.rows):
            r = run_size(rows, inputs, tmp, a)
            results.append(r)
            print(json.dumps(r), flush=True)
    small, big = results
    growth = {k: big[k] / small[k] - 1 for k in ("peak_driver_mb", "peak_cluster_mb", "peak_total_mb")}
    ok = all(g <= GROWTH_LIMIT for g in growth.values())
    lines = [
        "# `dr-ray label` at scale on a 3-node Ray cluster (one machine)",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; Ray "
        f"{__import__('ray').__version__}; cluster: head (0 CPUs) + 2 worker nodes x {a.node_cpus:g} logical CPUs, "
        f"object store {a.store_mb} MB per node (`dr_ray.testing.cluster.local_cluster`)",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- data: {a.frames} synthetic {a.width}x{a.height} JPEG frames behind every row; preprocess.size {a.size}; "
        f"tiny random-weight vessel + lesion U-Nets (mobilenetv3_small_100); batch {a.batch}, "
        f"rows_per_file {a.rows_per_file}",
        "- the job: `python jobs/label.py` as its own driver process joining the cluster (as `ray job submit`)",
        f"- target: peak memory at {a.rows} rows within {GROWTH_LIMIT:.0%} of the peak at {a.small} rows "
        f"(driver and cluster): **{'met' if ok else 'NOT met'}**",
        "",
        "| rows | execution s | images/s (execution) | images/s (wall, incl. start-up) | peak PSS driver MB | "
        "peak PSS cluster MB | peak PSS total MB | spilled MiB (objects) | restored MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['rows']} | {r['run_s']:.0f} | {r['images_per_s']:.1f} | {r['images_per_s_wall']:.1f} | "
                     f"{r['peak_driver_mb']:.0f} | {r['peak_cluster_mb']:.0f} | {r['peak_total_mb']:.0f} | "
                     f"{r['spilled_mib']} ({r['spilled_objects']}) | {r['restored_mib']} |")
    for r in results:
        lines.append("")
        lines.append(f"Processes of the cluster at its peak, {r['rows']} rows (title: count, PSS MB): "
                     + "; ".join(f"{k} {n}, {mb}" for k, (n, mb) in r["peak_cluster_processes"].items()))
    lines += ["", f"Growth of the peaks for {a.rows // a.small}x the rows: driver {growth['peak_driver_mb']:+.1%}, "
              f"cluster {growth['peak_cluster_mb']:+.1%}, total {growth['peak_total_mb']:+.1%}. Every stage "
              f"folder holds each image exactly once (summary: written = rows, duplicates 0, reconciles)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
