"""Per-dataset quality of a vessel model along the path `dr-ray vessels` runs (the shipped model by default).

    python benchmarks/bench_vessel_model.py [--model dr_ray/vessels/data/vessel_model]
        [--metrics outputs/vessel_model/train_vessels_shipped/metrics.json] [--data ../shared/data]
        [--size 512] [--out outputs/vessel_model/eval.json]

For every vessel-labelled image in ``--data`` (DRIVE training 20, LES-AV 15, HRF-AV 2):
    deployed: the file's bytes -> ``preprocess_image`` at the default preprocess settings (FOV crop, ``--size`` px,
              LAB CLAHE) -> :class:`dr_ray.pipelines.vessels.VesselSegmenter` with the input size
              ``resolve_vessels`` derives from the model's metadata (its training FOV diameter), its input mode and
              the stage threshold 0.5 -> probabilities at the stored size. The manual mask and the dataset's FOV
              mask get the same crop (nearest); scored on FOV pixels of the crop.
    training scale: the image as the training loop validates it (``load_vessel_image`` with the model's
              fov_diameter, input mode and stored_input), whole image, scored inside its FOV.
Images are split into ``held-out`` (the training run's ``val_images`` in ``--metrics``), ``trained on`` (its
``train_images``) and ``not seen`` (neither: another dataset); held-out and not-seen rows are results, trained-on
rows show the fit. Metrics: Dice, sensitivity, specificity, AUC
(``SegmentationMeter``, pixels pooled per group) at threshold 0.5 (the stage default, chosen before any test);
A/V accuracy of the stage's graph + shipped A/V classifier on the predicted mask against the manual A/V labels
(RITE for DRIVE), on centreline pixels and on vessel pixels (pooled; crossings and unlabelled pixels left out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dr_ray.config import load_config  # noqa: E402
from dr_ray.config.schema import VESSEL_FIELD_DEGREES, VESSEL_FIELD_DEGREES_BY_IMAGE  # noqa: E402
from dr_ray.io import fs  # noqa: E402
from dr_ray.models import load_model_dir, read_metadata  # noqa: E402
from dr_ray.pipelines.vessels import VesselSegmenter, resolve_vessels, shipped_model_dir  # noqa: E402
from dr_ray.imaging.preprocess import preprocess_image  # noqa: E402
from dr_ray.training.data import VesselRecord, as_stored, crop_like_stored, load_vessel_image  # noqa: E402
from dr_ray.training.metrics import SegmentationMeter  # noqa: E402
from dr_ray.training import predict_image  # noqa: E402

DATASETS = (("drive", "DRIVE"), ("les_av", "LES-AV"), ("hrf_av", "HRF-AV"))


def records(data: Path) -> list[tuple[str, VesselRecord]]:
    from dr_ray.io.catalog import read_catalog

    out = []
    for name, folder in DATASETS:
        for row in read_catalog(name, str(data / folder)).table.to_pylist():
            out.append((name, VesselRecord(
                image_id=row["image_id"], patient_id=row["patient_id"] or row["image_id"], path=row["path"],
                vessel_mask_path=row.get("vessel_mask_path") or "", av_mask_path=row.get("av_mask_path") or "",
                fov_mask_path=row.get("fov_mask_path") or "",
                field_degrees=VESSEL_FIELD_DEGREES_BY_IMAGE.get(row["image_id"], VESSEL_FIELD_DEGREES[name]))))
    return out


def deployed(seg: VesselSegmenter, rec: VesselRecord, raw, pre_cfg):
    """(probabilities 0..1, manual mask, FOV, stored image, preprocess result) at the stored size, along the
    vessels stage's path."""
    size = pre_cfg.size
    data = fs.read_bytes(rec.path)
    image, mask, fov = as_stored(raw.image, raw.mask, raw.fov, data, pre_cfg)
    inputs, status, errors = seg.prepare_inputs([image], [size], [rec.image_id])
    if status[0] != "ok":
        raise RuntimeError(errors[0])
    prob = seg.probabilities(inputs, [size])[0].astype(np.float32) / 255.0
    return prob, mask, fov, image, preprocess_image(data, pre_cfg)


def av_labels_path(data: Path, name: str, rec: VesselRecord) -> str:
    """The A/V label map (0 background, 1 artery, 2 vein, 3 crossing) of ``rec``: RITE for DRIVE."""
    if name == "drive":
        return str(data / "DRIVE_AV" / "training" / "1st_manual" / f"{rec.image_id.split('/')[-1]}.png")
    return rec.av_mask_path


def av_accuracy(prob: np.ndarray, image: np.ndarray, size: int, margin: float, av_true: np.ndarray) -> dict:
    """The vessels stage's graph + shipped A/V classifier on the predicted mask, scored against the manual A/V
    labels (cropped like the image): accuracy on labelled centreline pixels of the predicted skeleton, and on
    predicted vessel pixels that are labelled artery/vein (each takes its nearest skeleton pixel's label)."""
    from scipy import ndimage

    from dr_ray.imaging.fov import circle_mask
    from dr_ray.vessels.analysis import analyse_vessels
    from dr_ray.vessels.av import load_default_av_classifier

    fov = circle_mask(size, margin=margin).astype(bool)
    res = analyse_vessels(np.round(prob * 255).astype(np.uint8), image, fov, av_classifier=load_default_av_classifier())
    g = res.graph
    lab = np.zeros((size, size), np.int8)
    for path, label in zip(g.edge_paths, g.av_label):
        if label in (1, 2):
            lab[path[:, 0], path[:, 1]] = label
    labelled = np.isin(av_true, (1, 2))
    centre = (lab > 0) & labelled
    _, (ri, ci) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
    vessel = (prob >= 0.5) & fov & labelled
    near = lab[ri, ci]
    return {"centreline_px": int(centre.sum()), "centreline_correct": int((lab[centre] == av_true[centre]).sum()),
            "vessel_px": int(vessel.sum()), "vessel_correct": int((near[vessel] == av_true[vessel]).sum())}


