"""The one training loop of every model (vessel and lesion segmentation, fusion classification), Ray-free.

:func:`fit` owns what the three trainings share: optimiser and scheduler set-up, restore from the latest checkpoint,
the epoch loop, early stopping on a monitored metric with the best weights kept, the checkpoint (``state.pt``,
``best.pt`` when a metric is monitored, ``history.json``) and metric reporting. What differs is passed in: a
``train_epoch(model, optimizer, epoch)`` and a ``validate(model, epoch)`` that return metric dicts, and a :class:`Reporter`
that stores checkpoints. :class:`DirectoryReporter` keeps them in a local folder (tests, scripts);
``dr_ray.training.ray_train.RayReporter`` hands them to Ray Train (``ray.train.report`` / ``get_checkpoint``), the
only Ray part. nanoGPT's single loop is the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
HISTORY_FILE = "history.json"
SCHEDULES = ("cosine", "plateau")
OPTIMIZERS = ("adamw", "adam")


# --- small shared pieces --------------------------------------------------------------------------


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 ``torch.autocast`` on a CUDA ``device`` when ``amp``, else a no-op context."""
    # bf16 needs no loss scaling; on CPU autocast is slower than fp32 for convs, so GPU only.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def finite_or_none(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN -> None so that the dict is strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


class EarlyStopping:
    """Stop after ``patience`` epochs without a new minimum of the monitored value (the validation loss, as in the
    graph paper's 4.2); ``patience`` 0 never stops. ``step(value)`` returns True when ``value`` is a new best."""

    def __init__(self, patience: int) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float, epoch: int) -> bool:
        if not math.isfinite(value):
            raise FloatingPointError(f"monitored value is {value} at epoch {epoch}")
        if value < self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"patience": self.patience, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = float(d["best"]), int(d["best_epoch"]), int(d["bad_epochs"])


# --- the checkpoint (one format for every model) ----------------------------------------------------


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the (unwrapped) model's state dict."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def save_training_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        epoch: int, history: list[dict], stopper: EarlyStopping | None = None,
                        best: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``state.pt`` (model/optimizer/scheduler state dicts, epochs done, early stopping when ``stopper``),
    ``best.pt`` (when ``best``: the weights of the best epoch) and ``history.json`` into ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {"model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch}
    if stopper is not None:
        state["stopper"] = stopper.state_dict()
    torch.save(state, out / STATE_FILE)
    if best is not None:
        torch.save(dict(best), out / BEST_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1, allow_nan=True))
    return out


def load_training_state(path: str | Path) -> tuple[dict, list[dict]]:
    """(state dict written by :func:`save_training_state`, history list)."""
    d = Path(path)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    history = json.loads((d / HISTORY_FILE).read_text())
    return state, history


def load_best(path: str | Path) -> tuple[dict, list[dict]]:
    """(best weights, history) of a checkpoint written with a monitored metric (``best.pt``)."""
    d = Path(path)
    if not (d / BEST_FILE).is_file():
        raise FileNotFoundError(f"{d / BEST_FILE}: not found; this checkpoint was written without a monitored "
                                f"metric (only state.pt holds weights)")
    best = torch.load(d / BEST_FILE, map_location="cpu", weights_only=True)
    return best, json.loads((d / HISTORY_FILE).read_text())


# --- reporting -------------------------------------------------------------------------------------


class Reporter(Protocol):
    """Where :func:`fit` sends each epoch's metrics and checkpoint, and finds the one to resume from."""

    rank: int  # only rank 0 writes checkpoints and keeps the history

    def latest(self) -> ContextManager[Path | None]:
        """The latest checkpoint directory (None: a new run), valid inside the ``with`` block."""

    def report(self, metrics: dict, checkpoint: Path | None, epoch: int) -> None:
        """Record ``metrics`` (and, on rank 0, the checkpoint directory ``checkpoint``, which is removed after)."""


