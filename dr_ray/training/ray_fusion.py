"""The classifier's Ray Train worker: :func:`dr_ray.training.fit.fit` over :mod:`dr_ray.training.classify`'s epoch.

Data arrive as Ray Data shards (``get_dataset_shard("train")`` split equally over the workers for DDP,
``"val"`` split unequally so that every validation row is scored exactly once), decoded and augmented by Ray Data
CPU tasks, batched with :func:`dr_ray.training.fusion_data.collate` (vessel graphs as a torch_geometric ``Batch``).
Each epoch: train (DDP), predict the validation shard (nested CV: the inner validation split of the outer training
folds, never the outer test fold; see :func:`dr_ray.pipelines.train.nested_split`) on every worker, gather the predictions so that all
workers compute the same metrics; ``fit`` steps ``ReduceLROnPlateau`` on the validation loss, early-stops (paper
4.2) and reports with a checkpoint: ``state.pt`` (model, optimizer, scheduler, early stopping, epochs done),
``best.pt`` (the weights of the epoch with the lowest validation loss) and ``history.json``. A replaced worker (``FailureConfig``)
or a rerun with the same storage path and name resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dr_ray.config.schema import TrainConfig
from dr_ray.training.fusion_data import NODE_INPUT_DIM, InputSpec

log = logging.getLogger(__name__)

FUSION_MODELS = ("cross_feature_fusion", "dcat", "graph_fusion")


def classifier_kwargs(t: TrainConfig, spec: InputSpec | None = None) -> dict[str, Any]:
    """``create_model`` keyword arguments of ``t.model`` from the train config (and the data's input spec:
    lesion kinds, stats width). Without ``spec`` (probing the modalities) the data-dependent sizes take defaults."""
    kw: dict[str, Any] = {"num_classes": t.num_classes, "input_size": t.image_size, "dropout": t.dropout}
    if t.backbone:
        kw["backbone"] = t.backbone
    if t.modalities:
        kw["modalities"] = list(t.modalities)
    if t.model in FUSION_MODELS:
        kw.update(hidden_dim=t.hidden_dim, heads=t.heads, fusion_layers=t.fusion_layers)
    if t.model == "cross_feature_fusion":
        kw["lesion_size"] = t.lesion_size
        if spec is not None and spec.lesion_kinds:
            kw["lesion_kinds"] = len(spec.lesion_kinds)
        kw.update(encoder_branch_kwargs(t))
    if t.model == "swin_t" and t.swin_window:
        kw["window_size"] = t.swin_window
    if t.model == "graph_fusion":
        kw.update(gnn_layers=t.gnn_layers, node_features=NODE_INPUT_DIM, stats_dim=2 * len(t.stats_features),
                  blocks=list(t.graph_fusion_blocks))
    return kw


def encoder_branch_kwargs(t: TrainConfig) -> dict[str, Any]:
    """cross_feature_fusion's ``backbone`` / ``lesion_backbone`` and their ``*_kwargs`` (extra timm kwargs).

    A branch initialised from a train-lesions ``encoder.pt`` (``train.image_encoder_init`` /
    ``lesion_encoder_init``) is built as that encoder: its ``encoder.json`` names the timm model and kwargs
    (a Swin U-Net's window, or the embed_dim / depths of a lighter Swin); ``in_chans`` and ``img_size`` are the
    branch's own. ``train.swin_window`` (when > 0) sets the window of every Swin branch, e.g. 8 for 512 px
    (the encoder's relative-position tables are then resampled on loading). A name in ``train.backbone`` /
    ``lesion_backbone`` that differs from the encoder's raises ValueError naming both keys.
    """
    out: dict[str, Any] = {}
    for branch, init, key, name in (("image", t.image_encoder_init, "backbone", t.backbone),
                                    ("lesion", t.lesion_encoder_init, "lesion_backbone", t.lesion_backbone)):
        extra: dict[str, Any] = {}
        if init:
            side = Path(init).with_suffix(".json")
            if not side.is_file():
                raise FileNotFoundError(f"train.{branch}_encoder_init: {side} (the sidecar of {init}) not found; "
                                        f"point it to the encoder.pt a train-lesions run wrote")
            meta = json.loads(side.read_text())
            enc = str(meta.get("encoder", ""))
            if name and name != enc:
                raise ValueError(f"train.{key}={name!r} but train.{branch}_encoder_init {init} holds a {enc!r} "
                                 f"encoder; leave train.{key} empty (the encoder's is used) or make them match")
            name = enc
            extra = {k: v for k, v in dict(meta.get("timm_kwargs") or {}).items() if k not in ("in_chans", "img_size")}
        if name.startswith("swin_") and t.swin_window:
            extra["window_size"] = t.swin_window
        if name:
            out[key] = name
        if extra:
            out[f"{key}_kwargs"] = extra
    return out


def build_classifier(t: TrainConfig, spec: InputSpec | None = None, *, pretrained: bool | None = None):
    """The classifier of ``t``. ``pretrained=None`` (training): ``t.pretrained`` hub weights or the
    ``t.pretrained_file`` weight file for the image backbone; ``False``: no weights (probes, exports)."""
    from dr_ray.models import create_model

    return create_model(t.model, pretrained=t.pretrained if pretrained is None else pretrained,
                        pretrained_file=(t.pretrained_file or None) if pretrained is None else None,
                        **classifier_kwargs(t, spec))


def model_modalities(t: TrainConfig) -> tuple[str, ...]:
    """The modalities ``t``'s model uses (builds it once without weights: ~1 s)."""
    return tuple(build_classifier(t, pretrained=False).modalities)


def init_encoders(model, t: TrainConfig) -> list[str]:
    """Load ``train.image_encoder_init`` / ``lesion_encoder_init`` (encoder.pt of a train-lesions run) into the
    model's branches (poster Table 2 transfer); returns what was loaded."""
    from dr_ray.models.transfer import load_encoder_file

    done = []
    for branch, path in (("image", t.image_encoder_init), ("lesion", t.lesion_encoder_init)):
        if not path:
            continue
        if not hasattr(model, "load_segmentation_encoder"):
            raise ValueError(f"train.{branch}_encoder_init is set but {t.model} has no segmentation-encoder "
                             f"transfer (use cross_feature_fusion)")
        state, meta = load_encoder_file(path)
        model.load_segmentation_encoder(state, branch)
        done.append(f"{branch} <- {path} ({meta.get('encoder')}, from {meta.get('source_model')})")
    return done


def batch_collate():
    """:func:`dr_ray.training.fusion_data.collate` as the ``NumpyBatchCollateFn`` Ray Data's
    ``iter_torch_batches`` takes (plain functions are deprecated there since Ray 2.47)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    from dr_ray.training.fusion_data import collate

    class _Collate(NumpyBatchCollateFn):
        def __call__(self, batch):
            return collate(batch)

    return _Collate()


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def val_data_config():
    """A ``ray.train.DataConfig`` that splits "train" equally (DDP needs the same number of steps per worker) and
    "val" unequally (no validation row is dropped; predictions are gathered)."""
    import ray.train

    class _FusionDataConfig(ray.train.DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if set(datasets) != {"val"}:
                return super().configure(datasets, world_size, worker_handles, worker_node_ids, **kwargs)
            ds = datasets["val"].copy(datasets["val"])
            ds.context.execution_options = self._resolve_execution_options("val")
            splits = ds.streaming_split(world_size, equal=False,
                                        locality_hints=worker_node_ids if self._enable_shard_locality else None)
            return [{"val": s} for s in splits]

    return _FusionDataConfig()


def tensorboard_callback(logdir: str):
    """A Ray Train ``UserCallback`` (run by the controller) writing every reported metric (rank 0's) as TensorBoard
    scalars under ``logdir`` with tensorboardX, the writer Ray Tune's default TensorBoard logger uses."""
    from ray.train import UserCallback

    class _TB(UserCallback):
        def __init__(self) -> None:
            self.logdir = logdir
            self._writer = None

        def after_report(self, run_context, metrics, checkpoint) -> None:
            from tensorboardX import SummaryWriter

            if self._writer is None:
                self._writer = SummaryWriter(self.logdir)
            m = metrics[0]
            step = int(m.get("epoch", 0))
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                    self._writer.add_scalar(k, v, step)
            self._writer.flush()

    return _TB()


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses a file-store tracking URI (``file:///...``, a plain path) unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: a user who configured one asked for it, so it is allowed here, with a warning
    (MLflow keeps that backend in maintenance mode; ``sqlite:///...`` or a server are the alternatives)."""
    import os

    if uri.startswith("file:") or "://" not in uri:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE") is None:
            log.warning("train.mlflow_uri=%s is an MLflow file store, which MLflow 3 keeps in maintenance mode; "
                        "allowing it (MLFLOW_ALLOW_FILE_STORE=true). Use sqlite:///... or a tracking server to "
                        "avoid this.", uri)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def fusion_loop_per_worker(lc: dict) -> None:
    """Ray Train worker. ``lc``: cfg (TrainConfig), spec (InputSpec dict), class_weights (list or None),
    fold (int), mlflow (dict or None: tracking_uri, experiment_name, run_name, params)."""
    import ray.train

    from dr_ray.faults import maybe_inject  # the fault-injection test hook (never set in production)
    from dr_ray.training.classification_metrics import classification_metrics
    from dr_ray.training.classify import loss_function, predict, train_classifier_epoch, weighted_nll
    from dr_ray.training.fit import Optimization, finite_or_none, fit, unwrap
    from dr_ray.training.ray_train import RayReporter, prepare_model, worker_setup

    t: TrainConfig = lc["cfg"]
    spec = InputSpec.from_dict(lc["spec"])
    weights = lc.get("class_weights")
    rank, world, device, amp = worker_setup(t.seed, t.amp_bf16)
    model = build_classifier(t, spec)
    loaded = init_encoders(model, t)
    if loaded and rank == 0:
        log.info("encoder transfer: %s", "; ".join(loaded))
    mean, std = model.spec.mean, model.spec.std
    optim = Optimization(lr=t.lr, weight_decay=t.weight_decay, optimizer="adam", schedule="plateau",
                         plateau_factor=t.plateau_factor, plateau_patience=t.plateau_patience)

    def prepare(m):
        if device.type == "cuda":
            m = m.to(device, memory_format=torch.channels_last)
        return prepare_model(m)

    loss_fn = loss_function(weights if t.class_balance == "weight" else None, device)
    val_weights = np.asarray(weights, np.float64) if (weights is not None and t.class_balance == "weight") else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    fold = int(lc["fold"])
    collate = batch_collate()

    def train_epoch(run, optimizer, epoch: int) -> dict:
        batches = train_shard.iter_torch_batches(batch_size=t.batch_size, collate_fn=collate, prefetch_batches=2,
                                                 local_shuffle_buffer_size=t.shuffle_buffer or None)
        tr = train_classifier_epoch(run, batches, optimizer, loss_fn, device, mean=mean, std=std, amp=amp)
        return {"train_loss": tr["loss"], "train_accuracy": tr["accuracy"], "train_rows": int(tr["rows"]) * world,
                "train_rows_per_s": tr["rows"] * world / max(tr["seconds"], 1e-9),
                "busy_fraction": tr["busy_fraction"]}

    def validate(run, epoch: int) -> dict:
        # every worker predicts its part of the validation split; the gathered predictions give all workers the
        # same metrics (so the same plateau and early-stopping decisions)
        ids, labels, probs = predict(unwrap(run), val_shard.iter_torch_batches(
            batch_size=t.batch_size, collate_fn=collate, prefetch_batches=2), device, mean=mean, std=std, amp=amp)
        parts = _gather((ids, labels, probs))
        ids = [i for p in parts for i in p[0]]
        if not ids:
            raise ValueError(f"fold {fold}: the validation split is empty")
        labels = np.concatenate([p[1] for p in parts if len(p[1])])
        probs = np.concatenate([p[2] for p in parts if len(p[2])])
        # Ray gets NaN for an undefined metric (AUC of a one-class fold): Tune's schedulers need numbers; the
        # history (JSON) keeps None
        return {"val_rows": len(ids), "val_loss": weighted_nll(labels, probs, val_weights),
                **{f"val_{k}": v for k, v in classification_metrics(labels, probs).items()}}

    callbacks = []
    mlflow = None
    if lc.get("mlflow") and rank == 0:
        from ray.air.integrations.mlflow import setup_mlflow

        m = lc["mlflow"]
        allow_file_store(m["tracking_uri"])
        mlflow = setup_mlflow(config=m["params"], tracking_uri=m["tracking_uri"], experiment_name=m["experiment_name"],
                              run_name=m["run_name"], create_experiment_if_not_exists=True)
        callbacks.append(lambda metrics: mlflow.log_metrics(
            {k: v for k, v in finite_or_none(metrics).items() if isinstance(v, (int, float))},
            step=int(metrics["epoch"])))
    fit(model, epochs=t.epochs, optim=optim, train_epoch=train_epoch, validate=validate, reporter=RayReporter(),
        monitor="val_loss", patience=t.early_stop_patience, prepare=prepare, callbacks=callbacks,
        static={"fold": fold}, name=f"fold {fold}",
        before_epoch=lambda epoch: maybe_inject("train", f"fold_{fold}_epoch_{epoch + 1}"))
    if mlflow is not None:
        mlflow.end_run()


def fit_fold(t: TrainConfig, spec: InputSpec, *, fold: int, datasets: dict, class_weights: Sequence[float] | None,
             storage_path: str, name: str, callbacks: Sequence = (), mlflow: dict | None = None,
             resources_per_worker: dict | None = None, trainer_only: bool = False):
    """Train (or resume) one fold; returns the ``ray.train.Result`` (or, ``trainer_only``, the unstarted trainer)."""
    from dr_ray.training.ray_train import fit_and_release, make_trainer

    lc = {"cfg": t, "spec": spec.to_dict(), "class_weights": None if class_weights is None else list(class_weights),
          "fold": fold, "mlflow": mlflow}
    trainer = make_trainer(fusion_loop_per_worker, lc, num_workers=t.num_workers, use_gpu=t.use_gpu,
                           storage_path=storage_path, name=name, keep_checkpoints=2, max_failures=t.max_failures,
                           datasets=datasets, data_config=val_data_config(), callbacks=callbacks,
                           resources_per_worker=resources_per_worker or {"CPU": t.cpus_per_worker,
                                                                         **({"GPU": 1} if t.use_gpu else {})})
    return trainer if trainer_only else fit_and_release(trainer)


__all__ = ["FUSION_MODELS", "build_classifier", "classifier_kwargs", "fit_fold", "fusion_loop_per_worker",
           "allow_file_store", "init_encoders", "model_modalities", "tensorboard_callback", "val_data_config"]
