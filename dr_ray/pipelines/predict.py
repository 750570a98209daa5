"""``dr-ray predict``: a train run's fold models as one ensemble over any processed dataset.

The dataset is this config's ``output.dir``: its ``preprocess/`` (and, when the model needs them, ``vessels/`` and
``pseudo_labels/``) folders, joined by :func:`dr_ray.pipelines.fusion_join.build_fusion_data` exactly as ``train``
joins them, except that an image without a grade is predicted too (``require_grade=False``). The train run is
``predict.run_dir`` (its ``cv.json`` names the fold models). Every fold model scores every image; per image:

    probs / mc_probs        mean over the fold models of the softmax (eval mode) / of the MC-dropout mean
    p_referable             P(grade >= 2) of ``probs``; predicted_referable = p_referable >= predict.threshold
    predicted_grade         argmax of ``probs`` for a 5-class (grade) model, null for a referable model
    entropy                 predictive entropy (nats) of ``mc_probs``: folds and dropout passes together
    fold_spread             standard deviation of p_referable over the fold models; fold_p_referable: each one's
    model_folds / model_hashes, config_hash   which models (content hashes) and which settings made the row

Rows stream from the joined index through an actor pool holding every fold model (GPU when
``predict.gpus_per_actor`` > 0) into ``<output.dir>/<predict.name>/status=ok|quarantined/``, committed exactly once
per task (:mod:`dr_ray.pipelines.commit`) under one writer's lease. The driver holds the small index columns
only, never an image. Rows in (preprocessed images) = predicted + quarantined, where quarantined are the images
the join quarantined (a needed stage quarantined or never processed them) and those whose inputs do not decode.
A rerun resumes (only the missing images are predicted) and refuses other models or settings
(``config_hash``) and a changed catalog. ``predict.json`` records the train run, its models and the joined data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, dump_yaml
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.reconcile import StageSummary
from dr_ray.pipelines.runtime import init_ray, resolve_path, stage_dir

log = logging.getLogger(__name__)

INFO_FILE = "predict.json"
FORMAT_VERSION = 1  # of the prediction rows; part of the config hash


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """The fold models of a train run: folds, model directories and content hashes, and what they read."""

    run_dir: str
    folds: tuple[int, ...]
    model_dirs: tuple[str, ...]
    model_hashes: tuple[str, ...]
    modalities: tuple[str, ...]
    task: str
    image_input: str
    cv: dict

    def as_dict(self) -> dict:
        return {"run_dir": self.run_dir, "train_run": self.cv.get("name"), "model": self.cv.get("model"),
                "task": self.task, "modalities": list(self.modalities), "image_input": self.image_input,
                "folds": list(self.folds), "model_dirs": list(self.model_dirs),
                "model_hashes": list(self.model_hashes), "train_data_hash": self.cv.get("train_data_hash"),
                "patient_level": self.cv.get("patient_level")}


def load_ensemble(run_dir: str) -> Ensemble:
    """The train run at ``run_dir`` (``cv.json`` + ``fold_<k>/model``); clear errors for a missing or
    inconsistent run."""
    from dr_ray.models import artifact_hash, read_metadata
    from dr_ray.training.fusion_data import InputSpec

    if not run_dir:
        raise ValueError("predict.run_dir is empty: set it to a train run folder (the one holding cv.json), e.g. "
                         "--set predict.run_dir=outputs/eyepacs/graph_fusion")
    if fs.is_uri(run_dir):
        raise ValueError(f"predict.run_dir={run_dir!r}: the fold models are loaded from a local (or mounted) path")
    root = Path(resolve_path(run_dir, "predict.run_dir"))
    cv_path = root / "cv.json"
    if not cv_path.is_file():
        raise FileNotFoundError(f"{cv_path} not found: predict.run_dir must be a finished `dr-ray train` run folder")
    try:
        cv = json.loads(cv_path.read_text())
        dirs = {int(k): str(v) for k, v in cv["model_dirs"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{cv_path}: not a train run summary ({type(e).__name__}: {e})") from e
    if not dirs:
        raise ValueError(f"{cv_path}: the run has no fold models")
    folds = tuple(sorted(dirs))
    specs, hashes = [], []
    for k in folds:
        d = dirs[k]
        if not Path(d).is_dir():  # a run folder moved as a whole: its models are beside cv.json
            d = str(root / f"fold_{k}" / "model")
            dirs[k] = d
        meta = read_metadata(d)
        try:
            specs.append(InputSpec.from_dict(meta["extra"]["inputs"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{d}: not a classifier saved by `dr-ray train` (no input spec: {e})") from e
        hashes.append(artifact_hash(d))
    first = specs[0]
    for k, s in zip(folds, specs):
        same = ("modalities", "task", "image_input", "num_classes", "image_size", "lesion_size", "lesion_kinds",
                "stats_features")  # all but the biomarker standardisation: one decode serves every fold model
        if any(getattr(s, a) != getattr(first, a) for a in same):
            raise ValueError(f"{dirs[k]}: fold {k}'s model reads {s.modalities}/{s.task}/{s.image_input}, fold "
                             f"{folds[0]}'s {first.modalities}/{first.task}/{first.image_input} (or their sizes, "
                             "lesion kinds or biomarkers differ): not one ensemble")
    return Ensemble(run_dir=str(root), folds=folds, model_dirs=tuple(dirs[k] for k in folds),
                    model_hashes=tuple(hashes), modalities=tuple(first.modalities), task=first.task,
                    image_input=first.image_input, cv=cv)


def predict_hash(ens: Ensemble, p) -> str:
    """Hash of what the prediction rows depend on: the models (content hashes), MC passes, threshold, format.
    Batch sizes and pool sizes are excluded (they change how fast, not what)."""
    parts = {"format": FORMAT_VERSION, "folds": list(ens.folds), "models": list(ens.model_hashes),
             "mc_samples": p.mc_samples, "threshold": p.threshold}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def referable_probability(probs: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities -> (N,) P(grade >= 2): column 1 of a referable model, classes 2..4 of a grade
    model."""
    return probs[:, 1] if probs.shape[1] == 2 else probs[:, 2:].sum(1)