class DirectoryReporter:
    """A :class:`Reporter` without Ray: checkpoints as ``<directory>/epoch_NNNN`` (the newest ``keep`` kept),
    metrics in ``self.metrics``. A second :func:`fit` with the same directory resumes after the newest epoch."""

    def __init__(self, directory: str | Path, *, keep: int = 2, rank: int = 0) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory, self.keep, self.rank = Path(directory), keep, rank
        self.metrics: list[dict] = []

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint directories, oldest first."""
        return sorted(p for p in self.directory.glob("epoch_*") if (p / STATE_FILE).is_file())

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict, checkpoint: Path | None, epoch: int) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"epoch_{epoch:04d}"
        tmp = self.directory / f".tmp_epoch_{epoch:04d}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a killed copy never looks complete
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


# --- the loop ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Optimization:
    """Optimiser and learning-rate schedule of a :func:`fit` run.

    ``cosine``: cosine decay from ``lr`` over the run's epochs, stepped once per epoch (a resumed run given more
    epochs stretches it). ``plateau``: ``ReduceLROnPlateau`` on the monitored metric (x ``plateau_factor`` after
    ``plateau_patience`` epochs without improvement).
    """

    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | adam
    schedule: str = "cosine"  # cosine | plateau
    plateau_factor: float = 0.5
    plateau_patience: int = 2

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    def build(self, model: nn.Module, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        opt_cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "cosine":
            return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min",
                                                                     factor=self.plateau_factor,
                                                                     patience=self.plateau_patience)


@dataclass
class FitResult:
    history: list[dict]  # rank 0: every epoch's metrics (NaN as None), resumed epochs included
    best: dict[str, torch.Tensor] | None  # weights of the best epoch (a metric was monitored)
    start_epoch: int  # epochs done before this call (> 0: resumed)


TrainFn = Callable[[nn.Module, torch.optim.Optimizer, int], Mapping[str, Any]]
ValidateFn = Callable[[nn.Module, int], Mapping[str, Any]]


def fit(model: nn.Module, *, epochs: int, optim: Optimization, train_epoch: TrainFn, validate: ValidateFn,
        reporter: Reporter, monitor: str = "", patience: int = 0, prepare: Callable[[nn.Module], nn.Module] | None = None,
        before_epoch: Callable[[int], None] | None = None, callbacks: Sequence[Callable[[dict], None]] = (),
        static: Mapping[str, Any] | None = None, name: str = "train") -> FitResult:
    """Train ``model`` for ``epochs`` (resuming from ``reporter``'s latest checkpoint), one checkpoint an epoch.

    Per epoch: ``before_epoch(epoch)`` (0-based; the fault-injection hook), ``train_epoch(model, optimizer,
    epoch)`` (the prepared model; returns ``train_*`` metrics), the cosine schedule's step, ``validate(model, epoch)``
    (``val_*`` metrics; may be ``{}`` on ranks that do not validate), the plateau schedule's step and early stopping
    on ``monitor`` (lower is better; every rank must return it then), the best weights kept, the report
    (``epoch``, ``static`` entries, ``start_epoch``, ``lr`` = this epoch's rate, the train and val metrics,
    ``best_epoch`` / ``best_<monitor>``, ``seconds`` of the whole epoch) with, on rank 0, a checkpoint
    (:func:`save_training_state`) named ``epoch_NNNN``, and ``callbacks(metrics)``. Stops early when ``patience``
    epochs pass without a new best ``monitor``.

    ``prepare`` wraps the restored model for the device (Ray Train's ``prepare_model``: device move + DDP); the
    optimiser holds the parameters before it, which a device move keeps. A restored ``best`` is the checkpoint's;
    a new run starts from the initial weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if optim.schedule == "plateau" and not monitor:
        raise ValueError("the plateau schedule needs a monitored metric (monitor=...)")
    optimizer, scheduler = optim.build(model, epochs)
    stopper = EarlyStopping(patience) if monitor else None
    start, history, best = 0, [], None
    with reporter.latest() as ckpt:
        if ckpt is not None:
            state, history = load_training_state(ckpt)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if optim.schedule == "cosine":
                scheduler.T_max = epochs  # a resumed run may have been given more epochs: stretch the cosine
            if stopper is not None:
                stopper.load_state_dict(state["stopper"])
                best = torch.load(Path(ckpt) / BEST_FILE, map_location="cpu", weights_only=True)
            start = int(state["epoch"])
            log.info("%s: rank %d resuming after epoch %d", name, reporter.rank, start)
    if stopper is not None and best is None:
        best = cpu_state(model)
    if stopper is not None and stopper.should_stop:
        log.info("%s: early stopping had ended this run at epoch %d", name, start)
        return FitResult(history, best, start)
    run = prepare(model) if prepare is not None else model

    for epoch in range(start, epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch + 1, **dict(static or {}), "start_epoch": start,
                                   "lr": optimizer.param_groups[0]["lr"]}  # this epoch's rate, before any step
        metrics.update(train_epoch(run, optimizer, epoch))
        if optim.schedule == "cosine":
            scheduler.step()
        metrics.update(validate(run, epoch))
        if stopper is not None:
            if monitor not in metrics:
                raise KeyError(f"{name}: validate() returned no {monitor!r} (the monitored metric) on rank "
                               f"{reporter.rank}; it returned {sorted(metrics)}")
            value = float(metrics[monitor])
            if optim.schedule == "plateau":
                scheduler.step(value)
            if stopper.step(value, epoch + 1):
                best = cpu_state(run)
            metrics.update({"best_epoch": stopper.best_epoch, f"best_{monitor}": stopper.best})
        metrics["seconds"] = time.perf_counter() - t0
        if reporter.rank == 0:
            history.append(finite_or_none(metrics))
            shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_dice", "val_dice_mean", "val_auc",
                                              "val_accuracy") if k in metrics}
            log.info("%s epoch %d/%d: %s", name, epoch + 1, epochs, shown)
            with tempfile.TemporaryDirectory() as tmp:
                save_training_state(tmp, model=run, optimizer=optimizer, scheduler=scheduler, epoch=epoch + 1,
                                    history=history, stopper=stopper, best=best)
                reporter.report(metrics, Path(tmp), epoch + 1)
        else:
            reporter.report(metrics, None, epoch + 1)
        for cb in callbacks:
            cb(metrics)
        if stopper is not None and stopper.should_stop:
            log.info("%s: early stop after epoch %d (best epoch %d, %s %.4f)", name, epoch + 1, stopper.best_epoch,
                     monitor, stopper.best)
            break
    return FitResult(history, best, start)


__all__ = ["BEST_FILE", "DirectoryReporter", "EarlyStopping", "FitResult", "HISTORY_FILE", "Optimization", "Reporter",
           "STATE_FILE", "autocast", "cpu_state", "finite_or_none", "fit", "load_best", "load_training_state",
           "save_training_state", "unwrap"]
