"""CPU decode (libjpeg, reduced DCT) vs the batched decode of ``preprocess.decode_device: cuda`` (nvJPEG through
``torchvision.io.decode_jpeg(device="cuda")`` + an area resize on the GPU to the same size), per image.

    python benchmarks/bench_gpu_decode.py --device cuda [--data DIR] [--images 64] [--size 512] [--batches 8,64]
                                          [--repeats 3] [--threads 1] [--synthetic-size 3888x2592] [--json OUT]

Inputs: the 6 real full-resolution EyePACS sample JPEGs (``../shared/data/EyePACS_kaggle_sample/images``;
synthetic 3888x2592 frames when that folder is absent, e.g. on a GPU box that has no ../shared) repeated to
``--images`` files, bytes in memory (file reading excluded). Per path: images/s (wall) and CPU-ms per image
(``time.process_time``: every thread of the process, so a CUDA driver spinning on a sync counts), the median of
``--repeats`` passes. The batched path is timed per batch size in ``--batches`` (each pass decodes the images in
``decode_batch`` calls of that many; the first call, nvJPEG / CUDA start-up, is timed apart as ``warmup_s``).
With ``--threads 1`` (default) the process is pinned to one core, as a preprocess task holds one CPU slot.
Also reported: the largest mean absolute difference between the two paths' images (grey levels) and how many
images the batched path handed to its CPU fallback.

``--device cpu`` runs the same batched code with torchvision's CPU decoder (a check that the script works; its
numbers say nothing about a GPU). The GPU figures are OWED: ``--device cuda`` runs as a step of
benchmarks/gpu_check.sh on the GPU machine; no GPU was lent when this script was written.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_util import cpu_model, pin_one_core  # noqa: E402

from dr_ray.imaging import decode  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "EyePACS_kaggle_sample" / "images"
LIMITS = {"max_pixels": 120_000_000, "min_side": 64}


def source_jpegs(data: Path, synthetic: tuple[int, int] = (3888, 2592)) -> tuple[list[bytes], str]:
    """The JPEG files of ``data`` (bytes), else 6 synthetic EyePACS-style ones of ``synthetic`` (width, height)
    px; and which it was."""
    paths = sorted(p for p in data.glob("*") if p.suffix.lower() in (".jpeg", ".jpg")) if data.is_dir() else []
    if paths:
        return [p.read_bytes() for p in paths], f"{data} ({len(paths)} JPEGs)"
    from dr_ray.testing import encode_jpeg, make_fundus

    w, h = synthetic
    print(f"# {data} not found: using 6 synthetic {w}x{h} frames", flush=True)
    return [encode_jpeg(make_fundus(seed=i, width=w, height=h, style="eyepacs").image, 92)
            for i in range(6)], f"synthetic {w}x{h} (quality 92)"


def _timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of one call of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _figures(samples: list[tuple[float, float]], n: int) -> dict:
    wall = statistics.median(s[0] for s in samples)
    cpu = statistics.median(s[1] for s in samples)
    return {"images_per_s": n / wall, "wall_ms_per_image": 1000 * wall / n, "cpu_ms_per_image": 1000 * cpu / n}


def cpu_decode_all(blobs: list[bytes], size: int) -> list[np.ndarray]:
    """The CPU path: one :func:`dr_ray.imaging.decode` per file; (h, w, 3) uint8 RGB each."""
    return [decode(b, target=size, reduced=True, **LIMITS)[0] for b in blobs]


def batched_decode_all(blobs: list[bytes], size: int, batch: int, device: str) -> tuple[list[np.ndarray], int]:
    """The batched path in calls of ``batch`` files: ((h, w, 3) uint8 RGB each, images its CPU fallback took)."""
    from dr_ray.pipelines.gpu_decode import decode_batch_report

    images, fell_back = [], 0
    for i in range(0, len(blobs), batch):
        out, fallback = decode_batch_report(blobs[i:i + batch], target=size, reduced=True, device=device, **LIMITS)
        bad = [o for o in out if isinstance(o, Exception)]
        if bad:
            raise RuntimeError(f"the batched decoder refused a sample image: {bad[0]}")
        images += [o[0] for o in out]
        fell_back += len(fallback)
    return images, fell_back


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True, help="torch device of the batched path")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of full-resolution JPEGs")
    ap.add_argument("--images", type=int, default=64, help="files per pass (the sample repeated)")
    ap.add_argument("--size", type=int, default=512, help="output side, px (picks the reduction)")
    ap.add_argument("--batches", default="8,64", help="comma-separated batch sizes of the batched path")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per path (the median is reported)")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV / torch CPU threads (1 = pinned to one core)")
    ap.add_argument("--synthetic-size", default="3888x2592", help="WxH of the frames used when --data is absent")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    synthetic = tuple(int(v) for v in args.synthetic_size.lower().split("x"))

    import cv2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_decode: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    pinned = pin_one_core() if args.threads == 1 else f"not pinned (--threads {args.threads})"
    sample, source = source_jpegs(args.data, synthetic)
    blobs = [sample[i % len(sample)] for i in range(args.images)]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    n = len(blobs)

    ref = cpu_decode_all(sample, args.size)  # also the CPU path's warm-up
    res: dict = {"device": args.device, "images": n, "size": args.size, "source": source,
                 "cpu_decode": _figures([_timed(lambda: cpu_decode_all(blobs, args.size))
                                         for _ in range(args.repeats)], n)}
    for b in batches:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warm, _ = _timed(lambda: batched_decode_all(blobs[:b], args.size, b, args.device))
        got, fell_back = batched_decode_all(sample, args.size, b, args.device)
        diff = max(float(np.abs(g.astype(np.int16) - r).mean()) for g, r in zip(got, ref))
        fig = _figures([_timed(lambda: batched_decode_all(blobs, args.size, b, args.device))
                        for _ in range(args.repeats)], n)
        fig.update({"warmup_s": warm, "fallback_images": fell_back, "max_mean_abs_diff": diff})
        if args.device == "cuda":
            fig["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res[f"batched_{b}"] = fig

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (torchvision CPU decode)"
    lines = ["| path | images/s | wall ms/image | CPU ms/image | notes |", "|---|---|---|---|---|"]
    c = res["cpu_decode"]
    lines.append(f"| CPU decode (libjpeg 1/{_factor(sample[0], args.size)}) | {c['images_per_s']:.1f} | "
                 f"{c['wall_ms_per_image']:.1f} | {c['cpu_ms_per_image']:.1f} | |")
    for b in batches:
        f = res[f"batched_{b}"]
        lines.append(f"| batched decode_jpeg on {args.device}, {b}/call | {f['images_per_s']:.1f} | "
                     f"{f['wall_ms_per_image']:.1f} | {f['cpu_ms_per_image']:.1f} | warm-up {f['warmup_s']:.2f} s, "
                     f"fallback {f['fallback_images']}, max mean abs diff {f['max_mean_abs_diff']:.2f}"
                     + (f", peak {f['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in f else "") + " |")
    print("\n".join(lines))
    print(f"\n{n} images ({source}), output side {args.size}, median of {args.repeats} passes; {pinned}; "
          f"CPU {cpu_model()}; GPU {gpu}; torch {torch.__version__}; Python {platform.python_version()}; "
          f"{dt.datetime.now().isoformat(timespec='seconds')}\ncommand: python {' '.join(sys.argv)}")
    if args.json:
        res.update({"cpu": cpu_model(), "gpu": gpu, "pinned": pinned, "torch": torch.__version__})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _factor(data: bytes, size: int) -> int:
    from dr_ray.imaging import choose_reduction, probe

    h = probe(data)
    return choose_reduction(h.width, h.height, size)


if __name__ == "__main__":
    raise SystemExit(main())
