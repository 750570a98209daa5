"""Biomarkers from predicted vessel masks vs the same biomarkers from the manual masks, on held-out images.

    python benchmarks/bench_vessel_biomarkers.py [--cv outputs/vessel_cv] [--data ../shared/data] [--json OUT]

Uses the fold models written by ``benchmarks/bench_vessel_cv.py`` (``<cv>/fold<k>/model``, each with the DRIVE
images it never saw in ``metadata.json``'s ``extra.held_out`` and its threshold in ``extra.threshold``). For
every held-out DRIVE image: the model's probabilities (input transform from the model's metadata, whole image
at the trained scale) -> mask at the fold's threshold inside the FOV; the manual mask inside the FOV; both go
through the same :func:`dr_ray.vessels.analysis.analyse_vessels` (graph, shipped A/V classifier, optic disc,
biomarkers) on the same image. Reported: per-image values, the mean absolute difference of the fractal
dimension (target < 0.03; by the default dyadic box sizes and by PVBM's linear 5 px..0.6 x side range), the
Pearson correlation of AVR (Knudtson and Parr-Hubbard) over images where both
are measurable, and the same for vessel density, branch points and tortuosity.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKERS = ("fractal_dimension", "vessel_density", "branch_points", "mean_tortuosity", "avr_knudtson",
           "avr_parr_hubbard", "crae_knudtson_um", "crve_knudtson_um")


def _drive_image(data: Path, image_id: str):
    from PIL import Image

    n = image_id.split("/")[-1].split("_")[0]
    d = data / "DRIVE" / "training"
    image = np.asarray(Image.open(d / "images" / f"{n}_training.png").convert("RGB"))
    manual = np.asarray(Image.open(d / "1st_manual" / f"{n}_manual1.gif")) > 0
    fov = np.asarray(Image.open(d / "mask" / f"{n}_training_mask.gif")) > 0
    return image, manual, fov


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", type=Path, default=REPO / "outputs" / "vessel_cv")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from dr_ray.models import load_model_dir
    from dr_ray.training import predict_image
    from dr_ray.imaging.enhance import vessel_input
    from dr_ray.vessels.analysis import analyse_vessels
    from dr_ray.vessels.av import load_default_av_classifier
    from dr_ray.vessels.fractal import box_counting_fd

    torch.set_num_threads(2)
    av = load_default_av_classifier()
    model_dirs = sorted(p.parent for p in args.cv.glob("fold*/model/metadata.json"))
    if not model_dirs:
        print(f"no fold models under {args.cv}: run benchmarks/bench_vessel_cv.py first", file=sys.stderr)
        return 2
    rows = []
    for mdir in model_dirs:
        model, meta = load_model_dir(mdir)
        extra = meta["extra"]
        mode = meta["config"]["train_vessels"].get("input_mode", "rgb")
        thr = float(extra["threshold"])
        for image_id in extra["held_out"]:
            image, manual, fov = _drive_image(args.data, image_id)
            prob = predict_image(model, vessel_input(image, mode), mean=model.spec.mean, std=model.spec.std)
            pred = analyse_vessels(prob, image, fov, threshold=thr, av_classifier=av)
            ref = analyse_vessels(manual.astype(np.float32), image, fov, threshold=0.5, av_classifier=av)
            row = {"image_id": image_id, "fold": int(extra["fold"]), "disc_found": bool(ref.disc.found)}
            for k in MARKERS:
                row[f"{k}_pred"] = pred.biomarkers[k].value
                row[f"{k}_manual"] = ref.biomarkers[k].value
            # FD by PVBM's box-size convention too (see box_counting_fd; docs/bench_vessel_graph.md)
            h, w = fov.shape
            sizes = np.linspace(5, int(0.6 * min(h, w)), 20).astype(int)
            row["fractal_dimension_pvbm_sizes_pred"] = box_counting_fd(pred.mask, sizes=sizes, crop=False)
            row["fractal_dimension_pvbm_sizes_manual"] = box_counting_fd(ref.mask, sizes=sizes, crop=False)
            rows.append(row)
            print(f"{image_id}: FD {row['fractal_dimension_pred']:.4f} vs {row['fractal_dimension_manual']:.4f}; "
                  f"AVR(K) {row['avr_knudtson_pred']} vs {row['avr_knudtson_manual']}", flush=True)

    summary = {}
    for k in (*MARKERS[:1], "fractal_dimension_pvbm_sizes", *MARKERS[1:]):
        pairs = np.array([(r[f"{k}_pred"], r[f"{k}_manual"]) for r in rows
                          if r[f"{k}_pred"] is not None and r[f"{k}_manual"] is not None], float)
        entry = {"n": int(len(pairs))}
        if len(pairs):
            d = pairs[:, 0] - pairs[:, 1]
            entry.update(mean_abs_diff=float(np.abs(d).mean()), mean_diff=float(d.mean()),
                         max_abs_diff=float(np.abs(d).max()))
        if len(pairs) >= 3 and pairs[:, 0].std() > 0 and pairs[:, 1].std() > 0:
            entry["pearson_r"] = float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])
        summary[k] = entry

    print("\n| biomarker | n | mean abs diff | mean diff (pred - manual) | max abs diff | Pearson r |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, e in summary.items():
        if e["n"]:
            r = f"{e['pearson_r']:.3f}" if "pearson_r" in e else "-"
            print(f"| {k} | {e['n']} | {e['mean_abs_diff']:.4f} | {e['mean_diff']:+.4f} | {e['max_abs_diff']:.4f} | {r} |")
        else:
            print(f"| {k} | 0 | - | - | - | - |")
    result = {"command": " ".join(sys.argv), "date": dt.date.today().isoformat(),
              "machine": f"{platform.machine()} {platform.processor()}", "models": [str(m) for m in model_dirs],
              "rows": rows, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
