"""Leave-images-out K-fold cross-validation of the vessel U-Net on the 20 DRIVE training images, Ray-free.

    python benchmarks/bench_vessel_cv.py [--folds 4] [--epochs 36] [--patches-per-image 64] [--encoder resnet18]
        [--decoder 128,64,32,16,16] [--patch 96] [--batch 16] [--lr 2e-3] [--input-mode green_clahe]
        [--threads 2] [--only-folds 0,1] [--no-cross] [--out outputs/vessel_cv] [--data ../shared/data]
    python benchmarks/bench_vessel_cv.py --report-only [--out outputs/vessel_cv]   # merge results_*.json

Folds can run in separate processes (``--only-folds 0,1`` and ``--only-folds 2,3`` with ``--threads 1``: on a
shared 2-core machine two single-threaded processes lose far less to contention than one process with two
threads); each writes ``results_folds0-1.json`` etc. and ``--report-only`` merges them.

Each fold trains a fresh ``vessel_unet`` (dr_ray.models registry, random init) on the other images with the
project's loops (``patch_batches`` -> ``train_segmentation_epoch`` with ``DiceBCELoss``, AdamW, cosine decay per epoch),
then scores every held-out image on its whole FOV at DRIVE's original 565 x 584 scale with ``SegmentationMeter``
(Dice, sensitivity, specificity, accuracy, AUC). The threshold is 0.5 and, separately, the one that maximises
pooled Dice on the fold's own training images (never the held-out ones). Folds: ``sklearn.KFold`` over the
sorted image ids, ``shuffle=True, random_state=--seed``.

Cross-dataset (unless ``--no-cross``): every fold model also segments the LES-AV (15) and HRF-AV (2) images,
resized to DRIVE's vessel scale and scored at their original resolution (probabilities resized back) inside
their FOV. Two scales are reported, both fixed per dataset before any prediction:
    geometry: same pixels per degree of field as DRIVE (FOV diameter 536 px over 45 deg): LES-AV 1444 px over
              30 deg -> 0.247, HRF 3262 px over 45 deg -> 0.164;
    caliber:  same mean manual vessel caliber (area / skeleton length) as DRIVE (3.5 px): LES-AV ~10.2 px
              -> 0.34, HRF ~9.5 px -> 0.37 (DRIVE's optics blur vessels wider than its pixel pitch suggests).

Writes ``--out``: ``fold{k}/model`` (``save_model_dir``: model.pt + metadata.json with the resolved config,
held-out ids, threshold and metrics) and ``results[_folds...].json`` (per-fold, per-image metrics, history).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_util import cpu_model  # noqa: E402

from dr_ray.config import load_config, to_dict  # noqa: E402
from dr_ray.models import save_model_dir  # noqa: E402
from dr_ray.pipelines.train_vessels import vessel_records  # noqa: E402
from dr_ray.training import (  # noqa: E402
    DiceBCELoss,
    SegmentationMeter,
    VesselImage,
    load_vessel_image,
    load_vessel_images,
    patch_batches,
    predict_image,
    train_data_hash,
    train_segmentation_epoch,
)
from dr_ray.training.ray_train import build_model  # noqa: E402

log = logging.getLogger("bench_vessel_cv")

DEFAULT_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))
METRICS = ("dice", "sensitivity", "specificity", "accuracy", "auc")
# Resize factors to DRIVE's vessel scale (see the module docstring for where the numbers come from).
CROSS_SCALES = {"les_av": {"geometry": 0.247, "caliber": 0.34}, "hrf_av": {"geometry": 0.164, "caliber": 0.37}}
CROSS_ROOTS = {"les_av": "LES-AV", "hrf_av": "HRF-AV"}


def kfold_ids(ids: list[str], k: int, seed: int) -> list[list[str]]:
    """Held-out ids of each of ``k`` folds (sklearn KFold over the sorted ids)."""
    from sklearn.model_selection import KFold

    ids = sorted(ids)
    return [[ids[i] for i in test] for _, test in KFold(k, shuffle=True, random_state=seed).split(ids)]


def predict_at_scale(model: torch.nn.Module, im: VesselImage, *, scale: float, input_mode: str, spec) -> np.ndarray:
    """Probability (H, W) float32 at ``im``'s resolution; the model runs on the image resized by ``scale``.

    ``im.image`` is the raw RGB frame (input_mode "rgb" when loaded); the model input is made at the model scale.
    """
    from dr_ray.imaging.enhance import vessel_input

    h, w = im.mask.shape
    img = im.image
    if scale != 1.0:
        img = cv2.resize(img, (max(32, round(w * scale)), max(32, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    prob = predict_image(model, vessel_input(img, input_mode), mean=spec.mean, std=spec.std)
    if prob.shape != (h, w):
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return prob


def best_threshold(probs: list[np.ndarray], images: list[VesselImage]) -> float:
    """Threshold in 0.20..0.80 (step 0.02) with the highest pooled FOV Dice over ``images``."""
    best, best_dice = 0.5, -1.0
    for t in np.round(np.arange(0.20, 0.801, 0.02), 2):
        m = SegmentationMeter(threshold=float(t), auc_pixels_per_image=1)  # AUC unused here
        for p, im in zip(probs, images):
            m.update(p, im.mask, im.fov)
        d = m.compute()["dice"]
        if d > best_dice:
            best, best_dice = float(t), d
    return best


def score(probs: list[np.ndarray], images: list[VesselImage], threshold: float) -> dict:
    """{"pooled": metrics over all images, "per_image": {id: metrics}} (SegmentationMeter, FOV pixels)."""
    pooled = SegmentationMeter(threshold=threshold)
    per_image = {}
    for p, im in zip(probs, images):
        one = SegmentationMeter(threshold=threshold)
        one.update(p, im.mask, im.fov)
        pooled.update(p, im.mask, im.fov)
        per_image[im.image_id] = one.compute()
    return {"pooled": pooled.compute(), "per_image": per_image}


def mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def run_fold(fold: int, held_out: list[str], records, cfg, args, cross_images: dict) -> dict:
    tv = cfg.train_vessels
    train_recs = [r for r in records if r.image_id not in held_out]
    test_recs = [r for r in records if r.image_id in held_out]
    train_images = load_vessel_images(train_recs, scale=tv.scale, input_mode=tv.input_mode)
    test_images = load_vessel_images(test_recs, scale=1.0, input_mode="rgb")  # scored at the original scale
    torch.manual_seed(tv.seed * 1000 + fold)
    model = build_model(tv)
    spec = model.spec
    optimizer = torch.optim.AdamW(model.parameters(), lr=tv.lr, weight_decay=tv.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tv.epochs)
    loss_fn = DiceBCELoss()
    history = []
    t_train = time.perf_counter()
    for epoch in range(tv.epochs):
        rng = np.random.default_rng([tv.seed, fold, epoch])
        t0 = time.perf_counter()
        batches = patch_batches(train_images, patch=tv.patch_size, patches_per_image=tv.patches_per_image,
                                batch_size=tv.batch_size, mean=spec.mean, std=spec.std, rng=rng,
                                fov_bias=tv.fov_bias)
        lr = optimizer.param_groups[0]["lr"]
        train = train_segmentation_epoch(model, batches, optimizer, loss_fn, "cpu")
        scheduler.step()
        row = {"epoch": epoch + 1, "loss": round(train["loss"], 4), "steps": int(train["steps"]),
               "lr": lr, "seconds": round(time.perf_counter() - t0, 1)}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0):
            probs = [predict_at_scale(model, im, scale=tv.scale, input_mode=tv.input_mode, spec=spec)
                     for im in test_images]
            row["heldout_dice_0.5"] = round(score(probs, test_images, 0.5)["pooled"]["dice"], 4)
        history.append(row)
        log.info("fold %d epoch %d/%d %s", fold, epoch + 1, tv.epochs, row)
    train_s = time.perf_counter() - t_train

    t0 = time.perf_counter()
    model.eval()
    train_raw = load_vessel_images(train_recs, scale=1.0, input_mode="rgb")
    train_probs = [predict_at_scale(model, im, scale=tv.scale, input_mode=tv.input_mode, spec=spec)
                   for im in train_raw]
    threshold = best_threshold(train_probs, train_raw)
    train_dice = score(train_probs, train_raw, threshold)["pooled"]["dice"]
    probs = [predict_at_scale(model, im, scale=tv.scale, input_mode=tv.input_mode, spec=spec) for im in test_images]
    result = {
        "fold": fold, "held_out": held_out, "train_images": [r.image_id for r in train_recs],
        "train_seconds": round(train_s, 1), "threshold": threshold, "train_dice_at_threshold": train_dice,
        "heldout_at_0.5": score(probs, test_images, 0.5),
        "heldout_at_threshold": score(probs, test_images, threshold),
        "history": history,
    }
    cross = {}
    for ds, images in cross_images.items():
        for kind, s in CROSS_SCALES[ds].items():
            p = [predict_at_scale(model, im, scale=s, input_mode=tv.input_mode, spec=spec) for im in images]
            cross[f"{ds}/{kind}"] = {"scale": s, "at_0.5": score(p, images, 0.5),
                                     "at_threshold": score(p, images, threshold)}
    result["cross"] = cross
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        model_dir = Path(args.out) / f"fold{fold}" / "model"
        extra = {"fold": fold, "held_out": held_out, "threshold": threshold, "epochs": tv.epochs,
                 "train_seconds": result["train_seconds"],
                 "heldout_pooled_at_threshold": result["heldout_at_threshold"]["pooled"],
                 "heldout_pooled_at_0.5": result["heldout_at_0.5"]["pooled"],
                 "input_mode": tv.input_mode, "scale": tv.scale,
                 "note": "model input = dr_ray.training.data.vessel_input(rgb at `scale`, input_mode), "
                         "then (x/255 - spec.mean)/spec.std"}
        save_model_dir(model, model_dir, config=to_dict(cfg), train_data_hash=train_data_hash(train_recs),
                       extra=json.loads(json.dumps(extra, allow_nan=True)), overwrite=True)
        result["model_dir"] = str(model_dir)
    return result


def _fmt(m: float, s: float) -> str:
    return f"{m:.4f} ± {s:.4f}"


def report(results: list[dict], cross_keys: list[str]) -> str:
    lines = ["| fold | held-out images | train s | thr | Dice@thr | Dice@0.5 | Se | Sp | Acc | AUC |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p, p5 = r["heldout_at_threshold"]["pooled"], r["heldout_at_0.5"]["pooled"]
        ids = ", ".join(i.split("/")[-1].split("_")[0] for i in r["held_out"])
        lines.append(f"| {r['fold']} | {ids} | {r['train_seconds']:.0f} | {r['threshold']:.2f} | {p['dice']:.4f} | "
                     f"{p5['dice']:.4f} | {p['sensitivity']:.4f} | {p['specificity']:.4f} | {p['accuracy']:.4f} | "
                     f"{p['auc']:.4f} |")
    lines.append("")
    lines.append("| metric (threshold from training images) | mean ± std over folds (pooled per fold) | "
                 "mean ± std over held-out images |")
    lines.append("|---|---|---|")
    for key, label in (("heldout_at_threshold", "thr"), ("heldout_at_0.5", "0.5")):
        for m in METRICS:
            if label == "0.5" and m != "dice":
                continue
            folds = mean_std([r[key]["pooled"][m] for r in results])
            imgs = mean_std([v[m] for r in results for v in r[key]["per_image"].values()])
            lines.append(f"| {m}{'' if label == 'thr' else ' @0.5'} | {_fmt(*folds)} | {_fmt(*imgs)} |")
    if cross_keys:
        lines.append("")
        lines.append("| cross-dataset (DRIVE-trained fold models) | scale | Dice@thr | Dice@0.5 | Se@thr | Sp@thr | "
                     "AUC |")
        lines.append("|---|---|---|---|---|---|---|")
        for key in cross_keys:
            rs = [r["cross"][key] for r in results]
            cell = {m: mean_std([c["at_threshold"]["pooled"][m] for c in rs]) for m in METRICS}
            d5 = mean_std([c["at_0.5"]["pooled"]["dice"] for c in rs])
            lines.append(f"| {key} | {rs[0]['scale']} | {_fmt(*cell['dice'])} | {_fmt(*d5)} | "
                         f"{_fmt(*cell['sensitivity'])} | {_fmt(*cell['specificity'])} | {_fmt(*cell['auc'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding DRIVE/, LES-AV/, HRF-AV/")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--only-folds", default="", help="comma-separated fold indices to run (default: all)")
    ap.add_argument("--epochs", type=int, default=36)
    ap.add_argument("--patches-per-image", type=int, default=64)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--decoder", default="128,64,32,16,16", help="decoder channels, one per x2 upsampling")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--input-mode", default="green_clahe", choices=("rgb", "green_clahe"))
    ap.add_argument("--scale", type=float, default=1.0, help="DRIVE resize factor for training and inference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--eval-every", type=int, default=0, help="score held-out Dice@0.5 every N epochs (0: never)")
    ap.add_argument("--no-cross", action="store_true", help="skip the LES-AV / HRF-AV evaluation")
    ap.add_argument("--out", default=str(REPO / "outputs" / "vessel_cv"), help="'' = save nothing")
    ap.add_argument("--report-only", action="store_true", help="merge --out/results*.json and print the tables")
    args = ap.parse_args(argv)
    if args.report_only:
        return merge_report(Path(args.out))
    if args.folds < 2:
        ap.error("--folds must be >= 2")

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dr_ray").setLevel(logging.WARNING)
    cfg = load_config(None, [
        "train_vessels.datasets=[drive]", f"train_vessels.roots=[{args.data / 'DRIVE'}]",
        f"train_vessels.encoder={args.encoder}", f"train_vessels.decoder_channels=[{args.decoder}]",
        f"train_vessels.patch_size={args.patch}", f"train_vessels.patches_per_image={args.patches_per_image}",
        f"train_vessels.epochs={args.epochs}", f"train_vessels.batch_size={args.batch}",
        f"train_vessels.lr={args.lr}", f"train_vessels.input_mode={args.input_mode}",
        f"train_vessels.scale={args.scale}", f"train_vessels.seed={args.seed}",
        "train_vessels.name=vessel_cv", "train_vessels.use_gpu=false",
    ])
    records, _ = vessel_records(cfg)
    records = [r for r in records if "training" in r.image_id]
    if len(records) != 20:
        raise SystemExit(f"expected the 20 DRIVE training images under {args.data / 'DRIVE'}, found {len(records)}")
    folds = kfold_ids([r.image_id for r in records], args.folds, args.seed)
    run = [int(f) for f in args.only_folds.split(",")] if args.only_folds else list(range(args.folds))

    cross_images: dict[str, list[VesselImage]] = {}
    if not args.no_cross:
        from dr_ray.io.catalog import read_catalog
        from dr_ray.training import VesselRecord

        for ds, sub in CROSS_ROOTS.items():
            rows = read_catalog(ds, str(args.data / sub)).table.to_pylist()
            cross_images[ds] = [load_vessel_image(VesselRecord(
                image_id=r["image_id"], patient_id=r["patient_id"] or r["image_id"], path=r["path"],
                vessel_mask_path="", av_mask_path=r["av_mask_path"] or "", fov_mask_path=r["fov_mask_path"] or ""))
                for r in rows]
            log.info("%s: %d images for the cross-dataset check", ds, len(cross_images[ds]))

    log.info("config: %s", {k: v for k, v in dataclasses.asdict(cfg.train_vessels).items()
                            if k not in ("datasets", "roots", "synthetic_images", "synthetic_size")})
    t_all = time.perf_counter()
    results = []
    results_file = Path(args.out) / ("results.json" if not args.only_folds else
                                     f"results_folds{'-'.join(str(f) for f in run)}.json")
    for f in run:
        r = run_fold(f, folds[f], records, cfg, args, cross_images)
        p = r["heldout_at_threshold"]["pooled"]
        log.info("fold %d done: train %.0f s, threshold %.2f, held-out Dice %.4f (Dice@0.5 %.4f), AUC %.4f",
                 f, r["train_seconds"], r["threshold"], p["dice"], r["heldout_at_0.5"]["pooled"]["dice"], p["auc"])
        results.append(r)
        if args.out:  # after every fold, so a long run that is stopped keeps what it finished
            Path(args.out).mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps({"args": vars(args) | {"data": str(args.data)}, "folds": results},
                                               indent=1, default=str))
    total = time.perf_counter() - t_all
    table = report(results, sorted(results[0]["cross"]) if results else [])
    print(table)
    print(f"\nfolds run: {run} of {args.folds}; wall time {total:.0f} s "
          f"(training {sum(r['train_seconds'] for r in results):.0f} s)")
    print("command: python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({args.threads} threads); date {dt.date.today().isoformat()}")
    summary = {"args": vars(args) | {"data": str(args.data)}, "folds": results, "wall_seconds": total,
               "table": table}
    if args.out:
        results_file.write_text(json.dumps(summary, indent=1, default=str))
    return summary


def merge_report(out: Path) -> dict:
    """Print the tables for every fold found in ``out/results*.json`` (the latest file wins for a fold)."""
    by_fold: dict[int, dict] = {}
    files = sorted(out.glob("results*.json"), key=lambda f: f.stat().st_mtime)
    for f in files:
        for r in json.loads(f.read_text())["folds"]:
            by_fold[int(r["fold"])] = r
    if not by_fold:
        raise SystemExit(f"no results*.json with finished folds in {out}")
    results = [by_fold[k] for k in sorted(by_fold)]
    table = report(results, sorted(set.intersection(*(set(r["cross"]) for r in results))))
    print(table)
    print(f"\nfolds: {sorted(by_fold)} from {[f.name for f in files]}; training "
          f"{sum(r['train_seconds'] for r in results):.0f} s in total")
    return {"folds": results, "table": table}


if __name__ == "__main__":
    main()
