"""A saved model is a directory: ``model.pt`` (state dict) + ``metadata.json`` (MONAI bundles, nanochat).

``metadata.json`` keys:
    format_version: int (1)
    spec: :class:`ModelSpec` as a dict (name, in/out channels, input_size px, mean/std, output, kwargs)
    config: the resolved config the model was trained with (JSON-serialisable dict)
    git_sha / git_dirty: commit of the dr-ray checkout that wrote it (None when not a git checkout)
    versions: {"python", "torch", "timm"}
    created_utc: ISO-8601 time the directory was written
    train_data_hash: str | None, identifies the training data (e.g. a hash of the training manifest)
    model_sha256: sha256 hex of ``model.pt``; checked before loading
    pretrained_file: None, or the weight file the backbone started from (``model.pretrained_file_info``, set by
        :mod:`dr_ray.models.pretrained`): {"file", "sha256", "size_bytes", "format", "module", ...}
    extra: free-form dict (metrics, epoch, ...)

Local paths only (``model.pt`` must be a real file for ``torch.load``); copy from object storage first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import pickle
import platform
import subprocess
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from dr_ray.models.registry import ModelSpec, create_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
METADATA_FILE = "metadata.json"
_REPO_DIR = Path(__file__).resolve().parents[2]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of the file at ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git(*args: str) -> str | None:
    """Output of ``git <args>`` in the dr-ray checkout, or None (no git, not a checkout, timeout)."""
    try:
        out = subprocess.run(["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("git %s failed: %s", args, e)
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit SHA, whether tracked files have uncommitted changes); (None, None) outside a git checkout."""
    sha = _git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


def save_model_dir(model: nn.Module, path: str | Path, *, config: dict, train_data_hash: str | None,
                   extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``path/model.pt`` (CPU state dict) and ``path/metadata.json``; returns the directory.

    ``model`` must come from ``create_model`` (it needs a ``.spec``). ``config`` and ``extra`` must be
    JSON-serialisable. An existing artifact in ``path`` is refused unless ``overwrite=True``.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"model must carry a ModelSpec .spec (build it with create_model), got {type(spec).__name__}")
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if train_data_hash is not None and not isinstance(train_data_hash, str):
        raise ValueError(f"train_data_hash must be a str or None, got {train_data_hash!r}")
    out = Path(path)
    if (out / METADATA_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / METADATA_FILE} already exists; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_state()
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "config": config,
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_data_hash": train_data_hash,
        "model_sha256": None,
        "pretrained_file": getattr(model, "pretrained_file_info", None),
        "extra": extra or {},
    }
    meta_text = json.dumps(meta, indent=2, sort_keys=True)  # fail on non-JSON config before writing weights
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    torch.save(state, weights)
    meta["model_sha256"] = file_sha256(weights)
    meta_text = json.dumps(meta, indent=2, sort_keys=True)
    (out / METADATA_FILE).write_text(meta_text + "\n")
    logger.info("saved %s (%s, sha256 %s) to %s", spec.name, spec.kwargs, meta["model_sha256"][:12], out)
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``path/metadata.json`` as a dict (no weights loaded)."""
    f = Path(path) / METADATA_FILE
    if not f.is_file():
        raise FileNotFoundError(f"no {METADATA_FILE} in {path} (not a saved model directory)")
    return json.loads(f.read_text())


def load_model_dir(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``metadata.json``'s spec and load ``model.pt``; returns (model in eval mode, metadata).

    Raises ValueError when model.pt's sha256 differs from the metadata, when the file is not a plain
    tensor state dict (``torch.load(weights_only=True)`` refuses pickled objects), or when keys are
    missing/unexpected.
    """
    d = Path(path)
    meta = read_metadata(d)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{d / METADATA_FILE}: format_version {meta.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}")
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    actual = file_sha256(weights)
    if actual != meta.get("model_sha256"):
        raise ValueError(f"{weights}: sha256 {actual} does not match metadata.json's model_sha256 "
                         f"{meta.get('model_sha256')} (file modified or truncated)")
    spec = ModelSpec.from_dict(meta["spec"])
    model = create_model(spec.name, **dict(spec.kwargs), pretrained=False)
    if model.spec != spec:
        # The saved spec is what the weights were trained with; keep it (e.g. timm changed a default mean).
        logger.warning("rebuilt spec %s differs from saved spec %s; using the saved one", model.spec, spec)
        model.spec = spec
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{weights} is not a plain tensor state dict (refused by weights_only=True): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{weights} holds a {type(state).__name__}, expected a state dict")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{weights} does not match {spec.name} {dict(spec.kwargs)}: "
                         f"missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}")
    model.to(map_location).eval()
    return model, meta


def artifact_hash(path: str | Path, n: int = 12) -> str:
    """Short content hash (first ``n`` hex chars of sha256 of ``model.pt``) to stamp output rows with."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    return file_sha256(weights)[:n]
