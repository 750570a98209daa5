"""Model actor stage throughput (vessels or pseudo labels) vs the model's bare forward pass at the same batch size.

    python benchmarks/bench_model_actor.py [--stage vessels|pseudo_labels] [--model NAME] [--rows 4000]
        [--size 512] [--batch 32] [--encoder ENC] [--actor-cpus 8] [--cpus N] [--json OUT]

``--stage vessels``: ``VesselSegmenter`` with a ``vessel_unet`` (default encoder resnet18); ``--stage
pseudo_labels``: ``PseudoLabeler`` (maps + statistics, default settings) with ``--model lesion_unet`` (resnet34)
or ``swin_unet`` (Swin-T; ``--size`` must then be its input size, e.g. 448). Issue references on an H100, bf16,
512 px: Swin-T U-Net ~780 images/s, ResNet34 U-Net ~2,100 images/s bare forward.

1. Input: ``--rows`` preprocessed rows (PNG-encoded ``--size`` px images, as the preprocess stage writes them)
   made from the real EyePACS sample photos in ../shared/data (synthetic frames when absent), replicated with
   distinct ids, in Parquet shards of 256 rows.
2. Bare forward: the stage's model (random weights: the cost does not depend on them) on a device-resident,
   normalised batch of ``--batch`` images, bf16 autocast + channels_last on GPU; images/s after warm-up.
3. Actor stage: ``read_parquet -> map_batches(<actor>, ActorPoolStrategy(size=1))`` with one GPU
   (when there is one) and ``--actor-cpus`` CPUs (PNG decode/encode threads), consumed by the driver. The
   rate is timed from the moment the actor has loaded its model to the last output row (actor start-up
   excluded; Ray Data hands outputs on in large blocks, so first-to-last-batch timing would be too coarse). Ratio = actor rate / bare forward rate (target >= 0.8 on the GPU node).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "EyePACS_kaggle_sample" / "images"


def _source_images(data: Path, size: int) -> list:
    from dr_ray.config import load_config
    from dr_ray.imaging import preprocess_image
    from dr_ray.testing import encode_jpeg, make_fundus

    cfg = load_config(None, [f"preprocess.size={size}"]).preprocess
    files = sorted(data.glob("*.jpeg")) if data.is_dir() else []
    blobs = [f.read_bytes() for f in files]
    if not blobs:
        print(f"# {data} not found: using synthetic frames", flush=True)
        blobs = [encode_jpeg(make_fundus(seed=i, width=1536, height=1024, style="eyepacs").image, 92)
                 for i in range(6)]
    return [preprocess_image(b, cfg).image for b in blobs]


def write_input(folder: Path, rows: int, size: int, data: Path, per_file: int = 256) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dr_ray.imaging import encode_png
    from dr_ray.io import columns as C

    pngs = [encode_png(im, 1) for im in _source_images(data, size)]
    ok = folder / f"{C.STATUS}={C.STATUS_OK}"
    ok.mkdir(parents=True)
    schema = pa.schema([f for f in C.PREPROCESS_SCHEMA if f.name != C.STATUS])
    for start in range(0, rows, per_file):
        recs = [{C.IMAGE_ID: f"bench/{i:06d}", C.PATIENT_ID: f"bench/{i // 2:06d}", C.DATASET: "eyepacs",
                 C.PATH: f"bench/{i:06d}.jpeg", C.IMAGE_PNG: pngs[i % len(pngs)], C.SIZE: size}
                for i in range(start, min(rows, start + per_file))]
        pq.write_table(pa.Table.from_pylist(recs, schema=schema), ok / f"part_{start:06d}.parquet")


def bare_forward_rate(model_dir: Path, batch: int, size: int, seconds: float = 10.0) -> tuple[float, str]:
    import torch

    from dr_ray.models import load_model_dir

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    model, _ = load_model_dir(model_dir, map_location=dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            if cuda:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    torch.sigmoid(model(x).float())
            else:
                torch.sigmoid(model(x).float())

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    if cuda:
        torch.cuda.synchronize()
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    return n * batch / (time.perf_counter() - t0), name


def actor_stage_rate(inp: Path, model_dir: Path, batch: int, actor_cpus: float, cpus: int, stage: str) -> dict:
    import ray
    import torch

    from dr_ray.io import columns as C
    from dr_ray.pipelines.inference import INPUT_COLUMNS

    gpus = 1 if torch.cuda.is_available() else 0
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ready_file = inp / "actor_ready"
    kwargs = {"model_dir": str(model_dir), "use_gpu": bool(gpus), "amp_bf16": True, "threads": int(actor_cpus)}
    if stage == "vessels":
        from dr_ray.pipelines.vessels import VesselSegmenter as Actor
    else:
        from dr_ray.config import PseudoLabelsConfig
        from dr_ray.pipelines.pseudo_labels import PseudoLabeler as Actor

        kwargs.update(cfg=PseudoLabelsConfig(), cfg_hash="benchmark", fov_margin=0.0)

    class Timed(Actor):
        """Notes when the model is loaded, so the rate excludes actor start-up (same node: local file)."""

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            ready_file.write_text(repr(time.time()))

    ds = ray.data.read_parquet(str(inp / f"{C.STATUS}={C.STATUS_OK}"), columns=INPUT_COLUMNS)
    ds = ds.map_batches(Timed, batch_format="pyarrow", batch_size=batch,
                        compute=ray.data.ActorPoolStrategy(size=1), num_gpus=gpus, num_cpus=actor_cpus,
                        fn_constructor_kwargs=kwargs)
    t_start = time.time()
    rows, ok = 0, 0
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows += b.num_rows
        ok += sum(s == C.STATUS_OK for s in b.column(C.STATUS).to_pylist())
    t_end = time.time()
    ray.shutdown()
    t_ready = float(ready_file.read_text())
    return {"rows": rows, "ok": ok, "wall_s": t_end - t_start, "actor_start_s": t_ready - t_start,
            "steady_rate": rows / max(t_end - t_ready, 1e-9)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--stage", choices=("vessels", "pseudo_labels"), default="vessels")
    ap.add_argument("--model", default="", help="registry name (default: vessel_unet / lesion_unet)")
    ap.add_argument("--encoder", default="", help="timm encoder (default: the model's own)")
    ap.add_argument("--actor-cpus", type=float, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from dr_ray.models import create_model, save_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = args.model or ("vessel_unet" if args.stage == "vessels" else "lesion_unet")
        kw = {"encoder": args.encoder} if args.encoder else {}
        if name == "swin_unet":
            kw["input_size"] = args.size
        model = create_model(name, **kw).eval()
        model_dir = save_model_dir(model, tmp / "model", config={"benchmark": True}, train_data_hash=None)
        write_input(tmp / "input", args.rows, args.size, args.data)
        bare, device = bare_forward_rate(model_dir, args.batch, args.size)
        enc = model.spec.kwargs.get("encoder")
        print(f"bare forward ({name} {enc}, batch {args.batch}, {args.size} px) on {device}: "
              f"{bare:.1f} images/s", flush=True)
        stage = actor_stage_rate(tmp / "input", model_dir, args.batch, args.actor_cpus, args.cpus, args.stage)
    ratio = stage["steady_rate"] / bare
    print(f"actor stage: {stage['rows']} rows ({stage['ok']} ok) in {stage['wall_s']:.1f} s wall, "
          f"steady {stage['steady_rate']:.1f} images/s = {ratio:.2f} x bare forward", flush=True)
    result = {"command": " ".join(sys.argv), "date": dt.date.today().isoformat(), "device": device,
              "cpus": args.cpus, "stage": args.stage, "model": name, "encoder": enc,
              "batch": args.batch, "size": args.size,
              "bare_forward_images_per_s": bare, **stage, "ratio": ratio}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
