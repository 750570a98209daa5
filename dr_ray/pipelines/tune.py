"""``dr-ray tune``: an ASHA campaign over ``train.*`` settings (``tune.space``), each trial one Ray Train run inside
the outer folds ``tune.folds`` of the joined data (nested: trials train on the inner training rows of those folds and
are compared, stopped and selected on their inner validation split, ``train.inner_val_fraction`` of their patients;
no row of another fold is ever loaded).

Writes under ``<output.dir>/<tune.name>/``:
    campaign/          the Ray Tune experiment (trial folders with TensorBoard files, Tune's default logger); a
                       rerun with the same name restores it: finished trials are kept, unfinished and errored ones
                       resume (their Ray Train runs restart from their last checkpoint)
    trials/            the trials' Ray Train storage (checkpoints), one run per trial id
    results.parquet    one row per trial: its best epoch by ``tune.metric``, the sampled settings, status
    results.csv        the same table
    best_train.yaml    the whole resolved config with ``train`` set to the best trial's settings and ``train.folds``
                       to the untouched folds (every fold not in ``tune.folds``): ``dr-ray train --config <this
                       file>`` scores only folds the campaign never saw
    config.yaml        the resolved config of the campaign
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from dr_ray.config import Config, to_dict
from dr_ray.config.schema import TrainConfig
from dr_ray.io import columns as C
from dr_ray.pipelines.fusion_data import FusionData, stages_for
from dr_ray.pipelines.fusion_join import build_fusion_data
from dr_ray.pipelines.fusion_read import fold_datasets, read_index
from dr_ray.pipelines.runtime import init_ray, quiet_console, training_dir
from dr_ray.io.folds import patient_level
from dr_ray.pipelines.train import NestedSplit, fold_spec, nested_split
from dr_ray.training.fusion_data import class_weights, labels_for_task
from dr_ray.training.tune import TRIAL_RESOURCES, asha, check_space, choices, search_space, trial_train_config

log = logging.getLogger(__name__)

EXPERIMENT = "campaign"


def campaign_stages(cfg: Config) -> tuple[str, ...]:
    """Stages needed by any model/modalities combination the search space can draw."""
    from dr_ray.training.ray_fusion import model_modalities

    t, space = cfg.train, cfg.tune.space
    stages: set[str] = set(t.join)
    for model, mods in itertools.product(choices(space, "model", t.model), choices(space, "modalities",
                                                                                     list(t.modalities))):
        stages.update(stages_for(model_modalities(trial_train_config(t, {"model": model, "modalities": mods}))))
    return tuple(sorted(stages))


def _trial(config: dict, *, ctx: dict) -> None:
    """Function trainable: one Ray Train run of the sampled settings on the campaign's fold."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dr_ray.training.ray_fusion import fit_fold, model_modalities

    trial_id = ray.tune.get_context().get_trial_id()
    # A trial runs in its own process, whose Ray Data context is the default one: carry over the driver's block
    # ordering, so a campaign with preserve_order feeds each trial the batches `dr-ray train` would (reproducible).
    ray.data.DataContext.get_current().execution_options.preserve_order = bool(ctx.get("preserve_order", False))
    t: TrainConfig = trial_train_config(ctx["train"], config)
    gpus = float(ctx["gpus_per_worker"])
    if gpus > 0:
        t = dataclasses.replace(t, use_gpu=True)
    data: FusionData = ctx["data"]
    index: pa.Table = ctx["index"]
    modalities = model_modalities(t)
    # the campaign's inner split (drawn once by run_tune from the tuning folds only): the same for every trial
    split = NestedSplit(np.asarray(ctx["train_mask"], bool), np.asarray(ctx["val_mask"], bool))
    spec = fold_spec(t, data, modalities, index, train_mask=split.train)
    labels = labels_for_task(index.column(C.GRADE).to_pylist(), t.task)
    ids = np.asarray(index.column(C.IMAGE_ID).to_pylist(), dtype=object)
    train_ds, val_ds = fold_datasets(data, spec, train_ids=ids[split.train].tolist(), val_ids=ids[split.val].tolist(),
                                     decode_batch_size=t.decode_batch_size, decode_cpus=t.decode_cpus,
                                     augment=t.augment)
    resources = {"CPU": t.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})}
    fit_fold(t, spec, fold=-1, datasets={"train": train_ds, "val": val_ds},
             class_weights=class_weights(labels[split.train], t.num_classes).tolist(), storage_path=ctx["storage"],
             name=f"trial_{trial_id}", callbacks=[TuneReportCallback()], resources_per_worker=resources)