def combine(fold_probs: np.ndarray, fold_mc: np.ndarray, *, threshold: float) -> dict[str, np.ndarray]:
    """The ensemble of K fold models over N images: ``fold_probs`` / ``fold_mc`` (K, N, C) -> the per-image
    columns (module doc). Pure numpy; NaN rows (not scored) stay NaN."""
    from dr_ray.training.classification_metrics import predictive_entropy

    probs = fold_probs.mean(0)
    mc = fold_mc.mean(0)
    per_fold = np.stack([referable_probability(f) for f in fold_probs])  # (K, N)
    p_ref = referable_probability(probs)
    ok = np.isfinite(mc).all(1)
    entropy = np.full(len(mc), np.nan)
    if ok.any():
        m = mc[ok] / mc[ok].sum(1, keepdims=True)
        entropy[ok] = predictive_entropy(m)
    return {"probs": probs, "mc_probs": mc, "p_referable": p_ref, "referable": p_ref >= threshold,
            "grade": probs.argmax(1) if probs.shape[1] == 5 else None, "entropy": entropy,
            "fold_spread": per_fold.std(0), "fold_p_referable": per_fold.T}


class EnsembleActor:
    """Ray Data actor holding every fold model of a train run: joined rows (pyarrow batch) -> prediction rows in
    ``C.PREDICTIONS_SCHEMA`` (status ok, or quarantined with the decode error)."""

    def __init__(self, model_dirs: list[str], *, folds: list[int], model_hashes: list[str], config_hash: str,
                 threshold: float, use_gpu: bool = False, amp_bf16: bool = True, threads: int = 1,
                 mc_samples: int = 10) -> None:
        from dr_ray.pipelines.evaluate import ClassifierActor

        self.members = [ClassifierActor(d, use_gpu=use_gpu, amp_bf16=amp_bf16, threads=threads,
                                        mc_samples=mc_samples) for d in model_dirs]
        self.folds, self.hashes = list(folds), list(model_hashes)
        self.config_hash, self.threshold = config_hash, float(threshold)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from dr_ray.training.fusion_data import stats_vector

        n = batch.num_rows
        rows = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.column_names}
        # predictions never read labels: an ungraded image decodes with a placeholder grade (decode_rows turns
        # grades into training labels and refuses a missing one); the output keeps the real (null) grade
        rows[C.GRADE] = np.zeros(n, np.int64)
        # decoded once (PNGs, lesion maps, graphs); only the biomarker standardisation is each fold model's own
        decoded, errors = self.members[0]._decode(rows)
        ok_rows = [i for i in range(n) if errors[i] is None]
        fold_probs, fold_mc = [], []
        for m in self.members:
            d = decoded
            if decoded is not None and "stats" in decoded:
                d = {**decoded, "stats": stats_vector({f: rows[f][ok_rows] for f in m.spec.stats_features}, m.spec)}
            p, mc, _, _ = m.score_decoded(d, errors)
            fold_probs.append(p)
            fold_mc.append(mc)
        out = combine(np.stack(fold_probs).astype(np.float64), np.stack(fold_mc).astype(np.float64),
                      threshold=self.threshold)
        ok = np.asarray([e is None for e in errors])
        return prediction_table(batch, out, ok=ok, errors=errors, folds=self.folds, hashes=self.hashes,
                                config_hash=self.config_hash)


