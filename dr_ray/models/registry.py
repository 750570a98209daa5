"""Model registry: ``@register_model(name)`` + ``create_model(name, **kwargs)`` (timm's habit).

Every builder returns an ``nn.Module`` carrying a ``.spec`` (:class:`ModelSpec`): the preprocessing a
caller must apply (input size, mean/std, output activation) and the keyword arguments that rebuild the
same architecture. The spec is what ``artifacts.save_model_dir`` writes into ``metadata.json``, so an
inference stage never hard-codes a normalisation.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

OUTPUT_KINDS = ("sigmoid", "softmax")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects and how to rebuild it.

    name: registry name (``create_model(name, **kwargs)`` rebuilds the architecture).
    in_channels / out_channels: channels of the input image and of the logits.
    input_size: int px, side of the square input the model is trained at (the scale inference must resize to).
    mean / std: per-input-channel normalisation applied to images scaled to [0, 1]:
        ``x = (image / 255 - mean) / std``.
    output: "sigmoid" (independent per-class probabilities; binary masks) or "softmax" (over the class axis).
    kwargs: the builder keyword arguments (JSON-serialisable, ``pretrained`` excluded).
    """

    name: str
    in_channels: int
    out_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values (in_channels), "
                             f"got mean={self.mean!r}, std={self.std!r}")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size <= 0:
            raise ValueError(f"input_size must be a positive int (px), got {self.input_size!r}")
        if "pretrained" in self.kwargs:
            raise ValueError("spec kwargs must not contain 'pretrained' (weights come from the artifact)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"], d["kwargs"] = list(self.mean), list(self.std), jsonable(dict(self.kwargs))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        known = {"name", "in_channels", "out_channels", "input_size", "mean", "std", "output", "kwargs"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(name=d["name"], in_channels=int(d["in_channels"]), out_channels=int(d["out_channels"]),
                   input_size=int(d["input_size"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), output=d["output"], kwargs=dict(d.get("kwargs", {})))


def jsonable(v: Any) -> Any:
    """Tuples -> lists (JSON has no tuples) so that a saved spec compares equal to a reloaded one."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` (with ``.spec``) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty str, got {name!r}")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__}."
                             f"{_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = builder
        return builder

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, *, pretrained_file: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``; the result has a ``.spec`` (:class:`ModelSpec`).

    ``pretrained_file``: a local path or URI of a safetensors / torch weight file loaded into the model's timm
    backbone (:func:`dr_ray.models.pretrained.load_backbone_file`; not with ``pretrained=True``).
    """
    if pretrained_file and kwargs.get("pretrained"):
        raise ValueError(f"create_model({name!r}): pass pretrained=True (hub weights) or pretrained_file="
                         f"{pretrained_file!r}, not both")
    if name not in _REGISTRY:
        known = list_models()
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(known) or '(none)'}")
    model = _REGISTRY[name](**kwargs)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"builder for {name!r} returned a model without a ModelSpec .spec (got {type(spec).__name__})")
    if pretrained_file:
        from dr_ray.models.pretrained import load_backbone_file

        load_backbone_file(model, pretrained_file)
    return model
