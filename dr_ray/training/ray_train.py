"""The Ray part of vessel training: a Ray Train V2 ``TorchTrainer`` around the Ray-free loops.

Each worker loads its shard of the training images itself (seeded by world rank): 20-50 images need no
Ray Data. Rank 0 scores the validation images every epoch and reports a checkpoint (model, optimizer,
scheduler, history). A run restarted with the same ``storage_path``/``name`` resumes from its latest
checkpoint (Ray Train V2 restores the run's checkpoint snapshot; ``ray.train.get_checkpoint()`` returns it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Sequence

import numpy as np
import torch

from dr_ray.config.schema import TrainVesselsConfig
from dr_ray.training.data import VesselRecord, load_vessel_images, patch_batches
from dr_ray.training.losses import DiceBCELoss
from dr_ray.training.loops import (
    evaluate,
    finite_or_none,
    load_training_state,
    save_training_state,
    train_one_epoch,
    unwrap,
)

log = logging.getLogger(__name__)


def build_model(cfg: TrainVesselsConfig) -> torch.nn.Module:
    from dr_ray.models import create_model

    if cfg.model == "compact_vessel_unet":
        return create_model(cfg.model, channels=cfg.channels, dropout=cfg.dropout, input_size=cfg.patch_size,
                            pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file or None)
    return create_model(cfg.model, encoder=cfg.encoder, pretrained=cfg.pretrained, input_size=cfg.patch_size,
                        decoder_channels=cfg.decoder_channels, pretrained_file=cfg.pretrained_file or None)


def restore(model: torch.nn.Module, optimizer, scheduler, *, epochs: int, rank: int) -> tuple[int, list[dict]]:
    """Load the run's latest checkpoint (Ray Train hands it to a restarted worker or a resumed run) into the
    model, optimizer and cosine scheduler; returns (epochs already done, history). (0, []) for a new run."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        state, history = load_training_state(d)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.T_max = epochs  # a resumed run may have been given more epochs: stretch the cosine
    log.info("rank %d: resuming after epoch %d", rank, int(state["epoch"]))
    return int(state["epoch"]), history