def prediction_table(catalog: pa.Table, out: dict | None, *, ok: np.ndarray, errors: list, folds: list[int],
                     hashes: list[str], config_hash: str) -> pa.Table:
    """Rows of ``C.PREDICTIONS_SCHEMA``: the catalog columns of ``catalog`` plus the ensemble's columns ``out``
    (:func:`combine`; None: every row quarantined), null where a row is not ``ok``."""
    n = catalog.num_rows
    schema = C.PREDICTIONS_SCHEMA
    cols: dict[str, pa.Array] = {}
    for name in C.CATALOG_COLUMNS:
        f = schema.field(name)
        cols[name] = catalog.column(name).cast(f.type) if name in catalog.column_names else pa.nulls(n, f.type)
    mask = np.asarray(~np.asarray(ok, bool))  # True = null

    def col(values, typ):
        return pa.array(values, typ, mask=mask) if out is not None else pa.nulls(n, typ)

    f32 = pa.list_(pa.float32())
    cols[C.STATUS] = pa.array([C.STATUS_OK if o else C.STATUS_QUARANTINED for o in ok], pa.string())
    cols[C.ERROR] = pa.array([None if o else e for o, e in zip(ok, errors)], pa.string())
    cols[C.CONFIG_HASH] = pa.array([config_hash] * n, pa.string())
    if out is not None:
        cols[C.PROBS] = col([list(map(float, r)) for r in out["probs"]], f32)
        cols[C.MC_PROBS] = col([list(map(float, r)) for r in out["mc_probs"]], f32)
        cols[C.P_REFERABLE] = col(out["p_referable"].astype(np.float32), pa.float32())
        cols[C.PREDICTED_GRADE] = (col(out["grade"].astype(np.int8), pa.int8()) if out["grade"] is not None
                                   else pa.nulls(n, pa.int8()))
        cols[C.PREDICTED_REFERABLE] = col(out["referable"].astype(bool), pa.bool_())
        cols[C.ENTROPY] = col(out["entropy"].astype(np.float32), pa.float32())
        cols[C.FOLD_SPREAD] = col(out["fold_spread"].astype(np.float32), pa.float32())
        cols[C.FOLD_P_REFERABLE] = col([list(map(float, r)) for r in out["fold_p_referable"]], f32)
    cols[C.MODEL_FOLDS] = col([list(folds)] * n, pa.list_(pa.int8()))
    cols[C.MODEL_HASHES] = col([list(hashes)] * n, pa.list_(pa.string()))
    return pa.table([cols[nm] if nm in cols else pa.nulls(n, schema.field(nm).type) for nm in schema.names],
                    schema=schema)


