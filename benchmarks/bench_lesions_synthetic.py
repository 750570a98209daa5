"""Lesion segmentation on synthetic fundus images never trained on: per-lesion AUPR and Dice.

    python benchmarks/bench_lesions_synthetic.py [--model lesion_unet] [--encoder ""] [--train 24] [--test 12]
        [--size 384] [--patch 128] [--epochs 30] [--threads 2] [--json OUT]

Trains with the project's Ray-free pieces (``lesion_patch_batches`` -> ``train_segmentation_epoch`` with ``LesionLoss``;
the same ones the Ray Train worker runs) on ``--train`` synthetic frames (``make_fundus``, grade 3 so that every
lesion kind is drawn), then scores whole held-out frames (other seeds, never seen) inside the FOV with
``LesionMeter``: AUPR (the IDRiD challenge metric) and Dice at 0.5 per lesion kind. Issue 4 target: AUPR >= 0.6
for haemorrhages and hard exudates with the default model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lesion_unet")
    ap.add_argument("--encoder", default="")
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--patches-per-image", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import tempfile

    import torch

    from dr_ray.models import create_model
    from dr_ray.pipelines.train_lesions import synthetic_lesion_records
    from dr_ray.training.lesion_data import lesion_patch_batches, load_lesion_images
    from dr_ray.training.lesion_losses import LesionLoss
    from dr_ray.training.lesion_metrics import LesionMeter
    from dr_ray.training.segmentation import train_segmentation_epoch
    from dr_ray.training.segmentation import lesion_batches

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kinds = ("ma", "he", "ex", "se")
    kw = {"encoder": args.encoder} if args.encoder else {}
    model = create_model(args.model, lesion_kinds=list(kinds), input_size=args.patch, **kw)
    spec = model.spec
    train = load_lesion_images(synthetic_lesion_records(tempfile.mkdtemp(), range(args.train), args.size, grade=3), kinds)
    test = load_lesion_images(synthetic_lesion_records(tempfile.mkdtemp(), range(10_000, 10_000 + args.test),
                                                 args.size, grade=3), kinds)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loss_fn = LesionLoss()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        rng = np.random.default_rng([0, epoch])
        batches = lesion_patch_batches(train, patch=args.patch, patches_per_image=args.patches_per_image,
                                       batch_size=args.batch, mean=spec.mean, std=spec.std, rng=rng)
        r = train_segmentation_epoch(model, lesion_batches(batches), opt, loss_fn, "cpu")
        sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {r['loss']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0

    meter = LesionMeter(kinds, seed=0)
    model.eval()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        for im in test:
            x = (torch.from_numpy(im.image).permute(2, 0, 1)[None].float() / 255 - mean) / std
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect")
            prob = torch.sigmoid(model(x))[0, :, :h, :w].numpy()
            meter.update(prob, im.masks, im.fov)
    res = meter.compute()
    print(f"\nheld-out synthetic frames: {args.test} ({args.size} px), model {args.model} {spec.kwargs.get('encoder')}, "
          f"{args.epochs} epochs in {train_s:.0f} s")
    print("| lesion | AUPR | Dice@0.5 | positive pixels |\n|---|---:|---:|---:|")
    for k in kinds:
        print(f"| {k} | {res[f'aupr_{k}']:.3f} | {res[f'dice_{k}']:.3f} | {res[f'n_pos_{k}']} |")
    result = {"command": " ".join(sys.argv), "date": dt.date.today().isoformat(),
              "machine": f"{platform.machine()} {platform.processor()}, torch threads {args.threads}",
              "train_seconds": train_s, "metrics": res, "args": vars(args) | {"json": str(args.json)}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
