"""The Ray part of training: a Ray Train V2 ``TorchTrainer`` around :func:`dr_ray.training.fit.fit`.

:class:`RayReporter` is the whole Ray side of the loop: ``ray.train.get_checkpoint`` for the checkpoint to resume
from, ``ray.train.report`` for the epoch's metrics and checkpoint. The segmentation workers (vessels, lesions) live
here; the classifier worker is :func:`dr_ray.training.ray_fusion.fusion_loop_per_worker`. Each segmentation worker
loads its shard of the training images itself (seeded by world rank): 20-50 images need no Ray Data. Rank 0 scores
the validation images every epoch. A run restarted with the same ``storage_path``/``name`` resumes from its latest
checkpoint (Ray Train V2 restores the run's checkpoint snapshot).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from dr_ray.config.schema import TrainVesselsConfig
from dr_ray.training.data import VesselRecord, load_vessel_images, patch_batches
from dr_ray.training.fit import Optimization, fit, unwrap
from dr_ray.training.losses import DiceBCELoss
from dr_ray.training.segmentation import evaluate_vessels, train_segmentation_epoch

log = logging.getLogger(__name__)


class RayReporter:
    """:func:`fit`'s :class:`~dr_ray.training.fit.Reporter` on a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train

        self.rank = ray.train.get_context().get_world_rank()

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # a restarted worker group or a resumed run gets the latest
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict, checkpoint: Path | None, epoch: int) -> None:
        import ray.train

        if checkpoint is None:
            ray.train.report(metrics)  # Ray Train keeps rank 0's metrics
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_dir_name=f"epoch_{epoch:04d}")


