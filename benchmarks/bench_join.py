"""The fusion join before (Ray Data hash join that copies every column) and after (driver-side pyarrow index with
shard references): peak driver memory and bytes moved, on synthetic stage outputs.

    .venv/bin/python benchmarks/bench_join.py [--patients 1000] [--size 128] [--old-rev 4e3b3b4] [--out FILE]

1. ``dr_ray.testing.stages.write_stage_outputs``: ``2 * --patients`` images (2,000 by default) in the
   preprocess / pseudo-labels / vessels layouts, 256 rows per shard; the images are ``--size`` px random noise
   (fake big columns: values 20..79 at random, so a PNG barely compresses).
2. Each build runs in a fresh process (``--one``): the old one is ``dr_ray/pipelines/fusion_data.py`` of
   ``--old-rev`` (git show), the new one this checkout's. Peak driver memory = ru_maxrss after the build minus
   before it (Ray already started for the old one, so its start-up is not counted).
3. Bytes moved: the Parquet column chunks each build reads (compressed sizes from the shards' metadata: every
   column of the joined rows for the old build, which then sends them through the hash-shuffle actors, only the
   small columns for the new one) and the bytes it writes under ``fusion_data/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _read_bytes(stage_dirs: list[Path], columns: set[str]) -> int:
    import pyarrow.parquet as pq

    total = 0
    for d in stage_dirs:
        for f in sorted((d / "status=ok").glob("*.parquet")):
            md = pq.ParquetFile(f).metadata
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                for j in range(rg.num_columns):
                    c = rg.column(j)
                    if c.path_in_schema.split(".")[0] in columns:
                        total += c.total_compressed_size
    return total


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def one(which: str, root: Path, old_rev: str) -> dict:
    """Run one build in this process; returns its measurements."""
    from dr_ray.config import load_config
    from dr_ray.io import columns as C

    cfg = load_config(None, [f"output.dir={root}", "data.folds=2", "ray.num_cpus=2"])
    stages = ["pseudo_labels", "vessels"]
    if which == "old":
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{old_rev}:dr_ray/pipelines/fusion_data.py"],
                             check=True, capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / "old_fusion_data.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("old_fusion_data", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["old_fusion_data"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        from dr_ray.pipelines.runtime import init_ray

        init_ray(cfg.ray)
        read_cols = {C.IMAGE_ID, *C.CATALOG_COLUMNS, C.IMAGE_PNG, C.SIZE,
                     *[c for s in stages for c in mod.STAGE_COLUMNS[s]]}
    else:
        from dr_ray.pipelines import fusion_data as fd
        from dr_ray.pipelines import fusion_join as mod

        read_cols = {C.IMAGE_ID, *C.CATALOG_COLUMNS, C.CONFIG_HASH, C.SIZE,
                     *[c for s in stages for c in fd.STAGE_COLUMNS[s] if c not in fd.BULKY]}
    import dr_ray.training.fusion_data  # noqa: F401 - its torch/cv2 imports are not the join's memory
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    data = mod.build_fusion_data(cfg, stages)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"build": which, "rows_in": data.rows_in, "written": data.written, "seconds": seconds,
            "driver_peak_rss_growth_mb": (peak - base) / 1024, "driver_peak_rss_mb": peak / 1024,
            "bytes_read_mb": _read_bytes([root / "preprocess", *[root / s for s in stages]], read_cols) / 2**20,
            "bytes_written_mb": _dir_bytes(root / "fusion_data") / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--old-rev", default="4e3b3b4")
    ap.add_argument("--out", default="")
    ap.add_argument("--one", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.root, args.old_rev)))
        return 0
    from _bench_util import cpu_model

    from dr_ray.testing.stages import write_stage_outputs

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        stages_root = Path(tmp) / "stages"
        write_stage_outputs(stages_root, n_patients=args.patients, size=args.size, rows_per_file=256)
        inputs_mb = _dir_bytes(stages_root) / 2**20
        for which in ("old", "new"):
            root = Path(tmp) / which
            root.mkdir()
            for s in ("preprocess", "pseudo_labels", "vessels"):
                os.symlink(stages_root / s, root / s)
            res = subprocess.run([sys.executable, __file__, "--one", which, "--root", str(root), "--old-rev",
                                  args.old_rev], capture_output=True, text=True, timeout=1800,
                                 env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
            if res.returncode != 0:
                raise RuntimeError(f"{which} build failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    head = [f"command: `.venv/bin/python benchmarks/bench_join.py --patients {args.patients} --size {args.size}`",
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}; date: "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"inputs: {2 * args.patients} images, {args.size} px random-noise PNGs, stage folders {inputs_mb:.0f} MB; "
            f"old = dr_ray/pipelines/fusion_data.py at {args.old_rev} (Ray Data hash join, local Ray of 2 CPUs)"]
    lines = ["| build | rows in / joined | seconds | driver peak RSS growth (MB) | bytes read (MB) | "
             "bytes written (MB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['build']} | {r['rows_in']} / {r['written']} | {r['seconds']:.1f} | "
                     f"{r['driver_peak_rss_growth_mb']:.0f} | {r['bytes_read_mb']:.1f} | {r['bytes_written_mb']:.1f} |")
    text = "\n".join([*(f"- {h}" for h in head), "", *lines])
    print(text)
    if args.out:
        Path(args.out).write_text("# Fusion join: hash join copy vs driver-side index\n\n"
                                  + __doc__.split("\n\n", 1)[1] + "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
