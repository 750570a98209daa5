"""``dr-ray label`` throughput on one node with both models on its GPU, against the bare forward of the same two
models at the same batch size, in one run (gpu_check.sh's label step).

    python benchmarks/bench_label_gpu.py --size 512 --rows 3000 --batch 32 --actor-cpus 8 --json OUT

- Data: ``--frames`` synthetic EyePACS-style JPEGs of ``--width`` x ``--height`` (EyePACS photos are 3-5k px
  wide; the reduced-DCT decode makes the frame size matter) behind ``--rows`` catalog rows.
- Models: the defaults, random weights (the cost does not depend on them): vessel_unet (resnet18) and
  lesion_unet (resnet34, 4 sigmoid maps), input ``--size`` px; the vessel threshold passes ~15% of pixels (a
  random model's graph is noise-like: the graph step's cost here is an upper bound, not a fundus's).
- Bare forward: :func:`bench_model_actor.bare_forward_rate` of each model (device-resident batch, bf16 +
  channels_last on GPU); both models per image = 1 / (1/vessel + 1/lesion).
- The stream: :func:`dr_ray.pipelines.label.run_label` on a local Ray of every CPU, one ``LabelModels`` actor
  with 1 GPU (0 without CUDA) and ``--actor-cpus`` CPUs. Rate = rows / the run's execution seconds (actor
  start-up included, so use >= 2,000 rows). Ratio = stream rate / bare rate of both models (target >= 0.8 once
  the CPUs keep up; the CPU-side ceiling is ``cpus / CPU-seconds per image`` of bench_label_cpu.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    from bench_label_scale import make_inputs, write_catalog_rows
    from bench_model_actor import bare_forward_rate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--height", type=int, default=2048)
    ap.add_argument("--actor-cpus", type=float, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU dry run)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import torch

    from dr_ray.config import load_config
    from dr_ray.pipelines.label import run_label

    gpus = 1 if torch.cuda.is_available() else 0
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        inputs = make_inputs(tmp, a.frames, a.width, a.height, a.size, tiny=a.tiny)
        bare_v, device = bare_forward_rate(inputs["vessel"], a.batch, a.size)
        bare_l, _ = bare_forward_rate(inputs["lesion"], a.batch, a.size)
        bare = 1.0 / (1.0 / bare_v + 1.0 / bare_l)
        print(f"bare forward on {device}, batch {a.batch}, {a.size} px: vessel {bare_v:.1f}, lesion {bare_l:.1f}, "
              f"both {bare:.1f} images/s", flush=True)
        cat = tmp / "catalog.parquet"
        write_catalog_rows(inputs["files"], a.rows, cat)
        cfg = load_config(None, [
            f"output.dir={tmp / 'out'}", "data.dataset=eyepacs", f"data.catalog={cat}", f"preprocess.size={a.size}",
            f"vessels.model_dir={inputs['vessel']}", f"pseudo_labels.model_dir={inputs['lesion']}",
            f"vessels.threshold={inputs['threshold']}", f"label.gpus_per_actor={gpus}",
            f"label.cpus_per_actor={a.actor_cpus:g}", f"label.batch_size={a.batch}", f"ray.num_cpus={a.cpus}",
            f"label.amp_bf16={'true' if gpus else 'false'}"])
        t0 = time.perf_counter()
        res = run_label(cfg)
        wall = time.perf_counter() - t0
    for s in res.values():
        assert s.reconciles and s.written == a.rows and s.duplicates == 0, s
    run_s = res["preprocess"].run_seconds
    rate = a.rows / run_s
    result = {"command": " ".join(sys.argv), "date": dt.date.today().isoformat(), "device": device,
              "cpus": a.cpus, "size": a.size, "batch": a.batch, "rows": a.rows, "frame": f"{a.width}x{a.height}",
              "bare_vessel_images_per_s": bare_v, "bare_lesion_images_per_s": bare_l,
              "bare_both_images_per_s": bare, "label_images_per_s": rate, "label_wall_s": wall,
              "label_run_s": run_s, "ratio": rate / bare, "cpu_ms_per_image_at_this_rate": 1000.0 * a.cpus / rate}
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
