"""Single-core throughput of the preprocessing chain: full-resolution decode (naive) vs libjpeg DCT-domain
reduced decode, on the real full-resolution EyePACS sample JPEGs.

    python benchmarks/bench_decode.py [--data DIR] [--size 512] [--repeats N] [--threads 1] [--json OUT]

Both paths run in one process pinned to one CPU (``os.sched_setaffinity``, what ``taskset -c`` does) with
OpenCV's own thread pool set to ``--threads`` (default 1), and are interleaved image by image (the order
alternates between repeats) so both see the same machine state. File reading is excluded (bytes are in
memory); PNG encoding of the result is excluded (it is the same for both paths).
Prints a markdown table, the command, the machine and the date; ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_util import cpu_model, pin_one_core  # noqa: E402

from dr_ray.config.schema import PreprocessConfig  # noqa: E402
from dr_ray.imaging import preprocess_image, preprocess_naive  # noqa: E402
from dr_ray.imaging.decode import choose_reduction, probe  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "EyePACS_kaggle_sample" / "images"


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _interleaved(a, b, items, repeats: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of a(x) and b(x) over items x repeats, alternating which goes first."""
    ta, tb = [], []
    for r in range(repeats):
        for i, x in enumerate(items):
            if (r + i) % 2 == 0:
                ta.append(_time(a, x))
                tb.append(_time(b, x))
            else:
                tb.append(_time(b, x))
                ta.append(_time(a, x))
    return ta, tb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of full-resolution JPEGs")
    ap.add_argument("--size", type=int, default=512, help="output side, px")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the images per path")
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (1 = single core)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    paths = sorted(p for p in args.data.glob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not paths:
        print(f"no JPEGs in {args.data}", file=sys.stderr)
        return 2
    blobs = [p.read_bytes() for p in paths]
    cv2.setNumThreads(args.threads)
    pinned = pin_one_core() if args.threads == 1 else "not pinned (--threads > 1)"
    cfg = PreprocessConfig(size=args.size)
    headers = [probe(b) for b in blobs]
    factors = [choose_reduction(h.width, h.height, args.size) for h in headers]

    # warm-up: imports, OpenCV kernels, page-in
    for b in blobs:
        preprocess_naive(b, cfg)
        preprocess_image(b, cfg)

    t_naive, t_red = _interleaved(lambda b: preprocess_naive(b, cfg), lambda b: preprocess_image(b, cfg),
                                  blobs, args.repeats)

    rgb = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
    flag_full = rgb | cv2.IMREAD_IGNORE_ORIENTATION
    flag_red = (cv2.IMREAD_REDUCED_GRAYSCALE_4 | rgb if rgb != cv2.IMREAD_COLOR else cv2.IMREAD_REDUCED_COLOR_4) \
        | cv2.IMREAD_IGNORE_ORIENTATION
    bufs = [np.frombuffer(b, np.uint8) for b in blobs]
    d_full, d_red = _interleaved(lambda x: cv2.imdecode(x, flag_full), lambda x: cv2.imdecode(x, flag_red),
                                 bufs, args.repeats)

    n = len(t_naive)
    res = {
        "images": len(blobs),
        "sizes": sorted({f"{h.width}x{h.height}" for h in headers}),
        "reduction_factors": sorted(set(factors)),
        "size": args.size,
        "repeats": args.repeats,
        "threads": args.threads,
        "pinning": pinned,
        "naive_images_per_s": n / sum(t_naive),
        "reduced_images_per_s": n / sum(t_red),
        "naive_ms_median": 1e3 * statistics.median(t_naive),
        "reduced_ms_median": 1e3 * statistics.median(t_red),
        "speedup": sum(t_naive) / sum(t_red),
        "decode_full_images_per_s": n / sum(d_full),
        "decode_quarter_images_per_s": n / sum(d_red),
        "decode_speedup": sum(d_full) / sum(d_red),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_model()}; {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}",
        "versions": f"Python {platform.python_version()}, OpenCV {cv2.__version__}, NumPy {np.__version__}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }

    print(f"# bench_decode: {res['images']} EyePACS JPEGs ({', '.join(res['sizes'])}) -> {args.size} px, "
          f"{args.repeats} interleaved repeats, cv2 threads {args.threads}, {pinned}")
    print()
    print("| step | naive (full decode) img/s | reduced (1/%s decode) img/s | speedup |"
          % "/".join(map(str, res["reduction_factors"])))
    print("|---|---:|---:|---:|")
    print(f"| preprocess to {args.size} px (median ms: {res['naive_ms_median']:.1f} vs "
          f"{res['reduced_ms_median']:.1f}) | {res['naive_images_per_s']:.1f} | {res['reduced_images_per_s']:.1f} "
          f"| {res['speedup']:.2f}x |")
    print(f"| bare cv2.imdecode (full vs 1/4) | {res['decode_full_images_per_s']:.1f} | "
          f"{res['decode_quarter_images_per_s']:.1f} | {res['decode_speedup']:.2f}x |")
    print()
    print(f"command: {res['command']}")
    print(f"machine: {res['machine']}")
    print(f"versions: {res['versions']}")
    print(f"date: {res['date']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
