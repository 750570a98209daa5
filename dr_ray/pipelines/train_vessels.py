"""``dr-ray train-vessels``: binary vessel U-Net on Ray Train, from catalog readers or synthetic frames.

Writes under ``<output.dir>/<train_vessels.name>/``:
    model/         saved model directory (``save_model_dir``: model.pt + metadata.json) of the last epoch
    metrics.json   per-epoch train loss and validation dice/iou/auc/sensitivity/specificity/precision/accuracy
    config.yaml    the resolved config
    ray/run/       Ray Train storage: per-epoch checkpoints; a second run with the same name resumes here
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from dr_ray.config import Config, to_dict
from dr_ray.config.schema import VESSEL_FIELD_DEGREES, VESSEL_FIELD_DEGREES_BY_IMAGE
from dr_ray.io import fs
from dr_ray.pipelines.runtime import export_latest_checkpoint, init_ray, stage_dir, training_dir
from dr_ray.training.data import VesselRecord, split_by_patient, train_data_hash

log = logging.getLogger(__name__)

RAY_RUN_NAME = "run"


def synthetic_vessel_records(root: str, seeds, size: int) -> list[VesselRecord]:
    """One record per seed: ``make_fundus(seed, size, size, lesions=False)`` written as files under ``root``
    (:func:`dr_ray.testing.write_synthetic_set`), one patient each."""
    from dr_ray.testing import write_synthetic_set

    return [VesselRecord(image_id=r["image_id"], patient_id=r["image_id"], path=r["path"],
                         vessel_mask_path=r["vessel_mask_path"], fov_mask_path=r["fov_mask_path"])
            for r in write_synthetic_set(root, seeds, size, lesions=False)]


def vessel_records(cfg: Config) -> tuple[list[VesselRecord], list[str]]:
    """(records, ids skipped because they have no vessel or A/V mask) for ``cfg.train_vessels``."""
    tv = cfg.train_vessels
    if not tv.datasets:
        seeds = [tv.seed * 100_003 + i for i in range(tv.synthetic_images)]
        root = os.path.join(os.path.abspath(stage_dir(cfg.output.dir, tv.name)), "synthetic_data")
        return synthetic_vessel_records(root, seeds, tv.synthetic_size), []
    from dr_ray.io.catalog import read_catalog

    records, skipped = [], []
    for dataset, root in zip(tv.datasets, tv.roots):
        root = root if fs.is_uri(root) else os.path.abspath(root)  # Ray workers may run in another cwd
        result = read_catalog(dataset, root)
        for p in result.problems:
            log.warning("%s catalog: %s", dataset, p)
        for row in result.table.to_pylist():
            rec = VesselRecord(image_id=row["image_id"], patient_id=row["patient_id"] or row["image_id"],
                               path=row["path"], vessel_mask_path=row.get("vessel_mask_path") or "",
                               av_mask_path=row.get("av_mask_path") or "", fov_mask_path=row.get("fov_mask_path") or "",
                               field_degrees=VESSEL_FIELD_DEGREES_BY_IMAGE.get(
                                   row["image_id"], VESSEL_FIELD_DEGREES[dataset]))
            if rec.vessel_mask_path or rec.av_mask_path:
                records.append(rec)
            else:
                skipped.append(rec.image_id)
    if skipped:
        log.warning("%d images have no vessel or A/V mask and are not used: %s", len(skipped), skipped[:20])
    if not records:
        raise ValueError(f"train_vessels.datasets={list(tv.datasets)}: no image with a vessel or A/V mask found")
    return records, skipped


def run_train_vessels(cfg: Config) -> dict:
    """Train (or resume) the vessel model; returns {"final": last epoch's metrics, "history", "model_dir", ...}."""
    from dr_ray.models.pretrained import check_weight_file, mark_pretrained_file
    from dr_ray.training.ray_train import build_model, fit_vessels

    tv = cfg.train_vessels
    out = training_dir(cfg, tv.name, "train-vessels")
    records, skipped = vessel_records(cfg)
    train, val = split_by_patient(records, val_fraction=tv.val_fraction, seed=tv.seed)
    data_hash = train_data_hash(train)
    log.info("train-vessels: %d training, %d validation images (%d without masks skipped)", len(train), len(val),
             len(skipped))
    # a missing or unreadable weight file fails here, before any worker starts; its sha256 goes into the metadata
    weight_file = check_weight_file(tv.pretrained_file) if tv.pretrained_file else None
    init_ray(cfg.ray)
    result = fit_vessels(tv, train, val, storage_path=str(out / "ray"), name=RAY_RUN_NAME, preprocess=cfg.preprocess)
    model_dir = out / "model"
    _, history = export_latest_checkpoint(
        result, model_dir, config=to_dict(cfg), data_hash=data_hash, build=lambda: mark_pretrained_file(
            build_model(dataclasses.replace(tv, pretrained=False, pretrained_file="")), weight_file))
    summary = {
        "final": history[-1],
        "history": history,
        "train_images": [r.image_id for r in train],
        "val_images": [r.image_id for r in val],
        "skipped_no_mask": skipped,
        "train_data_hash": data_hash,
        "model_dir": str(model_dir),
        "checkpoint": result.checkpoint.path,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    summary["metrics_path"] = str(out / "metrics.json")
    return summary


__all__ = ["run_train_vessels", "synthetic_vessel_records", "vessel_records"]