def results_table(results, metric: str, mode: str):
    """One row per trial: trial folder, status (and error), the sampled settings (``config/<key>``), epochs run,
    and the metrics of its best epoch by ``metric`` (``mode``); sorted best first."""
    import json

    import pandas as pd

    rows = []
    for r in results:
        row: dict = {"trial": Path(r.path).name if r.path else None, "status": "ERROR" if r.error else "OK",
                     "error": None if r.error is None else str(r.error).splitlines()[0][:500]}
        row.update({f"config/{k}": (json.dumps(v) if isinstance(v, (list, tuple)) else v)
                    for k, v in (r.config or {}).items()})
        md = r.metrics_dataframe
        if md is not None and len(md):
            row["epochs"] = int(md["training_iteration"].max())
            # an epoch whose metric is NaN (an AUC on a one-class validation split) is never the best; a trial with
            # no defined value gets no best-epoch columns (run_tune then names the metric in its error)
            if metric in md and md[metric].notna().any():
                best = md.loc[md[metric].idxmax() if mode == "max" else md[metric].idxmin()]
                row["best_epoch"] = int(best["training_iteration"])
                row.update({k: best[k] for k in md.columns
                            if k.startswith("val_") or k in ("train_loss", "train_rows_per_s", "busy_fraction")})
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values(metric, ascending=(mode == "min"), na_position="last") if metric in df else df


