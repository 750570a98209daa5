"""The whole chain on real graded images: ../shared/data/EyePACS_256_preproc (150 EyePACS images, 75 patients)
-> preprocess -> vessels (a U-Net trained here on DRIVE) -> GraphFusion and a baseline, each with patient-level
5-fold cross-validation on Ray Train, referable-DR AUC per fold, pooled out-of-fold with its patient-level
bootstrap CI, and the corrected resampled t / DeLong comparison.

    python benchmarks/bench_eyepacs_cv.py [--out outputs/eyepacs_cv] [--epochs 15] [--patience 5] [--size 256]
        [--baseline efficientnet_b0] [--vessel-epochs 15] [--skip-vessel-training] [--json OUT]

Every stage runs as its command would (``run_preprocess``, ``run_train_vessels``, ``run_vessels``, ``run_train``)
on one local Ray. The vessel model sees DRIVE at native scale (565 px wide, ~540 px FOV), so the 256-px EyePACS
images are upsampled to 512 px for it (``vessels.input_size``) and its probabilities come back at 256 px.
The images were cropped, stretched to squares and contrast-boosted by their source (MANIFEST.md), so the FOV
step has little to do; no ImageNet weights (no network here). Tiny data: the point is the chain working honestly
on real images, not the AUC of a 120-image training set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "eyepacs_cv")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    ap.add_argument("--baseline", default="efficientnet_b0")
    ap.add_argument("--vessel-epochs", type=int, default=15)
    ap.add_argument("--skip-vessel-training", action="store_true", help="reuse <out>/train_vessels_drive/model")
    ap.add_argument("--cpus", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from benchmarks._bench_util import cpu_model
    from dr_ray.config import load_config
    from dr_ray.pipelines.preprocess import run_preprocess
    from dr_ray.pipelines.train import run_train
    from dr_ray.pipelines.train_vessels import run_train_vessels
    from dr_ray.pipelines.vessels import run_vessels

    data = SHARED / "EyePACS_256_preproc"
    if not (data / "trainLabels.csv").is_file():
        sys.exit(f"{data} not found (the real graded images of ../shared/data)")
    base = [f"output.dir={args.out}", "data.dataset=eyepacs", f"data.root={data}", "data.folds=5",
            f"preprocess.size={args.size}", "ray.rows_per_file=32"]
    if args.cpus:
        base.append(f"ray.num_cpus={args.cpus}")
    times: dict[str, float] = {}

    def timed(name, fn, cfg):
        t0 = time.perf_counter()
        out = fn(cfg)
        times[name] = time.perf_counter() - t0
        print(f"# {name}: {times[name]:.0f} s", flush=True)
        return out

    pre = timed("preprocess", run_preprocess, load_config(None, base))
    vessel_model = args.out / "train_vessels_drive" / "model"
    if not args.skip_vessel_training:
        tv = timed("train-vessels", run_train_vessels, load_config(None, [
            *base, "train_vessels.datasets=[drive]", f"train_vessels.roots=[{SHARED / 'DRIVE'}]",
            "train_vessels.input_mode=green_clahe", "train_vessels.patch_size=96",
            "train_vessels.patches_per_image=48", "train_vessels.batch_size=16", "train_vessels.lr=0.002",
            "train_vessels.decoder_channels=[128, 64, 32, 16, 16]", f"train_vessels.epochs={args.vessel_epochs}",
            "train_vessels.name=train_vessels_drive"]))
        print(f"# vessel model: val Dice {tv['final'].get('val_dice')}", flush=True)
    ves = timed("vessels", run_vessels, load_config(None, [
        *base, f"vessels.model_dir={vessel_model}", "vessels.input_size=512", "vessels.batch_size=8"]))
    train = [*base, f"train.image_size={args.size}", f"train.epochs={args.epochs}", "train.batch_size=16",
             f"train.early_stop_patience={args.patience}", "train.lr=0.0003"]
    b = timed("train-baseline", run_train, load_config(None, [*train, f"train.model={args.baseline}",
                                                               "train.name=baseline"]))
    g = timed("train-graph-fusion", run_train, load_config(None, [*train, "train.model=graph_fusion",
                                                                   "train.name=graph_fusion",
                                                                   "train.baseline=baseline"]))

    def folds(s):
        return [{"fold": f["fold"], "auc": f.get("auc"), "accuracy": f.get("accuracy"),
                 "sensitivity": f.get("sensitivity"), "specificity": f.get("specificity"),
                 "val_images": f["val_images"], "best_epoch": f["best_epoch"]} for f in s["folds"]]

    res = {"date": dt.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
           "command": " ".join(sys.argv), "preprocess": {"in": pre.catalog_rows, "written": pre.written,
                                                         "quarantined": pre.quarantined},
           "vessels": {"in": ves.catalog_rows, "written": ves.written, "quarantined": ves.quarantined},
           "data": g["data"], "baseline": {"model": args.baseline, "folds": folds(b), "cv": b["cv"],
                                           "pooled": b.get("pooled"), "patient_level": b.get("patient_level")},
           "graph_fusion": {"folds": folds(g), "cv": g["cv"], "pooled": g.get("pooled"),
                            "patient_level": g.get("patient_level")}, "comparison": g.get("comparison"),
           "seconds": times}
    print(json.dumps({k: res[k] for k in ("preprocess", "vessels", "comparison")}, indent=1, default=str))
    for name in ("baseline", "graph_fusion"):
        c = res[name]["cv"]["auc"]
        print(f"{name}: AUC per fold {[round(f['auc'], 3) if f['auc'] is not None else None for f in res[name]['folds']]}"
              f" mean {c['mean']:.3f} (95% t CI over folds, clipped to [0, 1]: {c['ci_low']:.3f}..{c['ci_high']:.3f})")
        p = ((res[name].get("pooled") or {}).get("metrics") or {}).get("auc")
        if p:
            print(f"{name}: pooled out-of-fold AUC {p['estimate']} (95% patient bootstrap CI {p['ci_low']}.."
                  f"{p['ci_high']}, {p['n_groups']} patients)")
    comp = res["comparison"] or {}
    r = (comp.get("metrics") or {}).get("auc")
    if r:
        print(f"corrected resampled t (AUC over folds): diff {r['mean_diff']}, p {r['p']}")
    d = comp.get("delong") or {}
    print(f"DeLong (pooled out-of-fold AUC): diff {d.get('diff')}, p {d.get('p')}; patient bootstrap p "
          f"{(d.get('patient_bootstrap') or {}).get('p')}")
    out = args.json or args.out / "bench_eyepacs_cv.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"# results: {out}")


if __name__ == "__main__":
    main()
