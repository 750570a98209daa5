"""External validation on real graded images: ../shared/data/EyePACS_256_preproc's patients split in two halves
(stratified by the patient's worst grade, seeded), each half its own processed dataset; GraphFusion trained with
nested 5-fold CV on half A, its fold models as one ensemble predicting half B (``dr-ray predict``), and half B
scored by ``dr-ray evaluate --set evaluate.dataset=<B>`` (AUC with a patient-level bootstrap CI).

    python benchmarks/bench_eyepacs_external.py --vessel-model outputs/eyepacs_cv/train_vessels_drive/model
        [--out outputs/eyepacs_external] [--epochs 8] [--patience 3] [--model graph_fusion] [--json OUT]

The vessel model is the DRIVE-trained U-Net of ``benchmarks/bench_eyepacs_cv.py`` (run that first, or pass any
saved vessel model directory). Every stage runs as its command would, on one local Ray.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def split_patients(labels_csv: Path, out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``a.csv`` / ``b.csv`` (the EyePACS label layout) holding disjoint halves of the patients, stratified
    by worst grade (scikit-learn's StratifiedShuffleSplit)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    rows = list(csv.DictReader(open(labels_csv)))
    worst: dict[str, int] = {}
    for r in rows:
        p = r["image"].rsplit("_", 1)[0]
        worst[p] = max(worst.get(p, 0), int(r["level"]))
    patients = sorted(worst)
    strata = [min(worst[p], 2) for p in patients]  # 0, 1, referable: every stratum has >= 2 patients
    a_idx, b_idx = next(StratifiedShuffleSplit(n_splits=1, test_size=0.5, random_state=seed).split(patients, strata))
    halves = {"a": {patients[i] for i in a_idx}, "b": {patients[i] for i in b_idx}}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, keep in halves.items():
        paths[name] = out / f"{name}.csv"
        with open(paths[name], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "level"])
            w.writeheader()
            w.writerows(r for r in rows if r["image"].rsplit("_", 1)[0] in keep)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "eyepacs_external")
    ap.add_argument("--vessel-model", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--model", default="graph_fusion")
    ap.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    ap.add_argument("--cpus", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from benchmarks._bench_util import cpu_model
    from dr_ray.config import load_config
    from dr_ray.pipelines.evaluate import run_evaluate
    from dr_ray.pipelines.predict import run_predict
    from dr_ray.pipelines.preprocess import run_preprocess
    from dr_ray.pipelines.train import run_train
    from dr_ray.pipelines.vessels import run_vessels

    data = SHARED / "EyePACS_256_preproc"
    if not (data / "trainLabels.csv").is_file():
        sys.exit(f"{data} not found (the real graded images of ../shared/data)")
    csvs = split_patients(data / "trainLabels.csv", args.out, seed=args.seed)
    times: dict[str, float] = {}

    def timed(name, fn, cfg):
        t0 = time.perf_counter()
        out = fn(cfg)
        times[name] = time.perf_counter() - t0
        print(f"# {name}: {times[name]:.0f} s", flush=True)
        return out

    def base(half: str) -> list[str]:
        b = [f"output.dir={args.out / half}", "data.dataset=eyepacs", f"data.root={data}",
             f"data.labels={csvs[half]}", "data.folds=5", f"preprocess.size={args.size}", "ray.rows_per_file=32",
             f"vessels.model_dir={args.vessel_model}", "vessels.input_size=512", "vessels.batch_size=8"]
        return [*b, f"ray.num_cpus={args.cpus}"] if args.cpus else b

    counts = {}
    for half in ("a", "b"):
        pre = timed(f"preprocess-{half}", run_preprocess, load_config(None, base(half)))
        ves = timed(f"vessels-{half}", run_vessels, load_config(None, base(half)))
        counts[half] = {"images": pre.catalog_rows, "preprocessed": pre.written, "vessels": ves.written,
                        "quarantined": pre.quarantined + ves.quarantined}
    name = args.model
    train = timed("train-a", run_train, load_config(None, [
        *base("a"), f"train.model={name}", f"train.name={name}", f"train.image_size={args.size}",
        f"train.epochs={args.epochs}", "train.batch_size=16", f"train.early_stop_patience={args.patience}",
        "train.lr=0.0003"]))
    run_dir = args.out / "a" / name
    pred = timed("predict-b", run_predict, load_config(None, [*base("b"), f"predict.run_dir={run_dir}"]))
    ev = timed("evaluate-b", run_evaluate, load_config(None, [*base("b"), f"evaluate.dataset={args.out / 'b'}"]))

    auc_ci = ev["pooled_ci"].get("auc", {})
    oof = ((train.get("pooled") or {}).get("metrics") or {}).get("auc", {})
    res = {"date": dt.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
           "command": " ".join(sys.argv), "split_seed": args.seed, "halves": counts, "model": name,
           "train_a": {"pooled_oof_auc": oof, "cv_auc": train["cv"].get("auc"),
                       "folds": [f.get("auc") for f in train["folds"]]},
           "predict_b": {"written": pred.written, "quarantined": pred.quarantined, "reconciles": pred.reconciles},
           "external_b": {"scored": ev["scored"], "auc": auc_ci, "pooled": ev["pooled"], "report": ev["report"]},
           "seconds": times}
    print(f"train on half A ({counts['a']['images']} images): pooled out-of-fold AUC {oof.get('estimate')} "
          f"(95% patient bootstrap CI {oof.get('ci_low')}..{oof.get('ci_high')})")
    print(f"external, half B ({ev['scored']} graded images, other patients): AUC {auc_ci.get('estimate')} "
          f"(95% patient bootstrap CI {auc_ci.get('ci_low')}..{auc_ci.get('ci_high')}); report {ev['report']}")
    out = args.json or args.out / "bench_eyepacs_external.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"# results: {out}")


if __name__ == "__main__":
    main()
