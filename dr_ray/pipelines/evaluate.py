"""``dr-ray evaluate``: out-of-fold predictions of every fold model of a train run, MC-dropout uncertainty, and one
self-contained HTML report.

For each fold k of ``<output.dir>/<run>/cv.json`` the model ``fold_k/model`` predicts the images of fold k (which
it never trained on) in a Ray Data actor pool (:class:`ClassifierActor`, GPU when configured): deterministic
softmax probabilities, the Monte-Carlo-dropout mean over ``evaluate.mc_samples`` passes and its predictive entropy
(DCAT's uncertainty). Predictions go to ``<run>/evaluation/predictions/fold_<k>/status=*/`` (an image that fails
to decode is a quarantined row with its reason; rows in = predicted + quarantined, per fold). The driver then
reads the predictions (a few numbers per image) and writes ``<run>/evaluation/report.html``: metrics per outer test
fold and pooled out-of-fold with patient-level bootstrap intervals (``evaluate.bootstrap`` resamples), the mean over
folds with its Student-t interval clipped to the metric's range (labelled), the numbers that selected the epoch
(apart), the comparison with the train run's baseline (corrected resampled t, DeLong), a "patient-level folds"
header line, ROC and PR curves per fold, confusion matrix, calibration plot, the entropy
histogram, the most uncertain cases, and Grad-CAM overlays on sample images. Plots are also saved as PNG files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.report_sections import (SAMPLE_MAPS, gradcam_section, image_rows, json_default, metric_keys,
                                              plots_section, sample_maps_section, uncertain_section)
from dr_ray.pipelines.runtime import init_ray, stage_dir

log = logging.getLogger(__name__)



class ClassifierActor:
    """Ray Data actor: one fold model (a saved model directory) over whole batches of joined rows.

    Input: numpy batches of the joined columns the model's InputSpec names. Output columns: ``image_id``, ``fold``,
    ``label``, ``probs`` (B, C) float32 (eval mode), ``mc_probs`` (B, C) (mean of ``mc_samples`` dropout passes),
    ``entropy`` (B,) nats of ``mc_probs``, ``status``, ``error``. A row whose inputs do not decode is quarantined
    (NaN probabilities, the reason in ``error``); a failing model or GPU fails the task (Ray retries it).
    """

    def __init__(self, model_dir: str, *, use_gpu: bool = False, amp_bf16: bool = True, threads: int = 1,
                 mc_samples: int = 10) -> None:
        import torch

        from dr_ray.models import load_model_dir
        from dr_ray.training.fusion_data import InputSpec

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("evaluate.gpus_per_actor > 0 but this actor sees no CUDA device")
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.amp = bool(amp_bf16 and use_gpu)
        self.model, meta = load_model_dir(model_dir, map_location=self.device)
        self.spec = InputSpec.from_dict(meta["extra"]["inputs"])
        self.mc_samples = int(mc_samples)

    def _decode(self, batch: dict) -> tuple[dict | None, list[str | None]]:
        from dr_ray.training.fusion_data import decode_rows

        n = len(batch[C.IMAGE_ID])
        try:
            return decode_rows(batch, self.spec), [None] * n
        except ValueError:
            pass
        # find the undecodable rows; decode the others
        errors: list[str | None] = [None] * n
        good = []
        for i in range(n):
            try:
                decode_rows({k: v[i:i + 1] for k, v in batch.items()}, self.spec)
                good.append(i)
            except ValueError as e:
                errors[i] = str(e)
        if not good:
            return None, errors
        return decode_rows({k: v[good] for k, v in batch.items()}, self.spec), errors

    def score(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
        """One numpy batch of joined rows -> ``probs`` (B, C) (eval mode), ``mc_probs`` (B, C) (MC-dropout mean),
        ``entropy`` (B,) nats and the per-row decode error (None = scored; NaN probabilities otherwise)."""
        return self.score_decoded(*self._decode(batch))

    def score_decoded(self, decoded: dict | None, errors: list[str | None]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
        """:meth:`score` of rows already decoded by :meth:`_decode` (``decoded`` holds the rows without an error)."""
        import torch

        from dr_ray.models.classifiers import mc_dropout_predict
        from dr_ray.training.classify import predict
        from dr_ray.training.fusion_data import collate, to_device

        n = len(errors)
        c = self.spec.num_classes
        probs = np.full((n, c), np.nan, np.float32)
        mc = np.full((n, c), np.nan, np.float32)
        entropy = np.full(n, np.nan, np.float32)
        ok = [i for i in range(n) if errors[i] is None]
        if decoded is not None:
            cb = collate(decoded)
            _, _, p = predict(self.model, [cb], self.device, mean=self.model.spec.mean, std=self.model.spec.std,
                              amp=self.amp)
            probs[ok] = p
            if self.mc_samples > 1:
                b = to_device(cb, self.device, mean=self.model.spec.mean, std=self.model.spec.std)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    m, h = mc_dropout_predict(self.model, b, self.mc_samples)
                mc[ok], entropy[ok] = m, h
            else:
                from dr_ray.training.classification_metrics import predictive_entropy

                mc[ok], entropy[ok] = p, predictive_entropy(p)
        return probs, mc, entropy, errors

    def __call__(self, batch: dict) -> dict:
        from dr_ray.training.fusion_data import labels_for_task

        n = len(batch[C.IMAGE_ID])
        probs, mc, entropy, errors = self.score(batch)
        ok = [i for i in range(n) if errors[i] is None]
        grades = list(batch[C.GRADE])
        labels = np.full(n, -1, np.int64)
        if ok:
            labels[ok] = labels_for_task([grades[i] for i in ok], self.spec.task)
        return {C.IMAGE_ID: np.asarray(batch[C.IMAGE_ID], dtype=object),
                C.FOLD: np.asarray(batch[C.FOLD], np.int64), "label": labels, "probs": probs, "mc_probs": mc,
                "entropy": entropy,
                C.STATUS: np.asarray([C.STATUS_OK if e is None else C.STATUS_QUARANTINED for e in errors], object),
                C.ERROR: np.asarray(errors, dtype=object)}


def read_fold_predictions(path: str) -> pa.Table:
    """Every prediction row (both ``status=`` partitions, ``status`` as a column) under one fold's folder."""
    filesystem, inner = fs.resolve(path)
    return pads.dataset(inner, filesystem=filesystem, format="parquet", partitioning="hive").to_table()


