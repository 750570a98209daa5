"""What every config section shares: :class:`ConfigError`, the :func:`check` / :func:`plain_name` helpers, and
the two field groups that several sections repeat, :class:`ActorPoolConfig` (the model actor pool of the
inference stages: ``batch_size``, ``actors``, ``gpus_per_actor``, ``cpus_per_actor``, ``amp_bf16``) and
:class:`ScalingConfig` (the Ray Train workers of the training stages: ``num_workers``, ``use_gpu``). A section
subclasses a group and is decorated with :func:`shared_fields`, which places the group's fields among the
section's own at a fixed spot, so the YAML keys stay flat (``vessels.actors: 2``) and every section keeps the
key order it had before the groups existed (``config.yaml`` dumps, "known keys" lists in error messages).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=type)


class ConfigError(ValueError):
    """A config file, key or value is wrong. The message names the key path."""


def check(cond: bool, key: str, value: object, why: str) -> None:
    """Raise ``ConfigError("<key>=<value!r>: <why>")`` unless ``cond``: the one form of every range check."""
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def plain_name(value: str) -> bool:
    """Whether ``value`` is a usable folder name (non-empty, no ``/``, not ``.`` or ``..``)."""
    return bool(value) and "/" not in value and value not in (".", "..")


class FieldGroup:
    """Base of the shared field groups. A group is a plain class, not a dataclass, on purpose: a dataclass base
    would put its fields first in every subclass, which would reorder the subclass's keys. Its annotated
    attributes become fields of each section decorated with :func:`shared_fields`."""


def shared_fields(after: str) -> Callable[[T], T]:
    """Class decorator, placed under ``@dataclass(frozen=True)``: make the annotated fields of the class's
    :class:`FieldGroup` bases dataclass fields of the class, right after its own field ``after``, in the
    group's order. A section that needs another default for a group field redeclares it (anywhere in its body);
    the field keeps its place in the group and takes the section's default."""

    def splice(cls: T) -> T:
        group: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            if issubclass(base, FieldGroup) and base is not FieldGroup:
                group.update(base.__dict__.get("__annotations__", {}))
        if not group:
            raise TypeError(f"{cls.__name__}: @shared_fields needs a FieldGroup base (ActorPoolConfig, ScalingConfig)")
        own = dict(cls.__dict__.get("__annotations__", {}))
        rest = [name for name in own if name not in group]
        if after not in rest:
            raise TypeError(f"{cls.__name__}: @shared_fields(after={after!r}) names no field of the class itself")
        at = rest.index(after) + 1
        order = rest[:at] + list(group) + rest[at:]
        cls.__annotations__ = {name: own.get(name, group.get(name)) for name in order}
        return cls

    return splice


class ActorPoolConfig(FieldGroup):
    """The model actor pool of a stage that runs a model over a Ray Data stream (``vessels``, ``pseudo_labels``,
    ``label``, ``evaluate``, ``predict``). Each section's docstring says what its actors hold."""

    batch_size: int = 16  # images per forward pass on one actor
    actors: int = 1  # model actor pool size: one per GPU on a GPU cluster
    gpus_per_actor: float = 0.0  # 1 on a GPU cluster (0.5 puts two actors on a GPU); 0 = CPU inference
    cpus_per_actor: float = 1.0  # CPU slots per actor (input decode, the host side of the forward, its outputs)
    amp_bf16: bool = True  # bf16 autocast + channels_last on GPU (ignored on CPU)

    def check_pool(self, section: str) -> None:
        """Range-check the pool fields; errors name ``<section>.<key>`` (e.g. ``vessels.actors``)."""
        k = section + "."
        check(1 <= self.batch_size <= 4096, k + "batch_size", self.batch_size, "must be in 1..4096")
        check(1 <= self.actors <= 1024, k + "actors", self.actors, "must be in 1..1024")
        check(0.0 <= self.gpus_per_actor <= 8.0, k + "gpus_per_actor", self.gpus_per_actor, "must be in 0..8")
        check(0.0 < self.cpus_per_actor <= 64, k + "cpus_per_actor", self.cpus_per_actor, "must be in (0, 64]")


class ScalingConfig(FieldGroup):
    """The Ray Train worker group of a training stage (``train_vessels``, ``train_lesions``, ``train``), as Ray
    Train's own ``ScalingConfig`` names it."""

    num_workers: int = 1  # Ray Train workers (DDP when > 1); each loads its shard of the training data
    use_gpu: bool = False  # one GPU per worker

    def check_scaling(self, section: str) -> None:
        """Range-check the worker fields; errors name ``<section>.<key>`` (e.g. ``train.num_workers``)."""
        check(1 <= self.num_workers <= 1024, section + ".num_workers", self.num_workers, "must be in 1..1024")
