"""Load a :class:`Config` from ``configs/defaults.yaml`` + a delta file + ``--set a.b=c`` overrides.

Unknown keys fail with their full path and a "did you mean"; values are type-checked against the
dataclass fields and then range-checked by the dataclasses' own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

from dr_ray.config.schema import Config, ConfigError

T = TypeVar("T")

# configs/ at the repository root; jobs run from a checkout (or a `ray job submit --working-dir`).
REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(known)})"


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one YAML value against a field type. Raises ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}={value!r}: must be one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{path}={value!r}: expected a list")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r}: expected a string")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # a schema bug, not a user error


def build_config(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """The config dataclass ``cls`` from the mapping ``data``, every value type-checked (nested dataclasses
    too); raises ConfigError naming the dotted key under ``path`` (e.g. ``"train"``) for an unknown key or a
    bad value."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {full!r}{_suggest(str(key), list(fields))}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e


def _deep_merge(base: dict, delta: Mapping, path: str = "") -> dict:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return dict(data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], yaml-parsed "c")."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {e}") from e
    return key.split("."), value


def _set_path(tree: dict, keys: list[str], value: Any) -> dict:
    tree = dict(tree)
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        node[k] = dict(child) if isinstance(child, Mapping) else {}
        node = node[k]
    node[keys[-1]] = value
    return tree


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    defaults: str | Path | None = None,
    cls: type[T] = Config,  # type: ignore[assignment]
) -> T:
    """Resolve a config: dataclass defaults <- defaults.yaml <- ``path`` <- ``overrides``.

    ``defaults`` defaults to ``defaults.yaml`` beside ``path`` (or in the repo's ``configs/``) when it exists.
    """
    tree: dict = {}
    if defaults is None:
        candidates = [Path(path).parent / "defaults.yaml"] if path else []
        candidates.append(REPO_CONFIG_DIR / "defaults.yaml")
        defaults = next((c for c in candidates if c.is_file()), None)
    if defaults is not None:
        tree = _read_yaml(Path(defaults))
    if path is not None and (defaults is None or Path(path).resolve() != Path(defaults).resolve()):
        tree = _deep_merge(tree, _read_yaml(Path(path)))
    for text in overrides:
        keys, value = parse_override(text)
        tree = _set_path(tree, keys, value)
    return build_config(cls, tree)


def to_dict(cfg: Any) -> dict:
    """Plain dict (tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(section: Any) -> str:
    """Stable 16-hex-digit hash of a config (section): the same settings always give the same hash."""
    blob = json.dumps(to_dict(section), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