def predict_fold(cfg: Config, model_dir: str, fold: int, out: str) -> dict:
    """Out-of-fold predictions of one fold model -> ``out/status=*/``; returns counts that must reconcile."""
    import ray

    from dr_ray.models import read_metadata
    from dr_ray.pipelines.fusion_read import rows_dataset
    from dr_ray.training.fusion_data import InputSpec

    e = cfg.evaluate
    meta = read_metadata(model_dir)
    spec = InputSpec.from_dict(meta["extra"]["inputs"])
    ok_dir = fs.join(meta["extra"]["fusion_data"], f"{C.STATUS}={C.STATUS_OK}")
    if not fs.is_dir(ok_dir):
        raise FileNotFoundError(f"{model_dir}: its training data {ok_dir} is gone (rerun `dr-ray train`)")
    expected = pads.dataset(fs.resolve(ok_dir)[1], filesystem=fs.resolve(ok_dir)[0], format="parquet").to_table(
        columns=[C.FOLD])
    n_in = int(pc.sum(pc.equal(expected.column(0), fold)).as_py() or 0)
    if fs.is_dir(out):
        for f in fs.list_files(out, recursive=True):
            fs.delete_file(f)  # predictions are derived: a rerun replaces them
    # the joined data is an index: each read task fetches its rows' images/maps/graphs from the stage shards
    ds = rows_dataset(meta["extra"]["fusion_data"], spec.columns(), fold=fold, fetch_cpus=e.cpus_per_actor)
    ds = ds.map_batches(ClassifierActor, batch_format="numpy", batch_size=e.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=e.actors), num_gpus=e.gpus_per_actor,
                        num_cpus=e.cpus_per_actor,
                        fn_constructor_kwargs={"model_dir": model_dir, "use_gpu": e.gpus_per_actor > 0,
                                               "amp_bf16": e.amp_bf16, "threads": int(e.cpus_per_actor),
                                               "mc_samples": e.mc_samples})
    t0 = time.perf_counter()
    ds.write_parquet(out, partition_cols=[C.STATUS])
    seconds = time.perf_counter() - t0
    got = read_fold_predictions(out) if fs.is_dir(out) else pa.table({C.STATUS: pa.array([], pa.string())})
    ok = int(pc.sum(pc.equal(got.column(C.STATUS), C.STATUS_OK)).as_py() or 0) if got.num_rows else 0
    counts = {"fold": fold, "rows_in": n_in, "predicted": ok, "quarantined": got.num_rows - ok, "seconds": seconds}
    if got.num_rows != n_in:
        raise RuntimeError(f"evaluate fold {fold}: {n_in} images in, {got.num_rows} prediction rows out")
    return counts


