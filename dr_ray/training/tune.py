"""The Ray Tune part: search spaces from ``tune.space`` (YAML), trial configs, the ASHA scheduler and the Tuner.

A trial is a function trainable that builds one Ray Train ``TorchTrainer`` (the pattern Ray Train V2 documents for
Tune: passing a trainer to ``Tuner`` is not supported) whose workers report every epoch; Ray's
``TuneReportCallback`` forwards those reports to Tune, where ASHA compares trials at each rung (one rung step =
one epoch, ``training_iteration``). The trial function itself reserves no CPU, so that on a small machine the
trial's Ray Train worker and its Ray Data tasks get the cores (with the default one CPU per trial driver, two
concurrent trials on two cores leave nothing for the data and hang). It asks for a token of memory instead.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from dr_ray.config.loader import build_config, to_dict
from dr_ray.config.schema import ConfigError, SearchDim, TrainConfig

log = logging.getLogger(__name__)

# The trial driver only waits on its TorchTrainer: no CPU, only a token of memory (Ray refuses an empty
# resource request, and even 0.01 CPU leaves 0.99 of a core, too little for a 1-CPU Ray Data task).
TRIAL_RESOURCES = {"cpu": 0, "memory": 64 * 1024 ** 2}


def search_space(space: Sequence[SearchDim]) -> dict[str, Any]:
    """``tune.space`` -> a Ray Tune ``param_space`` (``ray.tune.choice`` / ``uniform`` / ``loguniform`` / ``randint``)."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in space:
        if d.kind == "choice":
            out[d.key] = tune.choice([list(v) if isinstance(v, tuple) else v for v in d.values])
        elif d.kind == "uniform":
            out[d.key] = tune.uniform(d.low, d.high)
        elif d.kind == "loguniform":
            out[d.key] = tune.loguniform(d.low, d.high)
        elif d.kind == "randint":
            out[d.key] = tune.randint(int(d.low), int(d.high))
        else:  # SearchDim validates kind; a new kind must be added here
            raise ValueError(f"tune.space[{d.key}]: unsupported kind {d.kind!r}")
    return out


def trial_train_config(base: TrainConfig, sampled: Mapping[str, Any], *, name: str | None = None) -> TrainConfig:
    """``base`` with the sampled ``train.*`` values, type- and range-checked like a config file (ConfigError
    naming ``train.<key>``)."""
    tree = to_dict(base)
    for k, v in sampled.items():
        if k not in tree:
            raise ConfigError(f"tune sampled unknown train key {k!r}")
        tree[k] = v
    if name is not None:
        tree["name"] = name
    return build_config(TrainConfig, tree, "train")


def check_space(base: TrainConfig, space: Sequence[SearchDim]) -> None:
    """Fail before any trial starts when a choice value or range end is not valid for its train key."""
    for d in space:
        values = d.values if d.kind == "choice" else (d.low, d.high)
        for v in values:
            if d.kind == "randint":
                v = int(v)
            value = list(v) if isinstance(v, tuple) else v
            try:
                trial_train_config(base, {d.key: value})
            except ConfigError as e:
                raise ConfigError(f"tune.space[{d.key}]: value {value!r} is not valid: {e}") from None


def choices(space: Sequence[SearchDim], key: str, default: Any) -> list[Any]:
    """The values a choice dimension ``key`` can take (``[default]`` when ``key`` is not a choice in the space)."""
    for d in space:
        if d.key == key and d.kind == "choice":
            return [list(v) if isinstance(v, tuple) else v for v in d.values]
    return [default]


def asha(*, max_t: int, grace_period: int, reduction_factor: int):
    """ASHA over ``training_iteration`` (= epochs: each trial reports once per epoch); the metric and mode come
    from the ``ray.tune.TuneConfig``."""
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: a trial that reaches max_t ends by returning from its function. Stopped by the
    # scheduler at its last report instead, Tune kills the trial actor while its Ray Train controller is still
    # shutting down (the controller is owned by the trial and dies with it), and the worker group's placement
    # group outlives it until Ray Train's PlacementGroupCleaner notices, which needs the state API (dashboard):
    # on a 2-CPU node without one, the next trial waited forever for that CPU.
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=min(grace_period, max_t), reduction_factor=reduction_factor,
                         stop_last_trials=False)


__all__ = ["TRIAL_RESOURCES", "asha", "check_space", "choices", "search_space", "trial_train_config"]