def run_tune(cfg: Config) -> dict:
    """Run (or resume) the ASHA campaign; returns {"best": {...}, "results_path", "best_config_path", ...}."""
    import ray.tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t, tc = cfg.train, cfg.tune
    if tc.max_epochs:
        t = dataclasses.replace(t, epochs=tc.max_epochs)
    check_space(t, tc.space)
    out = training_dir(cfg, tc.name, "tune")
    data = build_fusion_data(cfg, campaign_stages(cfg))
    index = read_index(data, t.stats_features if "vessels" in data.stages else ())  # biomarkers only when joined
    folds = sorted(int(f) for f in set(index.column(C.FOLD).to_pylist()) if f is not None)
    missing = [f for f in tc.folds if f not in folds]
    untouched = [f for f in folds if f not in tc.folds]
    if missing:
        raise ValueError(f"tune.folds={list(tc.folds)}: folds {missing} are not in the joined data (folds {folds})")
    if not untouched:
        raise ValueError(f"tune.folds={list(tc.folds)} uses every fold of the data ({folds}): leave at least one "
                         f"outer fold untouched for best_train.yaml to be scored on")
    if len(untouched) < 2:
        log.warning("tune %s: only fold %s stays untouched: best_train.yaml scores one outer fold (no CV spread)",
                    tc.name, untouched)
    # nested: trials train and are selected inside the tuning folds only; no row of another fold is ever loaded
    split = nested_split(index, tc.folds, fraction=t.inner_val_fraction, seed=t.seed)
    init_ray(cfg.ray)
    ctx = {"train": t, "data": data, "index": index, "train_mask": split.train.tolist(),
           "val_mask": split.val.tolist(), "storage": str(out / "trials"), "gpus_per_worker": tc.gpus_per_worker,
           "preserve_order": ray.data.DataContext.get_current().execution_options.preserve_order}
    trainable = ray.tune.with_resources(ray.tune.with_parameters(_trial, ctx=ctx), TRIAL_RESOURCES)
    path = out / EXPERIMENT
    if ray.tune.Tuner.can_restore(str(path)):
        log.info("tune %s: restoring the campaign in %s", tc.name, path)
        tuner = ray.tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        callbacks = []
        if t.mlflow_uri:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            from dr_ray.training.ray_fusion import allow_file_store

            allow_file_store(t.mlflow_uri)
            callbacks.append(MLflowLoggerCallback(tracking_uri=t.mlflow_uri, experiment_name=t.mlflow_experiment,
                                                  save_artifact=False))
        tuner = ray.tune.Tuner(
            trainable,
            param_space=search_space(tc.space),
            tune_config=ray.tune.TuneConfig(
                metric=tc.metric, mode=tc.mode, num_samples=tc.num_samples,
                scheduler=asha(max_t=t.epochs, grace_period=tc.grace_period, reduction_factor=tc.reduction_factor),
                # seeded random search; the concurrency limit goes here (Tune ignores max_concurrent_trials when a
                # BasicVariantGenerator is passed)
                search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=tc.max_concurrent)),
            run_config=ray.tune.RunConfig(storage_path=str(out), name=EXPERIMENT, callbacks=callbacks or None,
                                          verbose=0 if quiet_console() else None),
        )
    results = tuner.fit()
    errors = [str(e) for e in results.errors]
    ok = [r for r in results if r.error is None and r.metrics]
    if not ok:
        raise RuntimeError(f"tune {tc.name}: every trial failed: {errors[:3]}")
    df = results_table(results, tc.metric, tc.mode)
    flag = patient_level(index)
    df["selection_split"] = f"inner validation of folds {list(tc.folds)}"
    df["patient_level"] = flag["patient_level"]
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    try:
        best = results.get_best_result(metric=tc.metric, mode=tc.mode, scope="all")
    except RuntimeError as e:  # every trial's metric was NaN
        raise ValueError(f"tune {tc.name}: {tc.metric} is undefined in every trial ({e}); an AUC is undefined on a "
                         f"validation fold with one class: use tune.metric=val_loss (mode min) or more data") from e
    # the best settings, cross-validated on the outer folds the campaign never loaded; the tuning folds train
    # (they are in every untouched fold's training folds) but are never scored
    best_train = trial_train_config(cfg.train, {**best.config, "folds": untouched}, name=f"{tc.name}_best")
    best_cfg = to_dict(cfg)
    best_cfg["train"] = to_dict(best_train)
    best_path = out / "best_train.yaml"
    header = (f"# Best trial of the tune campaign {tc.name!r} ({tc.metric} {tc.mode} on the inner validation split "
              f"of folds {list(tc.folds)}).\n"
              f"# train.folds = {untouched}: the outer folds the campaign never loaded, so their scores are not\n"
              f"# selected on; folds {list(tc.folds)} chose the settings and must not be scored with them.\n"
              f"#   dr-ray train --config {best_path}\n")
    best_path.write_text(header + yaml.safe_dump(best_cfg, sort_keys=False))
    best_metrics = best.metrics_dataframe
    best_value = (best_metrics[tc.metric].max() if tc.mode == "max" else best_metrics[tc.metric].min()) \
        if best_metrics is not None and tc.metric in best_metrics else None
    return {"name": tc.name, "trials": len(results), "completed": len(ok), "errors": errors,
            "tuning_folds": list(tc.folds), "untouched_folds": untouched,
            "selection_split": f"inner validation: {int(split.val.sum())} images, a patient-level "
                               f"{t.inner_val_fraction} share of folds {list(tc.folds)}",
            **flag,
            "best": {"config": best.config, tc.metric: None if best_value is None else float(best_value),
                     "path": best.path},
            "results_path": str(out / "results.parquet"), "results_csv": str(out / "results.csv"),
            "best_config_path": str(best_path), "campaign": str(path), "data": data.as_dict()}


__all__ = ["EXPERIMENT", "campaign_stages", "results_table", "run_tune"]
