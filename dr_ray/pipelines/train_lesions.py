"""``dr-ray train-lesions``: multi-label lesion segmentation (lesion_unet or swin_unet) on Ray Train, from the
FGADR / IDRiD catalog readers or synthetic frames with known lesions.

Writes under ``<output.dir>/<train_lesions.name>/``:
    model/         saved model directory (model.pt + metadata.json, lesion kinds in the spec) of the last epoch
    encoder.pt     the segmentation encoder alone + encoder.json (a classifier's lesion branch loads it with
                   dr_ray.models.transfer.load_encoder_file / load_encoder: the poster's Table 2 transfer)
    metrics.json   per-epoch train loss and validation AUPR / Dice / IoU / precision per lesion (and their means)
    config.yaml    the resolved config
    ray/run/       Ray Train storage: per-epoch checkpoints; a rerun with the same name resumes here
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from dr_ray.config import Config, to_dict
from dr_ray.io import fs
from dr_ray.pipelines.runtime import export_latest_checkpoint, init_ray, stage_dir, training_dir
from dr_ray.training.lesion_data import (
    LesionRecord,
    lesion_data_hash,
    lesion_records_from_catalog,
    split_by_patient,
)

log = logging.getLogger(__name__)

RAY_RUN_NAME = "run"
SYNTHETIC_GRADE = 3  # severe NPDR: every synthetic frame carries each lesion kind


def synthetic_lesion_records(root: str, seeds, size: int, *, grade: int | None = None) -> list[LesionRecord]:
    """One record per seed: ``make_fundus(seed, size, size, grade=grade)`` written as files under ``root``
    (:func:`dr_ray.testing.write_synthetic_set`), every kind annotated, one patient each."""
    from dr_ray.io import columns as C
    from dr_ray.testing import write_synthetic_set

    return [LesionRecord(r["image_id"], r["image_id"], r["path"], dict(r["lesion_mask_paths"]), C.LESION_KINDS,
                         fov_mask_path=r["fov_mask_path"])
            for r in write_synthetic_set(root, seeds, size, lesions=True, grade=grade)]


def lesion_records(cfg: Config) -> list[LesionRecord]:
    """Training records of ``cfg.train_lesions``: catalog rows with lesion masks, or synthetic frames (written as
    files under ``<output.dir>/<train_lesions.name>/synthetic_data``)."""
    tl = cfg.train_lesions
    if not tl.datasets:
        seeds = [tl.seed * 100_003 + i for i in range(tl.synthetic_images)]
        root = os.path.join(os.path.abspath(stage_dir(cfg.output.dir, tl.name)), "synthetic_data")
        return synthetic_lesion_records(root, seeds, tl.synthetic_size, grade=SYNTHETIC_GRADE)
    from dr_ray.io.catalog import read_catalog

    records: list[LesionRecord] = []
    for dataset, root in zip(tl.datasets, tl.roots):
        root = root if fs.is_uri(root) else os.path.abspath(root)  # Ray workers may run in another cwd
        result = read_catalog(dataset, root)
        for p in result.problems:
            log.warning("%s catalog: %s", dataset, p)
        records += lesion_records_from_catalog(result.table, tl.kinds)
    if not records:
        raise ValueError(f"train_lesions.datasets={list(tl.datasets)}: no image with lesion masks found")
    return records


def run_train_lesions(cfg: Config) -> dict:
    """Train (or resume) the lesion model; returns {"final", "history", "model_dir", "encoder_path", ...}."""
    from dr_ray.models import artifact_hash
    from dr_ray.models.pretrained import check_weight_file, mark_pretrained_file
    from dr_ray.models.transfer import save_encoder
    from dr_ray.training.ray_train import build_lesion_model, fit_lesions

    tl = cfg.train_lesions
    out = training_dir(cfg, tl.name, "train-lesions")
    records = lesion_records(cfg)
    train, val = split_by_patient(records, val_fraction=tl.val_fraction, seed=tl.seed)
    data_hash = lesion_data_hash(train)
    log.info("train-lesions: %d training, %d validation images", len(train), len(val))
    # a missing or unreadable weight file fails here, before any worker starts; its sha256 goes into the metadata
    weight_file = check_weight_file(tl.pretrained_file) if tl.pretrained_file else None
    init_ray(cfg.ray)
    result = fit_lesions(tl, train, val, storage_path=str(out / "ray"), name=RAY_RUN_NAME)
    model, history = export_latest_checkpoint(
        result, out / "model", build=lambda: mark_pretrained_file(
            build_lesion_model(dataclasses.replace(tl, pretrained=False, pretrained_file="")), weight_file),
        config=to_dict(cfg), data_hash=data_hash)
    # the encoder alone, for a classifier's lesion branch (the poster's Table 2 transfer)
    save_encoder(model, out / "encoder.pt", source_model_hash=artifact_hash(out / "model"), overwrite=True)
    summary = {"final": history[-1], "history": history, "train_images": [r.image_id for r in train],
               "val_images": [r.image_id for r in val], "train_data_hash": data_hash,
               "model_dir": str(out / "model"), "encoder_path": str(out / "encoder.pt"),
               "checkpoint": result.checkpoint.path}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    summary["metrics_path"] = str(out / "metrics.json")
    return summary


__all__ = ["lesion_records", "run_train_lesions", "synthetic_lesion_records"]