def worker_setup(seed: int, amp_bf16: bool):
    """(rank, world size, device, amp) of this Ray Train worker; seeds torch so that every worker builds the
    same initial weights (DDP also broadcasts rank 0's)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)
    return ctx.get_world_rank(), ctx.get_world_size(), device, amp_bf16 and device.type == "cuda"


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Ray Train's ``prepare_model`` (device move, DDP when there are several workers)."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def build_model(cfg: TrainVesselsConfig) -> torch.nn.Module:
    from dr_ray.models import create_model

    if cfg.model == "compact_vessel_unet":
        return create_model(cfg.model, channels=cfg.channels, dropout=cfg.dropout, input_size=cfg.patch_size,
                            pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file or None)
    return create_model(cfg.model, encoder=cfg.encoder, pretrained=cfg.pretrained, input_size=cfg.patch_size,
                        decoder_channels=cfg.decoder_channels, pretrained_file=cfg.pretrained_file or None)


def _shard(records: Sequence, rank: int, world: int) -> list:
    # Fewer images than workers: every worker sees all of them (different patches: rng seeded by rank).
    return list(records[rank::world]) if len(records) >= world else list(records)


def segmentation_optimization(cfg) -> Optimization:
    """AdamW with cosine decay over the epochs (vessel and lesion training)."""
    return Optimization(lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="adamw", schedule="cosine")


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker for vessel segmentation. ``loop_config``: cfg (TrainVesselsConfig), train/val
    (VesselRecord lists), preprocess (the stored images' PreprocessConfig, with ``stored_input``)."""
    import time

    cfg: TrainVesselsConfig = loop_config["cfg"]
    pre = loop_config.get("preprocess") if cfg.stored_input else None
    rank, world, device, amp = worker_setup(cfg.seed, cfg.amp_bf16)
    model = build_model(cfg)
    spec = model.spec

    t0 = time.perf_counter()
    load = dict(scale=cfg.scale, input_mode=cfg.input_mode, fov_diameter=cfg.fov_diameter, preprocess=pre)
    train_images = load_vessel_images(_shard(loop_config["train"], rank, world), **load)
    val_images = load_vessel_images(loop_config["val"], **load) if rank == 0 else []
    log.info("rank %d: %d training, %d validation images loaded in %.1f s", rank, len(train_images),
             len(val_images), time.perf_counter() - t0)
    loss_fn = DiceBCELoss()
    # the same number of patches (so of DDP steps) on every worker, whatever its shard size
    patches_per_worker = -(-len(loop_config["train"]) * cfg.patches_per_image // world)
    optim = segmentation_optimization(cfg)

    def train_epoch(run, optimizer, epoch: int) -> dict:
        # Seeded by (seed, epoch, rank): a resumed run draws the same patches as an uninterrupted one.
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        batches = patch_batches(train_images, patch=cfg.patch_size, patches_per_image=cfg.patches_per_image,
                                batch_size=cfg.batch_size, mean=spec.mean, std=spec.std, rng=rng,
                                fov_bias=cfg.fov_bias, num_patches=patches_per_worker)
        r = train_segmentation_epoch(run, batches, optimizer, loss_fn, device, amp)
        return {"train_loss": r["loss"], "train_steps": int(r["steps"])}  # this worker's mean; rank 0's is kept

    def validate(run, epoch: int) -> dict:
        if rank != 0:
            return {}
        val = evaluate_vessels(unwrap(run), val_images, mean=spec.mean, std=spec.std, device=device, amp=amp,
                               seed=cfg.seed)
        return {f"val_{k}": v for k, v in val.items()}

    fit(model, epochs=cfg.epochs, optim=optim, train_epoch=train_epoch, validate=validate, reporter=RayReporter(),
        prepare=prepare_model, name="train_vessels")


def make_trainer(loop_fn, loop_config: dict, *, num_workers: int, use_gpu: bool, storage_path: str, name: str,
                 keep_checkpoints: int = 2, max_failures: int = 2, datasets: dict | None = None,
                 data_config=None, callbacks: Sequence = (), resources_per_worker: dict | None = None):
    """A ``TorchTrainer`` over ``loop_fn`` (see :func:`run_trainer`); ``datasets`` (Ray Datasets by name) reach
    the workers through ``ray.train.get_dataset_shard``, split as ``data_config`` says; ``callbacks`` are Ray
    Train ``UserCallback``s (TensorBoard files, Tune reporting)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        loop_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(storage_path=storage_path, name=name,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       callbacks=list(callbacks) or None),
        datasets=datasets,
        **({"dataset_config": data_config} if data_config is not None else {}),
    )


def fit_and_release(trainer):
    """``trainer.fit()``, then let go of the run's controller actor.

    In the main thread Ray Train 2.60's ``fit()`` installs a SIGINT handler whose closure holds the controller's
    actor handle; the handler stays installed after ``fit()`` returns, so the controller (and the placement group
    of its worker group, e.g. one CPU) lives on until the next ``fit()``. On a small machine that CPU is then
    missing for whatever runs next (a Tune trial's Ray Data tasks waited for it forever). The previous handler is
    put back and the handle collected, so the controller exits and Ray removes its placement group.
    """
    import gc
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        gc.collect()


def run_trainer(loop_fn, loop_config: dict, *, num_workers: int, use_gpu: bool, storage_path: str, name: str,
                keep_checkpoints: int = 2, max_failures: int = 2, **trainer_kwargs):
    """Run (or resume) a ``TorchTrainer`` over ``loop_fn``; returns the ``ray.train.Result``.

    ``storage_path`` (absolute local path or URI) + ``name`` identify the run: the same pair resumes it after a
    killed job. A worker that dies mid-run is replaced up to ``max_failures`` times and the new group restarts
    from the latest checkpoint (``FailureConfig``). Only the latest ``keep_checkpoints`` checkpoints are kept.
    ``trainer_kwargs``: ``datasets``, ``data_config``, ``callbacks``, ``resources_per_worker`` of
    :func:`make_trainer`.
    """
    return fit_and_release(make_trainer(loop_fn, loop_config, num_workers=num_workers, use_gpu=use_gpu,
                                        storage_path=storage_path, name=name, keep_checkpoints=keep_checkpoints,
                                        max_failures=max_failures, **trainer_kwargs))


def fit_vessels(cfg: TrainVesselsConfig, train: Sequence[VesselRecord], val: Sequence[VesselRecord], *,
        storage_path: str, name: str, keep_checkpoints: int = 2, preprocess=None):
    """Vessel training run (see :func:`run_trainer`); ``.checkpoint`` of the result = the latest epoch.

    (A resnet18 U-Net checkpoint with AdamW state is ~170 MB: 100 epochs of them would be 17 GB, hence
    ``keep_checkpoints``.)
    """
    if cfg.stored_input and preprocess is None:
        raise ValueError("train_vessels.stored_input=true needs the PreprocessConfig of the stored images")
    return run_trainer(train_loop_per_worker, {"cfg": cfg, "train": list(train), "val": list(val),
                                               "preprocess": preprocess},
                       num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=storage_path, name=name,
                       keep_checkpoints=keep_checkpoints)


# --- lesion segmentation ------------------------------------------------------------------------


def build_lesion_model(cfg) -> torch.nn.Module:
    """The lesion model of ``cfg`` (TrainLesionsConfig): lesion_unet at any patch size, swin_unet at patch_size."""
    from dr_ray.models import create_model

    kw = {"encoder": cfg.encoder} if cfg.encoder else {}
    return create_model(cfg.model, lesion_kinds=list(cfg.kinds), pretrained=cfg.pretrained,
                        input_size=cfg.patch_size, pretrained_file=cfg.pretrained_file or None, **kw)


def lesion_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker for lesion segmentation. ``loop_config``: cfg (TrainLesionsConfig), train/val records."""
    from dr_ray.faults import maybe_inject  # the fault-injection test hook (never set in production)
    from dr_ray.training.lesion_data import lesion_patch_batches, load_lesion_images
    from dr_ray.training.lesion_losses import LesionLoss
    from dr_ray.training.segmentation import evaluate_lesions, lesion_batches

    cfg = loop_config["cfg"]
    rank, world, device, amp = worker_setup(cfg.seed, cfg.amp_bf16)
    model = build_lesion_model(cfg)
    spec = model.spec
    train_images = load_lesion_images(_shard(loop_config["train"], rank, world), cfg.kinds, size=cfg.image_size)
    val_images = load_lesion_images(loop_config["val"], cfg.kinds, size=cfg.image_size) if rank == 0 else []
    loss_fn = LesionLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    patches_per_worker = -(-len(loop_config["train"]) * cfg.patches_per_image // world)

    def train_epoch(run, optimizer, epoch: int) -> dict:
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        batches = lesion_patch_batches(train_images, patch=cfg.patch_size, patches_per_image=cfg.patches_per_image,
                                       batch_size=cfg.batch_size, mean=spec.mean, std=spec.std, rng=rng,
                                       lesion_fraction=cfg.lesion_fraction, num_patches=patches_per_worker)
        r = train_segmentation_epoch(run, lesion_batches(batches), optimizer, loss_fn, device, amp)
        return {"train_loss": r["loss"], "train_steps": int(r["steps"])}

    def validate(run, epoch: int) -> dict:
        if rank != 0:
            return {}
        # the same validation patches every epoch (seeded by cfg.seed only), no augmentation
        val_batches = lesion_patch_batches(val_images, patch=cfg.patch_size, patches_per_image=cfg.val_patches_per_image,
                                           batch_size=cfg.batch_size, mean=spec.mean, std=spec.std,
                                           rng=np.random.default_rng([cfg.seed, 99991]),
                                           lesion_fraction=cfg.lesion_fraction, augment_patches=False)
        val = evaluate_lesions(unwrap(run), val_batches, cfg.kinds, device=device, amp=amp, seed=cfg.seed)
        return {f"val_{k}": v for k, v in val.items()}

    fit(model, epochs=cfg.epochs, optim=segmentation_optimization(cfg), train_epoch=train_epoch, validate=validate,
        reporter=RayReporter(), prepare=prepare_model, name="train_lesions",
        before_epoch=lambda epoch: maybe_inject("train_lesions", f"epoch_{epoch + 1}"))  # tests: a worker dying


def fit_lesions(cfg, train, val, *, storage_path: str, name: str, keep_checkpoints: int = 2):
    """Lesion training run (see :func:`run_trainer`)."""
    return run_trainer(lesion_loop_per_worker, {"cfg": cfg, "train": list(train), "val": list(val)},
                       num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=storage_path, name=name,
                       keep_checkpoints=keep_checkpoints, max_failures=cfg.max_failures)