def run_predict(cfg: Config) -> StageSummary:
    """Predict every processed image of ``output.dir`` with the ensemble of ``predict.run_dir`` (module doc);
    returns the reconciled summary (also ``<output.dir>/<predict.name>/summary.json``)."""
    import ray

    from dr_ray.pipelines.commit import commit_tables
    from dr_ray.pipelines.commit_stream import actor_retry_args, bounded_data_context, run_commits, with_context
    from dr_ray.pipelines.fusion_data import stages_for
    from dr_ray.pipelines.fusion_join import build_fusion_data
    from dr_ray.pipelines.fusion_read import rows_dataset
    from dr_ray.pipelines.lease import StageLease
    from dr_ray.pipelines.reconcile import check_resumable, finish_stage
    from dr_ray.pipelines.runtime import check_shared_storage
    from dr_ray.pipelines.scan import scan_outputs

    p = cfg.predict
    ens = load_ensemble(p.run_dir)
    chash = predict_hash(ens, p)
    # the dataset joined as the models' training data was: same stages, same image branch input
    join_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, image_input=ens.image_input))
    data = build_fusion_data(join_cfg, stages_for(ens.modalities), require_grade=False)
    index_cols = list(dict.fromkeys([*C.CATALOG_COLUMNS, C.ERROR]))
    ok_index = _read_index(data.path, C.STATUS_OK, index_cols)
    bad_index = _read_index(data.path, C.STATUS_QUARANTINED, index_cols)
    inputs = pa.concat_tables([ok_index.select(list(C.CATALOG_COLUMNS)), bad_index.select(list(C.CATALOG_COLUMNS))])
    out = stage_dir(cfg.output.dir, p.name)
    with StageLease([out], ttl_s=cfg.output.lease_ttl_s) as lease:
        before = scan_outputs(out, run_id=lease.run_id)
        check_resumable(before.table, chash, out, cfg.output.resume, what="models or predict settings",
                        catalog=inputs)
        fs.makedirs(out)
        fs.write_text(fs.join(out, "config.yaml"), dump_yaml(cfg))
        done = before.ids()
        todo_ok = ok_index.filter(pc.invert(pc.is_in(ok_index.column(C.IMAGE_ID), value_set=done)))
        todo_bad = bad_index.filter(pc.invert(pc.is_in(bad_index.column(C.IMAGE_ID), value_set=done)))
        already = inputs.num_rows - todo_ok.num_rows - todo_bad.num_rows
        log.info("predict: %d images in %s (%d joined, %d quarantined by the join), %d done by earlier runs; "
                 "%d fold models of %s -> %s (run %s)", inputs.num_rows, cfg.output.dir, ok_index.num_rows,
                 bad_index.num_rows, already, len(ens.folds), ens.run_dir, out, lease.run_id)
        if todo_bad.num_rows:  # the join's reasons, committed as they are (small columns, no image data)
            rows = prediction_table(todo_bad, None, ok=np.zeros(todo_bad.num_rows, bool),
                                    errors=todo_bad.column(C.ERROR).to_pylist(), folds=list(ens.folds),
                                    hashes=list(ens.model_hashes), config_hash=chash)
            commit_tables({out: rows}, run_id=lease.run_id)
        elapsed = 0.0
        if todo_ok.num_rows:
            from dr_ray.training.fusion_data import InputSpec
            from dr_ray.models import read_metadata

            init_ray(cfg.ray)
            check_shared_storage(out)
            spec = InputSpec.from_dict(read_metadata(ens.model_dirs[0])["extra"]["inputs"])
            columns = list(dict.fromkeys([*spec.columns(), *C.CATALOG_COLUMNS]))
            t0 = time.perf_counter()
            with with_context(bounded_data_context(cfg.ray, drop_failed_blocks=False)):
                ds = rows_dataset(data.path, columns, fetch_cpus=p.cpus_per_actor,
                                  image_ids=todo_ok.column(C.IMAGE_ID).to_pylist())
                ds = ds.map_batches(
                    EnsembleActor, batch_format="pyarrow", batch_size=p.batch_size,
                    compute=ray.data.ActorPoolStrategy(size=p.actors), num_gpus=p.gpus_per_actor,
                    num_cpus=p.cpus_per_actor,
                    fn_constructor_kwargs={"model_dirs": list(ens.model_dirs), "folds": list(ens.folds),
                                           "model_hashes": list(ens.model_hashes), "config_hash": chash,
                                           "threshold": p.threshold, "use_gpu": p.gpus_per_actor > 0,
                                           "amp_bf16": p.amp_bf16, "threads": int(p.cpus_per_actor),
                                           "mc_samples": p.mc_samples},
                    **actor_retry_args(cfg.ray))
                run_commits(ds, out, run_id=lease.run_id, rows_per_file=cfg.ray.rows_per_file, ray_cfg=cfg.ray)
            elapsed = time.perf_counter() - t0
        summary = finish_stage("predict", inputs, before, out, label_problems=0, already_done=already,
                               processed_now=todo_ok.num_rows + todo_bad.num_rows, run_seconds=elapsed,
                               run_id=lease.run_id)
        info = {"format_version": FORMAT_VERSION, "config_hash": chash, "dataset": cfg.data.dataset,
                "output_dir": resolve_path(cfg.output.dir, "output.dir"), "threshold": p.threshold,
                "mc_samples": p.mc_samples, "ensemble": ens.as_dict(), "data": data.as_dict(),
                "summary": summary.as_dict()}
        fs.write_text(fs.join(out, INFO_FILE), json.dumps(info, indent=1, default=str))
    return summary