def _read_labels(path: str) -> np.ndarray:
    from PIL import Image
    import io

    with Image.open(io.BytesIO(fs.read_bytes(path))) as im:
        a = np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
    return a if a.ndim == 2 else a[..., 0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(shipped_model_dir()))
    ap.add_argument("--metrics", default="outputs/vessel_model/train_vessels_shipped/metrics.json")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="outputs/vessel_model/eval.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    meta = read_metadata(args.model)
    run = json.loads(Path(args.metrics).read_text()) if Path(args.metrics).is_file() else {}
    val_ids, train_ids = set(run.get("val_images") or []), set(run.get("train_images") or [])
    tv = (meta.get("config") or {}).get("train_vessels") or {}
    mode, d = tv.get("input_mode", "rgb"), int(tv.get("fov_diameter") or 0)
    cfg = load_config(None, [f"preprocess.size={args.size}"])
    v = resolve_vessels(cfg.vessels.__class__(model_dir=args.model), cfg.preprocess.fov_margin)
    seg = VesselSegmenter(v.model_dir, input_size=v.input_size, threads=args.threads)
    model, _ = load_model_dir(args.model)
    print(f"model {args.model}: {meta['spec']['name']}, input_mode {mode}, fov_diameter {d}, "
          f"stage input size {v.input_size} for {args.size}-px crops; {len(val_ids)} held-out ids")

    meters: dict[tuple, SegmentationMeter] = {}
    av_totals: dict[tuple, dict] = {}
    per_image = []
    for name, rec in records(Path(args.data)):
        group = "held-out" if rec.image_id in val_ids else "trained on" if rec.image_id in train_ids else "not seen"
        raw = load_vessel_image(rec)
        prob, mask, fov, stored, pre = deployed(seg, rec, raw, cfg.preprocess)
        av_raw = _read_labels(av_labels_path(Path(args.data), name, rec))
        av_true = np.zeros((args.size, args.size), np.int8)
        for k in (1, 2):  # artery, vein: cropped like the image
            av_true[crop_like_stored(av_raw == k, pre.fov, args.size, cfg.preprocess.fov_margin)] = k
        av = av_accuracy(prob, stored, args.size, cfg.preprocess.fov_margin, av_true)
        for key in ((name, group), ("all", group)):
            acc = av_totals.setdefault(key, dict.fromkeys(av, 0))
            for k, n in av.items():
                acc[k] += n
        im = load_vessel_image(rec, input_mode=mode, fov_diameter=d,
                               preprocess=cfg.preprocess if tv.get("stored_input") else None)
        p_train = predict_image(model, im.image, mean=model.spec.mean, std=model.spec.std)
        row = {"image_id": rec.image_id, "dataset": name, "group": group, **av}
        for path, (p, m, f) in (("deployed", (prob, mask, fov)), ("training scale", (p_train, im.mask, im.fov))):
            for key in ((name, group, path), ("all", group, path)):
                meters.setdefault(key, SegmentationMeter()).update(p, m, f)
            one = SegmentationMeter()
            one.update(p, m, f)
            row[path] = one.compute()["dice"]
        per_image.append(row)
        print(f"{rec.image_id:22s} {group:10s} dice deployed {row['deployed']:.4f}  training scale "
              f"{row['training scale']:.4f}", flush=True)

    table = []
    for (name, group, path), meter in sorted(meters.items()):
        m = meter.compute()
        n = sum(1 for r in per_image if (name in ("all", r["dataset"])) and r["group"] == group)
        table.append({"dataset": name, "group": group, "path": path, "images": n,
                      **{k: m[k] for k in ("dice", "sensitivity", "specificity", "auc")}})
    lines = ["| dataset | images | path | Dice | Se | Sp | AUC |", "|---|---:|---|---:|---:|---:|---:|"]
    for group in ("held-out", "not seen", "trained on"):
        if not any(t["group"] == group for t in table):
            continue
        lines.append(f"| **{group}** | | | | | | |")
        for t in table:
            if t["group"] == group:
                lines.append(f"| {t['dataset']} | {t['images']} | {t['path']} | {t['dice']:.4f} | "
                             f"{t['sensitivity']:.4f} | {t['specificity']:.4f} | {t['auc']:.4f} |")
    lines += ["", "| dataset | group | A/V accuracy, centreline px | A/V accuracy, vessel px |", "|---|---|---:|---:|"]
    for (name, group), t in sorted(av_totals.items()):
        lines.append(f"| {name} | {group} | {t['centreline_correct'] / max(1, t['centreline_px']):.3f} "
                     f"({t['centreline_px']}) | {t['vessel_correct'] / max(1, t['vessel_px']):.3f} ({t['vessel_px']}) |")
    print("\n".join(lines))
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "command": " ".join(sys.argv), "model": args.model,
              "stage_input_size": v.input_size, "table": table,
              "av": [{"dataset": k[0], "group": k[1], **t} for k, t in sorted(av_totals.items())], "per_image": per_image, "markdown": "\n".join(lines)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
