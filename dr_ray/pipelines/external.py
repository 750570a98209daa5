"""External validation (``dr-ray evaluate --set evaluate.dataset=<a processed dataset's output.dir>``): the rows
``dr-ray predict`` wrote there (:mod:`dr_ray.pipelines.predict`) scored against that dataset's grades, in the same
report as out-of-fold evaluation, its header naming the train and the test dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.report_sections import (SAMPLE_MAPS, gradcam_section, json_default, metric_keys, plots_section,
                                              sample_maps_section, uncertain_section)


def _train_dataset(run_dir: str) -> str:
    """"<data.dataset> (<data.root>)" of the train run at ``run_dir`` (its saved config.yaml), for report headers."""
    import yaml

    try:
        data = (yaml.safe_load(Path(run_dir, "config.yaml").read_text()) or {}).get("data", {})
    except (OSError, yaml.YAMLError) as err:
        return f"unknown ({run_dir}/config.yaml: {type(err).__name__})"
    labels = f", labels {data['labels']}" if data.get("labels") else ""
    return f"{data.get('dataset', '?')} ({data.get('root') or 'built-in sample'}{labels})"


def run_external_evaluate(cfg: Config) -> dict:
    """External validation: ``dr-ray predict``'s rows in ``<evaluate.dataset>/<predict.name>/`` scored against
    that dataset's grades; report + metrics in ``<that folder>/evaluation/``. Images without a grade are
    predicted but not scored (counted); no threshold or model is chosen on these images."""
    from dr_ray.io.folds import patient_level
    from dr_ray.pipelines.predict import read_predictions
    from dr_ray.pipelines.runtime import resolve_path
    from dr_ray.report.html import Report
    from dr_ray.report.stats_tables import patient_level_line, pooled_rows
    from dr_ray.training.classification_metrics import classification_metrics
    from dr_ray.training.fusion_data import labels_for_task
    from dr_ray.training.stats_bootstrap import bootstrap_metrics

    e = cfg.evaluate
    pred_dir = fs.join(resolve_path(e.dataset, "evaluate.dataset"), cfg.predict.name)
    table, info = read_predictions(pred_dir)
    ens = info["ensemble"]
    ok_t = table.filter(pc.equal(table.column(C.STATUS), C.STATUS_OK))
    bad_t = table.filter(pc.equal(table.column(C.STATUS), C.STATUS_QUARANTINED))
    graded = ok_t.filter(pc.is_valid(ok_t.column(C.GRADE)))
    n_ungraded = ok_t.num_rows - graded.num_rows
    ids = graded.column(C.IMAGE_ID).to_pylist()
    grades = np.asarray(graded.column(C.GRADE).to_pylist(), dtype=object)
    labels = labels_for_task(grades.tolist(), ens["task"]) if len(ids) else np.zeros(0, np.int64)
    n_classes = 2 if ens["task"] == "referable" else 5
    probs = np.asarray(graded.column(C.PROBS).to_pylist(), np.float64).reshape(-1, n_classes)
    probs = probs / probs.sum(1, keepdims=True) if len(probs) else probs  # float32 storage: renormalise
    score = np.asarray(graded.column(C.P_REFERABLE).to_pylist(), np.float64)
    entropy = np.asarray(graded.column(C.ENTROPY).to_pylist(), np.float64)
    spread = np.asarray(graded.column(C.FOLD_SPREAD).to_pylist(), np.float64)
    ref_labels = (np.asarray([int(g) for g in grades], np.int64) >= 2).astype(np.int64)
    patients = graded.column(C.PATIENT_ID).to_pylist()
    pooled = classification_metrics(labels, probs) if len(labels) else {}
    pooled_ci = (bootstrap_metrics(labels, probs, patients, n_boot=e.bootstrap, seed=e.bootstrap_seed)
                 if len(labels) and e.bootstrap else {})
    level = patient_level(graded)
    out = Path(pred_dir) / "evaluation"
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    task = ens["task"]
    report = Report(f"dr-ray external validation: {ens.get('train_run')} ({ens.get('model')}, {task}) on "
                    f"{info.get('dataset')}")
    report.add_text(patient_level_line(level).replace("folds", "resampling")
                    + "; the ensemble never trained on these images only if the two datasets share no patient")
    report.add_key_values({
        "trained on": _train_dataset(ens["run_dir"]), "train run": ens["run_dir"],
        "tested on": f"{info.get('dataset')} ({info.get('output_dir')})", "predictions": pred_dir,
        "model": ens.get("model"), "modalities": ", ".join(ens.get("modalities", [])), "task": task,
        "ensemble": f"{len(ens['folds'])} fold models (folds {ens['folds']}), mean probability",
        "model hashes": ", ".join(ens["model_hashes"]), "images scored (graded)": len(ids),
        "predicted without a grade (not scored)": n_ungraded, "quarantined": bad_t.num_rows,
        "MC-dropout passes per model": info.get("mc_samples"), "threshold (fixed in advance)": info.get("threshold")})
    report.add_heading("External validation", 2)
    report.add_text("Every graded image of the test dataset, scored once by the mean of the train run's fold "
                    "models. Nothing (epoch, threshold, hyperparameter) was selected on these images. Metrics at "
                    "the class with the highest probability; an undefined metric is n/a.")
    keys = metric_keys(n_classes)
    report.add_table([{"split": "external (all graded images)", **{k: pooled.get(k) for k in keys}}],
                     columns=["split", *keys])
    report.add_heading("Metrics with patient-level bootstrap intervals", 3)
    report.add_text(f"Percentile bootstrap over patients (both eyes of a patient resampled together), {e.bootstrap} "
                    f"resamples, seed {e.bootstrap_seed}.")
    rows = pooled_rows(pooled_ci, keys, split="external")
    if rows:
        report.add_table(rows)
    plots_section(report, plots_dir, labels=labels, probs=probs, score=score, ref_labels=ref_labels,
                   entropy=entropy, groups={}, where="external")
    report.add_heading("Uncertainty", 2)
    report.add_key_values({"median entropy (nats)": float(np.median(entropy)) if len(entropy) else None,
                           "median fold spread of p(referable)": float(np.median(spread)) if len(spread) else None})
    data_ok = fs.join(info["data"]["path"], f"{C.STATUS}={C.STATUS_OK}")
    uncertain_section(report, plots_dir, ids=ids, entropy=entropy, score=score, n=e.uncertain_cases,
                       row_of=lambda i: {"image_id": ids[i], "grade": grades[i], "p(referable)": float(score[i]),
                                         "fold spread": float(spread[i]), "entropy": float(entropy[i])},
                       ok_dir_of=lambda i: data_ok)
    k0 = str(ens["folds"][0])
    preds = {"image_id": ids, "fold": np.full(len(ids), int(k0)), "score": score, "grade": grades}
    shown = gradcam_section(report, {k0: ens["model_dirs"][0]}, preds, e.gradcam_images, plots_dir, ok_dir=data_ok,
                            who=f"by the ensemble's fold-{k0} model")
    if shown:
        sample_maps_section(report, plots_dir, data_ok, list(shown)[:SAMPLE_MAPS], shown)
    if bad_t.num_rows:
        report.add_heading("Quarantined", 2)
        report.add_table(bad_t.select([C.IMAGE_ID, C.ERROR]).to_pylist())
    report_path = report.write(out / "report.html")
    summary = {"run": ens.get("train_run"), "train_run_dir": ens["run_dir"], "dataset": info.get("dataset"),
               "report": str(report_path), "predictions": pred_dir, "scored": len(ids), "ungraded": n_ungraded,
               "quarantined": bad_t.num_rows, "pooled": pooled, "pooled_ci": pooled_ci, **level}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1, allow_nan=True, default=json_default))
    return summary


__all__ = ["run_external_evaluate"]