def _read_index(path: str, status: str, columns: list[str]) -> pa.Table:
    """``columns`` of a joined index's ``status=`` partition (empty table when the partition is absent)."""
    d = fs.join(path, f"{C.STATUS}={status}")
    schema = pa.schema([C.CATALOG_SCHEMA.field(c) if c in C.CATALOG_COLUMNS else pa.field(c, pa.string())
                        for c in columns])
    if not fs.is_dir(d):
        return schema.empty_table()
    t = fs.read_parquet(fs.join(d, "index.parquet"), [c for c in columns])
    return pa.table([t.column(c).cast(schema.field(c).type) if c in t.column_names else
                     pa.nulls(t.num_rows, schema.field(c).type) for c in columns], schema=schema)


def read_predictions(path: str) -> tuple[pa.Table, dict]:
    """The committed prediction rows (both statuses, one per image id) of a predict folder and its
    ``predict.json``; FileNotFoundError naming the folder when predict has not finished there."""
    from dr_ray.pipelines.scan import read_committed

    info_path = fs.join(path, INFO_FILE)
    if not fs.exists(info_path):
        raise FileNotFoundError(f"{info_path} not found: run `dr-ray predict` on that dataset first (its "
                                f"output.dir, predict.name)")
    info = json.loads(fs.read_text(info_path))
    return read_committed(path, list(C.PREDICTIONS_SCHEMA.names), status=None), info


__all__ = ["Ensemble", "EnsembleActor", "combine", "load_ensemble", "predict_hash", "prediction_table",
           "read_predictions", "referable_probability", "run_predict"]