def run_evaluate(cfg: Config) -> dict:
    """Predict every fold of the train run out-of-fold and write the HTML report; returns a summary."""
    from dr_ray.report.html import Report
    from dr_ray.report.stats_tables import (comparison_rows, delong_rows, fold_mean_rows, patient_level_line,
                                            pooled_rows, selection_rows)
    from dr_ray.training.classification_metrics import classification_metrics, cv_summary
    from dr_ray.training.stats_bootstrap import bootstrap_metrics

    e = cfg.evaluate
    if e.dataset:
        from dr_ray.pipelines.external import run_external_evaluate

        return run_external_evaluate(cfg)
    run = e.run or cfg.train.name
    run_dir = Path(stage_dir(cfg.output.dir, run))
    cv_path = run_dir / "cv.json"
    if not cv_path.is_file():
        raise FileNotFoundError(f"{cv_path} not found: run `dr-ray train` (train.name={run}) first, or set "
                                f"evaluate.run to a train run under {cfg.output.dir}")
    cv = json.loads(cv_path.read_text())
    model_dirs: dict[str, str] = cv["model_dirs"]
    out = run_dir / "evaluation"
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)
    counts = [predict_fold(cfg, model_dirs[k], int(k), str(out / "predictions" / f"fold_{k}"))
              for k in sorted(model_dirs, key=int)]
    table = read_fold_predictions(str(out / "predictions"))
    ok_t = table.filter(pc.equal(table.column(C.STATUS), C.STATUS_OK))
    bad_t = table.filter(pc.equal(table.column(C.STATUS), C.STATUS_QUARANTINED))
    probs = np.asarray(ok_t.column("probs").to_pylist(), np.float64)
    mc = np.asarray(ok_t.column("mc_probs").to_pylist(), np.float64)
    labels = np.asarray(ok_t.column("label").to_pylist(), np.int64)
    folds = np.asarray(ok_t.column(C.FOLD).to_pylist(), np.int64)
    entropy = np.asarray(ok_t.column("entropy").to_pylist(), np.float64)
    ids = ok_t.column(C.IMAGE_ID).to_pylist()
    n_classes = probs.shape[1]
    task = "referable" if n_classes == 2 else "grade"
    score = probs[:, 1] if n_classes == 2 else probs[:, 2:].sum(1)  # P(referable)
    ref_labels = labels if n_classes == 2 else (labels >= 2).astype(np.int64)
    grades = labels if n_classes == 5 else np.asarray(
        [None] * len(labels))  # grade only known per row for 5-class; filled from the catalog below
    if n_classes == 2 and len(ids):
        first_model = model_dirs[sorted(model_dirs, key=int)[0]]
        from dr_ray.models import read_metadata

        ok_dir = fs.join(read_metadata(first_model)["extra"]["fusion_data"], f"{C.STATUS}={C.STATUS_OK}")
        g = image_rows(ok_dir, ids, [C.IMAGE_ID, C.GRADE])
        gmap = dict(zip(g[C.IMAGE_ID], g[C.GRADE]))
        grades = np.asarray([gmap.get(i) for i in ids], dtype=object)

    per_fold = []
    for k in sorted(set(folds.tolist())):
        m = folds == k
        per_fold.append({"fold": int(k), **classification_metrics(labels[m], probs[m])})
    pooled = classification_metrics(labels, probs) if len(labels) else {}
    mc_pooled = classification_metrics(labels, mc / mc.sum(1, keepdims=True)) if len(labels) else {}
    summary_cv = cv_summary([{k: v for k, v in f.items() if k != "fold"} for f in per_fold])
    pooled_ci: dict = {}
    if len(labels):
        first_model = model_dirs[sorted(model_dirs, key=int)[0]]
        from dr_ray.models import read_metadata

        ok_dir = fs.join(read_metadata(first_model)["extra"]["fusion_data"], f"{C.STATUS}={C.STATUS_OK}")
        pr = image_rows(ok_dir, ids, [C.IMAGE_ID, C.PATIENT_ID])
        pmap = dict(zip(pr[C.IMAGE_ID], pr[C.PATIENT_ID]))
        missing = [i for i in ids if pmap.get(i) is None]
        if missing:
            raise ValueError(f"evaluate: {len(missing)} predicted image(s) have no patient_id in {ok_dir}, e.g. "
                             f"{missing[:3]}: cannot resample patients")
        pooled_ci = bootstrap_metrics(labels, probs, [pmap[i] for i in ids], n_boot=e.bootstrap,
                                      seed=e.bootstrap_seed)

    report = Report(f"dr-ray evaluation: {run} ({cv['model']}, {task})")
    report.add_text(patient_level_line(cv))
    report.add_key_values({"run": str(run_dir), "model": cv["model"], "modalities": ", ".join(cv["modalities"]),
                           "task": task, "folds": len(per_fold), "images predicted": int(len(labels)),
                           "quarantined": int(bad_t.num_rows), "training data hash": cv.get("train_data_hash"),
                           "MC-dropout passes": e.mc_samples})
    report.add_heading("Cross-validation (out-of-fold)", 2)
    report.add_text("Each image is scored once, by the model of the fold that held it out (its outer test fold). "
                    "Per-fold rows are those outer test folds; \"pooled\" puts every out-of-fold prediction together. "
                    "An undefined metric (e.g. AUC of a fold with one class only) is n/a, never 0.5.")
    keys = metric_keys(n_classes)
    report.add_table([{"split": f"outer test fold {f['fold']}", **{k: f.get(k) for k in keys}} for f in per_fold]
                     + [{"split": "pooled out-of-fold", **{k: pooled.get(k) for k in keys}}], columns=["split", *keys])
    report.add_heading("Pooled out-of-fold metrics with patient-level bootstrap intervals", 3)
    report.add_text("Percentile bootstrap over patients (both eyes of a patient are resampled together), "
                    f"{e.bootstrap} resamples, seed {e.bootstrap_seed}. A resample on which a metric is undefined "
                    "is counted, and the interval is withheld when more than 5% are.")
    rows = pooled_rows(pooled_ci, keys)
    if rows:
        report.add_table(rows)
    report.add_heading("Mean over outer test folds", 3)
    report.add_text("Student t interval over the folds, clipped to the metric's range; with few folds it is a rough "
                    "guide (folds share training data), the pooled bootstrap interval above is the one to cite.")
    report.add_table(fold_mean_rows(summary_cv, keys) or [{"metric": "none", "note": "no fold metrics"}])
    selected = selection_rows(cv.get("folds", []), [*keys, "loss"])
    if selected:
        report.add_heading("Numbers that selected something (not test numbers)", 3)
        report.add_text("Early stopping, the LR schedule and the epoch choice read these splits; they are shown for "
                        "completeness and are optimistic by construction.")
        report.add_table(selected)
    if "comparison" in cv:
        comp = cv["comparison"]
        report.add_heading(f"Paired test against {comp['baseline']}", 3)
        report.add_text("Per metric over the common folds: Nadeau-Bengio corrected resampled t test (the variance "
                        "is inflated by n_test/n_train because folds share training data); the Wilcoxon signed-rank "
                        "p only where the number of folds can reach p < 0.05 (5 folds: the smallest two-sided p is "
                        "0.0625). DeLong's test compares the pooled out-of-fold AUCs on the images both runs scored.")
        if comp.get("note"):
            report.add_text(comp["note"])
        report.add_table(comparison_rows(comp.get("metrics", {})) or [{"metric": "none", "note": "no common metric"}])
        if "delong" in comp:
            report.add_table(delong_rows(comp["delong"]))

    groups = {f"fold {k}": folds == k for k in sorted(set(folds.tolist()))}
    plots_section(report, plots_dir, labels=labels, probs=probs, score=score, ref_labels=ref_labels,
                   entropy=entropy, groups=groups, where="out-of-fold")
    report.add_heading("Uncertainty", 2)
    report.add_key_values({"MC-dropout pooled AUC": mc_pooled.get("auc"), "MC-dropout pooled ECE": mc_pooled.get("ece"),
                           "median entropy (nats)": float(np.median(entropy)) if len(entropy) else None})
    from dr_ray.models import read_metadata

    fold_dirs = {k: fs.join(read_metadata(model_dirs[k])["extra"]["fusion_data"], f"{C.STATUS}={C.STATUS_OK}")
                 for k in model_dirs}
    uncertain_section(report, plots_dir, ids=ids, entropy=entropy, score=score, n=e.uncertain_cases,
                       row_of=lambda i: {"image_id": ids[i], "fold": int(folds[i]), "grade": grades[i],
                                         "label": int(labels[i]), "p(referable)": float(score[i]),
                                         "entropy": float(entropy[i])},
                       ok_dir_of=lambda i: fold_dirs[str(int(folds[i]))])
    preds = {"image_id": ids, "fold": folds, "score": score, "grade": grades}
    shown = gradcam_section(report, model_dirs, preds, e.gradcam_images, plots_dir)
    if shown:  # one joined index serves every fold of a run
        ids4 = list(shown)[:SAMPLE_MAPS]
        sample_maps_section(report, plots_dir, fold_dirs[str(int(folds[ids.index(ids4[0])]))], ids4, shown)
    if bad_t.num_rows:
        report.add_heading("Quarantined", 2)
        report.add_table(bad_t.select([C.IMAGE_ID, C.FOLD, C.ERROR]).to_pylist())
    report_path = report.write(out / "report.html")
    summary = {"run": run, "report": str(report_path), "predictions": str(out / "predictions"),
               "counts": counts, "pooled": pooled, "pooled_ci": pooled_ci, "per_fold": per_fold, "cv": summary_cv,
               "patient_level": cv.get("patient_level"),
               "mc_dropout_pooled": mc_pooled}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1, allow_nan=True, default=json_default))
    return summary


__all__ = ["ClassifierActor", "predict_fold", "read_fold_predictions", "run_evaluate"]
