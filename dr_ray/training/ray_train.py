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

    return create_model(cfg.model, encoder=cfg.encoder, pretrained=cfg.pretrained, input_size=cfg.patch_size,
                        decoder_channels=cfg.decoder_channels)


def _shard(records: Sequence[VesselRecord], rank: int, world: int) -> list[VesselRecord]:
    # Fewer images than workers: every worker sees all of them (different patches: rng seeded by rank).
    return list(records[rank::world]) if len(records) >= world else list(records)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker function. ``loop_config``: cfg (TrainVesselsConfig), train/val (VesselRecord lists)."""
    import ray.train
    import ray.train.torch

    cfg: TrainVesselsConfig = loop_config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = cfg.amp_bf16 and device.type == "cuda"
    torch.manual_seed(cfg.seed)  # same initial weights on every worker (DDP also broadcasts rank 0's)

    model = build_model(cfg)
    spec = model.spec
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, history = load_training_state(d)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = cfg.epochs  # a resumed run may have been given more epochs: stretch the cosine
        start_epoch = int(state["epoch"])
        log.info("rank %d: resuming after epoch %d", rank, start_epoch)
    model = ray.train.torch.prepare_model(model)

    t0 = time.perf_counter()
    train_images = load_vessel_images(_shard(loop_config["train"], rank, world), scale=cfg.scale,
                                      input_mode=cfg.input_mode)
    val_images = load_vessel_images(loop_config["val"], scale=cfg.scale, input_mode=cfg.input_mode) if rank == 0 else []
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
            history.append(metrics)
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, metrics)
            with tempfile.TemporaryDirectory() as tmp:
                save_training_state(tmp, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch + 1,
                                    history=history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"epoch_{epoch + 1:04d}")
        else:
            ray.train.report(metrics)


def fit(cfg: TrainVesselsConfig, train: Sequence[VesselRecord], val: Sequence[VesselRecord], *,
        storage_path: str, name: str, keep_checkpoints: int = 2):
    """Run (or resume) the TorchTrainer; returns the ``ray.train.Result`` (``.checkpoint`` = latest epoch).

    ``storage_path`` (absolute local path or URI) + ``name`` identify the run: the same pair resumes it.
    Only the latest ``keep_checkpoints`` epoch checkpoints are kept (a resnet18 U-Net checkpoint with AdamW
    state is ~170 MB; 100 epochs of them would be 17 GB).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "train": list(train), "val": list(val)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=ray.train.RunConfig(storage_path=storage_path, name=name,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints)),
    )
    return trainer.fit()
