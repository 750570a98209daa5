"""``dr-ray train``: a DR classifier (baseline or fusion model) on Ray Train with patient-level K-fold
cross-validation, from the joined stage outputs (:mod:`dr_ray.pipelines.fusion_data`).

Writes under ``<output.dir>/<train.name>/``:
    fold_<k>/model/   saved model directory of fold k (nested CV: the epoch with the lowest loss on the inner
                      validation split, a patient-level share ``train.inner_val_fraction`` of the outer training
                      folds, which also drives ReduceLROnPlateau and early stopping; fold k is never loaded
                      during training); metadata
                      ``extra``: fold, inputs (the InputSpec evaluation decodes with), best epoch and its metrics
    cv.json           every number labelled with its split: per fold the metrics of the exported model on its outer
                      test fold ("outer test fold k") and, apart, the numbers of the epoch choice ("selection":
                      inner validation), the chosen epoch, "protocol" (nested) and "patient_level" (false when
                      some images have no patient id, :func:`dr_ray.io.folds.patient_level`);
                      "cv": mean over folds with a Student-t interval clipped to the metric's range (labelled);
                      "pooled": pooled out-of-fold metrics with patient-level bootstrap intervals (train.bootstrap
                      resamples); "comparison" against ``train.baseline`` when set (corrected resampled t per
                      metric, DeLong on the pooled out-of-fold AUCs); data hash, modalities, resolved model kwargs
    oof_predictions.parquet   each image's out-of-fold probabilities (:mod:`dr_ray.pipelines.cv_stats`)
    oof/fold_<k>/     the raw outer-fold prediction rows (status ok | quarantined)
    cv_folds.csv      the per-fold metrics as a table
    config.yaml       the resolved config
    tensorboard/      per-fold TensorBoard scalars (``tensorboard --logdir <this folder>``)
    ray/fold_<k>/     Ray Train storage: per-epoch checkpoints; a rerun with the same name resumes each fold
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, to_dict
from dr_ray.io import columns as C
from dr_ray.io.folds import inner_split, patient_level
from dr_ray.pipelines.fusion_data import FusionData, stages_for
from dr_ray.pipelines.fusion_join import build_fusion_data
from dr_ray.pipelines.fusion_read import fold_datasets, read_index
from dr_ray.pipelines.runtime import init_ray, stage_dir, training_dir
from dr_ray.training.fusion_data import InputSpec, class_weights, labels_for_task, stats_normalisation

log = logging.getLogger(__name__)

CV_FILE = "cv.json"
# Metrics compared between runs and summarised over folds (the validation metrics of the best epoch).
CV_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk", "ece", "loss",
              "referable_auc", "referable_sensitivity", "referable_specificity", "referable_accuracy")


def fold_spec(t, data: FusionData, modalities: Sequence[str], index: pa.Table, fold: int | None = None, *,
              train_mask: np.ndarray | None = None) -> InputSpec:
    """The InputSpec of one model: biomarker standardisation from its training rows only (``train_mask``, a bool
    per ``index`` row; default: the rows outside fold ``fold``)."""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    if "stats" in modalities:
        if train_mask is None:
            train_mask = np.asarray(index.column(C.FOLD).to_pylist()) != fold
        train_rows = index.filter(pa.array(np.asarray(train_mask, bool)))
        mean, std = stats_normalisation({f: train_rows.column(f).to_pylist() for f in t.stats_features},
                                        t.stats_features)
    return InputSpec(modalities=tuple(modalities), task=t.task, image_size=t.image_size, lesion_size=t.lesion_size,
                     lesion_kinds=tuple(data.lesion_kinds) if "lesion" in modalities else (),
                     stats_features=tuple(t.stats_features) if "stats" in modalities else (),
                     stats_mean=mean, stats_std=std, image_input=t.image_input)


class NestedSplit(NamedTuple):
    """Bool masks over the index rows of one model: ``train`` (inner training rows) and ``val`` (the inner
    validation split that selects); rows in neither (the outer test fold, folds left out) are never loaded."""

    train: np.ndarray
    val: np.ndarray


def nested_split(index: pa.Table, train_folds: Sequence[int], *, fraction: float, seed: int) -> NestedSplit:
    """The inner split of the outer folds ``train_folds`` (:func:`dr_ray.io.folds.inner_split`); ValueError naming
    ``train.inner_val_fraction`` when either side is empty."""
    val = inner_split(index, train_folds, fraction=fraction, seed=seed)
    train = np.isin(np.asarray(index.column(C.FOLD).to_pylist()), list(train_folds)) & ~val
    if not train.any() or not val.any():
        raise ValueError(f"train.inner_val_fraction={fraction}: folds {list(train_folds)} give {int(train.sum())} "
                         f"inner training and {int(val.sum())} inner validation image(s); both must be non-empty")
    return NestedSplit(train, val)


def _ids_hash(ids) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def _val_ids_hash(index: pa.Table, fold: int) -> str:
    ids = sorted(index.filter(pc.equal(index.column(C.FOLD), fold)).column(C.IMAGE_ID).to_pylist())
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def compare_with_baseline(ours: list[dict], baseline_dir: Path, oof: pa.Table | None = None, *, n_boot: int = 2000,
                          seed: int = 0) -> dict:
    """Our folds against the baseline run's (same fold numbers): corrected resampled t per metric, Wilcoxon only
    when informative, DeLong on the pooled out-of-fold AUCs (:func:`dr_ray.pipelines.cv_stats.compare_with_baseline`)."""
    from dr_ray.pipelines.cv_stats import compare_with_baseline as compare

    return compare(ours, baseline_dir, CV_METRICS, oof=oof, n_boot=n_boot, seed=seed)


def _mlflow(cfg: Config, fold: int) -> dict | None:
    t = cfg.train
    if not t.mlflow_uri:
        return None
    flat = {f"train.{k}": (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            for k, v in to_dict(t).items()}
    return {"tracking_uri": t.mlflow_uri, "experiment_name": t.mlflow_experiment, "run_name": f"{t.name}/fold_{fold}",
            "params": flat}


def export_fold_model(result, t, spec: InputSpec, model_dir: Path, *, cfg: Config, data: FusionData, fold: int,
                      weight_file=None):
    """The best epoch's weights of a fold's Ray Train result -> a saved model directory; returns (history, best).
    ``weight_file``: the ``train.pretrained_file`` training started from (its sha256 goes into the metadata)."""
    from dr_ray.models import save_model_dir
    from dr_ray.models.pretrained import mark_pretrained_file
    from dr_ray.training.fit import load_best
    from dr_ray.training.ray_fusion import build_classifier

    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        best_state, history = load_best(d)
    best_epoch = int(history[-1]["best_epoch"])
    best = next(h for h in history if h["epoch"] == best_epoch)
    model = mark_pretrained_file(build_classifier(t, spec, pretrained=False), weight_file)
    model.load_state_dict(best_state)
    save_model_dir(model, model_dir, config=to_dict(cfg), train_data_hash=data.data_hash, overwrite=True,
                   extra={"fold": fold, "inputs": spec.to_dict(), "best_epoch": best_epoch, "metrics": best,
                          "fusion_data": data.path, "epochs_run": int(history[-1]["epoch"])})
    return history, best


def run_train(cfg: Config) -> dict:
    """Train (or resume) every configured fold; returns the CV summary (also written to ``cv.json``)."""
    from dr_ray.models.pretrained import check_weight_file
    from dr_ray.pipelines.cv_stats import (SPLIT_FOLD, SPLIT_FOLD_MEAN, fold_metrics, oof_table,
                                           outer_fold_predictions, pooled_summary, write_oof)
    from dr_ray.training.classification_metrics import cv_summary
    from dr_ray.training.ray_fusion import classifier_kwargs, fit_fold, model_modalities, tensorboard_callback

    t = cfg.train
    out = training_dir(cfg, t.name, "train")
    modalities = model_modalities(t)
    data = build_fusion_data(cfg, (*stages_for(modalities), *t.join))
    index = read_index(data, t.stats_features if "stats" in modalities else ())
    available = sorted(int(f) for f in pc.unique(index.column(C.FOLD)).to_pylist() if f is not None)
    folds = list(t.folds) or available
    missing = [f for f in folds if f not in available]
    if missing:
        raise ValueError(f"train.folds={list(t.folds)}: folds {missing} have no images (the data has folds "
                         f"{available}; data.folds sets K)")
    if len(available) < 2:
        raise ValueError(f"the joined data has only fold(s) {available}: cross-validation needs >= 2")
    labels = labels_for_task(index.column(C.GRADE).to_pylist(), t.task)
    fold_col = np.asarray(index.column(C.FOLD).to_pylist())
    log.info("train %s: model %s, modalities %s, %d images (%s), folds %s", t.name, t.model, modalities,
             index.num_rows, np.bincount(labels, minlength=t.num_classes).tolist(), folds)
    # a missing or unreadable weight file fails here, before any worker starts; its sha256 goes into the metadata
    weight_file = check_weight_file(t.pretrained_file) if t.pretrained_file else None
    init_ray(cfg.ray)
    per_fold: list[dict] = []
    oof_parts = []
    ids = np.asarray(index.column(C.IMAGE_ID).to_pylist(), dtype=object)
    for k in folds:
        split = nested_split(index, [f for f in available if f != k], fraction=t.inner_val_fraction, seed=t.seed)
        spec = fold_spec(t, data, modalities, index, train_mask=split.train)
        cw = class_weights(labels[split.train], t.num_classes)
        train_ds, val_ds = fold_datasets(data, spec, train_ids=ids[split.train].tolist(),
                                         val_ids=ids[split.val].tolist(), decode_batch_size=t.decode_batch_size,
                                         decode_cpus=t.decode_cpus, augment=t.augment)
        result = fit_fold(t, spec, fold=k, datasets={"train": train_ds, "val": val_ds}, class_weights=cw.tolist(),
                          storage_path=str(out / "ray"), name=f"fold_{k}",
                          callbacks=[tensorboard_callback(str(out / "tensorboard" / f"fold_{k}"))],
                          mlflow=_mlflow(cfg, k))
        history, best = export_fold_model(result, t, spec, out / f"fold_{k}" / "model", cfg=cfg, data=data, fold=k,
                                          weight_file=weight_file)
        row = {"fold": k, "best_epoch": best["epoch"], "epochs_run": history[-1]["epoch"],
               "train_images": int(split.train.sum()), "inner_val_images": int(split.val.sum()),
               "inner_val_ids_hash": _ids_hash(ids[split.val]), "val_images": int((fold_col == k).sum()),
               "val_ids_hash": _val_ids_hash(index, k),
               "train_rows_per_s": float(np.mean([h["train_rows_per_s"] for h in history])),
               "busy_fraction": float(np.nanmean([h["busy_fraction"] if h["busy_fraction"] is not None else np.nan
                                                  for h in history]))}
        # the epoch choice's own numbers stay apart from the reported ones: they come from the split that selected
        row["selection"] = {"split": "inner validation (selection only): patient-level split of the outer training "
                                     f"folds; it chose epoch {best['epoch']} and drove early stopping and the LR schedule",
                            **{m: best.get(f"val_{m}") for m in CV_METRICS if f"val_{m}" in best}}
        # the reported numbers: the exported (chosen-epoch) model, once, on its outer test fold
        preds, counts = outer_fold_predictions(cfg, str(out / f"fold_{k}" / "model"), k, out / "oof" / f"fold_{k}")
        oof_parts.append(preds)
        row["test_images"], row["test_quarantined"] = counts["predicted"], counts["quarantined"]
        per_fold.append(row)
        log.info("fold %d: best epoch %d, val auc %s, val loss %.4f", k, best["epoch"], best.get("val_auc"),
                 best["val_loss"])
    oof = oof_table(oof_parts, index)
    write_oof(oof, out)
    outer = {f["fold"]: f for f in fold_metrics(oof)}
    for row in per_fold:
        row.update(outer.get(row["fold"], {"split": SPLIT_FOLD.format(k=row["fold"])}))
    summary = {
        "name": t.name, "model": t.model, "task": t.task, "modalities": list(modalities),
        "model_kwargs": classifier_kwargs(t), "folds": per_fold,
        "protocol": {"nested": True, "inner_val_fraction": t.inner_val_fraction, "inner_split_seed": t.seed,
                     "note": "each outer fold is scored once by a model whose LR schedule, early stopping and epoch "
                             "choice read only an inner validation split of the outer training folds"},
        **patient_level(index),
        "cv": cv_summary([{m: f.get(m) for m in CV_METRICS if m in f} for f in per_fold]),
        "cv_split": f"{SPLIT_FOLD_MEAN}; Student t interval over folds, clipped to the metric's range",
        "pooled": pooled_summary(oof, n_boot=t.bootstrap, seed=t.seed),
        "data": data.as_dict(), "train_data_hash": data.data_hash, "output": str(out),
        "model_dirs": {str(f["fold"]): str(out / f"fold_{f['fold']}" / "model") for f in per_fold},
    }
    if t.baseline:
        summary["comparison"] = compare_with_baseline(per_fold, Path(stage_dir(cfg.output.dir, t.baseline)), oof,
                                                      n_boot=t.bootstrap, seed=t.seed)
    (out / CV_FILE).write_text(json.dumps(summary, indent=1, allow_nan=True))

    with open(out / "cv_folds.csv", "w", newline="") as f:
        flat = [{**{k: v for k, v in r.items() if not isinstance(v, dict)},
                 **{f"{k}_{m}": x for k, v in r.items() if isinstance(v, dict) for m, x in v.items()}}
                for r in per_fold]
        cols = sorted({k for r in flat for k in r}, key=lambda c: (c != "fold", c))
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat)
    summary["cv_path"] = str(out / CV_FILE)
    return summary


__all__ = ["CV_FILE", "CV_METRICS", "NestedSplit", "compare_with_baseline", "export_fold_model", "fold_spec",
           "nested_split", "run_train"]