def report_epoch(metrics: dict, *, rank: int, history: list[dict], model: torch.nn.Module, optimizer, scheduler,
                 epochs: int) -> None:
    """Rank 0 reports the epoch's metrics with a checkpoint (model, optimizer, scheduler, history); the other
    ranks report the metrics only (Ray Train keeps rank 0's)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    history.append(metrics)
    log.info("epoch %d/%d: %s", metrics["epoch"], epochs, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        save_training_state(tmp, model=model, optimizer=optimizer, scheduler=scheduler, epoch=metrics["epoch"],
                            history=history)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}")


def _shard(records: Sequence[VesselRecord], rank: int, world: int) -> list[VesselRecord]:
    # Fewer images than workers: every worker sees all of them (different patches: rng seeded by rank).
    return list(records[rank::world]) if len(records) >= world else list(records)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker function. ``loop_config``: cfg (TrainVesselsConfig), train/val (VesselRecord lists)."""
    import ray.train
    import ray.train.torch

    cfg: TrainVesselsConfig = loop_config["cfg"]
    pre = loop_config.get("preprocess") if cfg.stored_input else None  # PreprocessConfig of the stored images
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = cfg.amp_bf16 and device.type == "cuda"
    torch.manual_seed(cfg.seed)  # same initial weights on every worker (DDP also broadcasts rank 0's)

    model = build_model(cfg)
    spec = model.spec
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, history = restore(model, optimizer, scheduler, epochs=cfg.epochs, rank=rank)
    model = ray.train.torch.prepare_model(model)

    t0 = time.perf_counter()
    train_images = load_vessel_images(_shard(loop_config["train"], rank, world), scale=cfg.scale,
                                      input_mode=cfg.input_mode, fov_diameter=cfg.fov_diameter, preprocess=pre)
    val_images = (load_vessel_images(loop_config["val"], scale=cfg.scale, input_mode=cfg.input_mode,
                                     fov_diameter=cfg.fov_diameter, preprocess=pre) if rank == 0 else [])
    log.info("rank %d: %d training, %d validation images loaded in %.1f s", rank, len(train_images),
             len(val_images), time.perf_counter() - t0)
    loss_fn = DiceBCELoss()
    # the same number of patches (so of DDP steps) on every worker, whatever its shard size
    patches_per_worker = -(-len(loop_config["train"]) * cfg.patches_per_image // world)

    for epoch in range(start_epoch, cfg.epochs):
        # Seeded by (seed, epoch, rank): a resumed run draws the same patches as an uninterrupted one.
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        t0 = time.perf_counter()
        batches = patch_batches(train_images, patch=cfg.patch_size, patches_per_image=cfg.patches_per_image,
                                batch_size=cfg.batch_size, mean=spec.mean, std=spec.std, rng=rng,
                                fov_bias=cfg.fov_bias, num_patches=patches_per_worker)
        lr = optimizer.param_groups[0]["lr"]  # this epoch's rate, before the scheduler moves it
        train = train_one_epoch(model, batches, optimizer, loss_fn, device, amp)
        scheduler.step()
        # train_loss is this worker's mean; rank 0's report is the one Ray Train keeps
        metrics: dict = {"epoch": epoch + 1, "train_loss": train["loss"], "train_steps": int(train["steps"]),
                         "start_epoch": start_epoch,  # epochs done before this call (> 0: resumed)
                         "lr": lr, "seconds": time.perf_counter() - t0}
        if rank == 0:
            val = evaluate(unwrap(model), val_images, mean=spec.mean, std=spec.std, device=device, amp=amp,
                           seed=cfg.seed)
            metrics.update({f"val_{k}": v for k, v in finite_or_none(val).items()})
        report_epoch(metrics, rank=rank, history=history, model=model, optimizer=optimizer, scheduler=scheduler,
                     epochs=cfg.epochs)


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


def fit(cfg: TrainVesselsConfig, train: Sequence[VesselRecord], val: Sequence[VesselRecord], *,
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


def lesion_batches(batches):
    """Lesion patch batches -> the {"image", "mask", "fov"} batches ``train_one_epoch`` takes: the FOV of each
    channel is zeroed where that lesion kind was not annotated for the image (unknown, not absent)."""
    for b in batches:
        fov = b["fov"] * b["present"][:, :, None, None]
        yield {"image": b["image"], "mask": b["masks"], "fov": fov}


def evaluate_lesions(model: torch.nn.Module, batches, kinds, *, device, amp: bool, seed: int) -> dict[str, float]:
    """Per-lesion AUPR, Dice, IoU and precision (:class:`LesionMeter`, one per kind) over validation patch
    batches; a kind is scored only on the images where it was annotated. Also ``<metric>_mean`` over the kinds."""
    from dr_ray.training.lesion_metrics import LesionMeter
    from dr_ray.training.loops import autocast

    meters = [LesionMeter((k,), seed=seed) for k in kinds]
    model.eval()
    with torch.inference_mode():
        for b in batches:
            with autocast(torch.device(device), amp):
                prob = torch.sigmoid(model(b["image"].to(device)).float()).cpu().numpy()
            masks, fov, present = b["masks"].numpy() > 0, b["fov"].numpy()[:, 0] > 0, b["present"].numpy() > 0
            for i in range(len(prob)):
                for k, meter in enumerate(meters):
                    if present[i, k]:
                        meter.update(prob[i, k:k + 1], masks[i, k:k + 1], fov[i])
    out: dict[str, float] = {}
    for meter in meters:
        out.update({k: v for k, v in meter.compute().items() if not k.endswith("_mean")})
    for m in ("aupr", "dice", "iou", "precision"):
        vals = [out[f"{m}_{k}"] for k in kinds if np.isfinite(out[f"{m}_{k}"])]
        out[f"{m}_mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def lesion_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker for lesion segmentation. ``loop_config``: cfg (TrainLesionsConfig), train/val records."""
    import ray.train
    import ray.train.torch

    from dr_ray.faults import maybe_inject  # the fault-injection test hook (never set in production)
    from dr_ray.training.lesion_data import lesion_patch_batches, load_lesion_images
    from dr_ray.training.lesion_losses import LesionLoss

    cfg = loop_config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = cfg.amp_bf16 and device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = build_lesion_model(cfg)
    spec = model.spec
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, history = restore(model, optimizer, scheduler, epochs=cfg.epochs, rank=rank)
    model = ray.train.torch.prepare_model(model)

    train_images = load_lesion_images(_shard(loop_config["train"], rank, world), cfg.kinds, size=cfg.image_size)
    val_images = load_lesion_images(loop_config["val"], cfg.kinds, size=cfg.image_size) if rank == 0 else []
    loss_fn = LesionLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    patches_per_worker = -(-len(loop_config["train"]) * cfg.patches_per_image // world)
    for epoch in range(start_epoch, cfg.epochs):
        maybe_inject("train_lesions", f"epoch_{epoch + 1}")  # tests: a worker dying mid-run
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        t0 = time.perf_counter()
        batches = lesion_patch_batches(train_images, patch=cfg.patch_size, patches_per_image=cfg.patches_per_image,
                                       batch_size=cfg.batch_size, mean=spec.mean, std=spec.std, rng=rng,
                                       lesion_fraction=cfg.lesion_fraction, num_patches=patches_per_worker)
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, lesion_batches(batches), optimizer, loss_fn, device, amp)
        scheduler.step()
        metrics: dict = {"epoch": epoch + 1, "train_loss": train["loss"], "train_steps": int(train["steps"]),
                         "start_epoch": start_epoch, "lr": lr, "seconds": time.perf_counter() - t0}
        if rank == 0:
            # the same validation patches every epoch (seeded by cfg.seed only), no augmentation
            val_batches = lesion_patch_batches(val_images, patch=cfg.patch_size,
                                               patches_per_image=cfg.val_patches_per_image,
                                               batch_size=cfg.batch_size, mean=spec.mean, std=spec.std,
                                               rng=np.random.default_rng([cfg.seed, 99991]),
                                               lesion_fraction=cfg.lesion_fraction, augment_patches=False)
            val = evaluate_lesions(unwrap(model), val_batches, cfg.kinds, device=device, amp=amp, seed=cfg.seed)
            metrics.update({f"val_{k}": v for k, v in finite_or_none(val).items()})
        report_epoch(metrics, rank=rank, history=history, model=model, optimizer=optimizer, scheduler=scheduler,
                     epochs=cfg.epochs)


def fit_lesions(cfg, train, val, *, storage_path: str, name: str, keep_checkpoints: int = 2):
    """Lesion training run (see :func:`run_trainer`)."""
    return run_trainer(lesion_loop_per_worker, {"cfg": cfg, "train": list(train), "val": list(val)},
                       num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=storage_path, name=name,
                       keep_checkpoints=keep_checkpoints, max_failures=cfg.max_failures)
