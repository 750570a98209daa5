"""Backbone weights from a file (``pretrained_file``): a timm / Hugging Face ``safetensors`` file or a plain torch
state dict, local or ``s3://`` (any URI :mod:`dr_ray.io.fs` reads), loaded into a model's timm backbone.

This is the offline counterpart of ``pretrained=True`` (a hub download): ``create_model(name,
pretrained_file=uri, **kw)`` builds the model without weights and calls :func:`load_backbone_file`.

The backbone is the model's timm network: ``model.image_encoder`` for the classifiers (the image branch; DCAT:
its first backbone, ``train.backbone``), else ``model.encoder`` (U-Net encoders of vessel / lesion models,
the Swin U-Net's encoder). Only that one network is loaded; decoders, heads, fusion blocks and second branches
keep their initialisation.

Reading (:func:`read_weight_file`): ``*.safetensors`` with ``safetensors``, anything else with
``torch.load(weights_only=True)`` (timm's ``load_state_dict``: unwraps ``state_dict`` / ``model`` /
``state_dict_ema`` / ``model_ema`` containers, preferring EMA weights as timm does, and strips DDP / compile
``module.`` / ``_orig_mod.`` prefixes; ``argparse.Namespace`` training args are allow-listed, nothing else
unpickles). URIs are streamed to a temporary local file first. The sha256 of the file's bytes is recorded.

Key mapping onto the plain timm model of the backbone's architecture (:func:`map_state_dict`), in order:
    1. a wrapper prefix (``model.``, ``backbone.``, ``encoder.``, ``image_encoder.``) is stripped when that
       matches more of the model's keys;
    2. MAE layout (RETFound, He et al. 2022 MAE; any key ``decoder_*``): the decoder (``decoder_*``) and the
       ``mask_token`` are dropped;
    3. the final token norm: a file with ``fc_norm.*`` but no ``norm.*`` fills a model that has ``norm.*`` only,
       and vice versa (MAE fine-tuning with global pooling renames ``norm`` to ``fc_norm``; timm's
       ``vit_*`` default is class-token pooling with ``norm``);
    4. the architecture's own ``checkpoint_filter_fn`` from timm when it has one (ViT: patch-embedding and
       position-table resampling to the model's ``img_size`` / patch size, CLIP / DINOv2 layouts; Swin:
       relative-position tables for another window; ConvNeXt: original FB layout);
    5. the classifier head (timm ``pretrained_cfg["classifier"]``) is dropped: backbones here are headless;
    6. an input convolution with 3 channels where the model has ``in_chans != 3`` is adapted with
       ``timm.models.adapt_input_conv`` (as timm does for ``pretrained=True``).
Then every tensor the backbone needs must come from the file with the model's shape, and every remaining file
tensor must belong to the architecture; otherwise ValueError naming the file and the first offending keys.
For a ``features_only`` backbone (built by :func:`dr_ray.models.unet.create_encoder`), the mapping is checked
against the plain timm model of the same architecture and copied through timm's feature-net key renaming
(``layers.0`` <-> ``layers_0``, :mod:`dr_ray.models.transfer`); tensors the feature net does not use (final
norm, ``conv_head``) may be present or absent.

What was loaded is recorded on the model as ``model.pretrained_file_info`` (a dict, see :func:`load_backbone_file`)
and written by :func:`dr_ray.models.artifacts.save_model_dir` into ``metadata.json`` (key ``pretrained_file``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from torch import nn

from dr_ray.io import fs

logger = logging.getLogger(__name__)

INFO_ATTR = "pretrained_file_info"  # model attribute save_model_dir reads
BUILD_ATTR = "timm_build"  # set by create_encoder on features_only nets: {"name", "kwargs"} to rebuild the plain model
BACKBONE_ATTRS = ("image_encoder", "encoder")  # where a model keeps its timm backbone, first match wins
WRAPPER_PREFIXES = ("model.", "backbone.", "encoder.", "image_encoder.")
MAE_DROP_PREFIXES = ("decoder_", "mask_token")
_CHUNK = 1 << 22
_SHOW = 8  # offending keys named in an error


@dataclass(frozen=True)
class WeightFile:
    """A weight file as read: ``uri`` (as given), ``sha256`` (hex, of the file's bytes), ``size_bytes``, the
    number of tensors and ``format`` ("safetensors" | "torch")."""

    uri: str
    sha256: str
    size_bytes: int
    tensors: int
    format: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format(uri: str) -> str:
    return "safetensors" if uri.lower().endswith(".safetensors") else "torch"


def _local_copy(uri: str) -> tuple[str, str, int, bool]:
    """(local path, sha256, size in bytes, is a temporary copy) of ``uri``; a URI is streamed to a temp file."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"pretrained_file must be a non-empty path or URI, got {uri!r}")
    filesystem, inner = fs.resolve(uri)
    info = filesystem.get_file_info(inner)
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"pretrained_file {uri}: file not found")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"pretrained_file {uri}: not a file (a directory?)")
    h = hashlib.sha256()
    size = 0
    if not fs.is_uri(uri) or uri.startswith("file://"):
        with open(inner, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
                size += len(chunk)
        return inner, h.hexdigest(), size, False
    suffix = ".safetensors" if _format(uri) == "safetensors" else ".pt"  # timm picks the reader by suffix
    fd, tmp = tempfile.mkstemp(prefix="dr_ray_weights_", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, filesystem.open_input_stream(inner) as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp, h.hexdigest(), size, True


def read_weight_file(uri: str) -> tuple[dict[str, torch.Tensor], WeightFile]:
    """Tensors of a safetensors / torch weight file (module doc, "Reading") and its :class:`WeightFile`.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything that is not a
    readable dict of tensors (truncated or corrupt file, pickled objects ``weights_only=True`` refuses, a
    checkpoint without a state dict).
    """
    from timm.models import load_state_dict

    path, sha, size, temporary = _local_copy(uri)
    fmt = _format(uri)
    try:
        state = load_state_dict(path, use_ema=True, device="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, zipfile.BadZipFile, SafetensorError) as e:
        raise ValueError(f"pretrained_file {uri}: cannot read it as a {fmt} weight file (truncated, corrupt, "
                         f"or holding objects weights_only=True refuses): {type(e).__name__}: {e}") from e
    finally:
        if temporary:
            os.unlink(path)
    if not isinstance(state, Mapping) or not state:
        what = "an empty dict" if isinstance(state, Mapping) else f"a {type(state).__name__}"
        raise ValueError(f"pretrained_file {uri}: holds {what}, expected a state dict of tensors "
                         f"(or {{'model': state_dict}})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"pretrained_file {uri}: entries {bad[:_SHOW]} are not tensors; expected a state dict "
                         f"(or a checkpoint with it under 'state_dict' / 'model')")
    wf = WeightFile(uri=uri, sha256=sha, size_bytes=size, tensors=len(state), format=fmt)
    logger.info("read %s: %d tensors, %d bytes, sha256 %s", uri, len(state), size, sha[:12])
    return dict(state), wf


def check_weight_file(uri: str) -> WeightFile:
    """Read ``uri`` once (raising the errors of :func:`read_weight_file`) and return its :class:`WeightFile`:
    a driver calls this before starting workers so that a bad file fails at once, in one clear error."""
    return read_weight_file(uri)[1]


# ------------------------------------------------------------------------------------------- key mapping

def _strip_wrapper_prefix(state: dict[str, torch.Tensor], target: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    best, best_hits = "", len(target & set(state))
    for p in WRAPPER_PREFIXES:
        hits = len(target & {k[len(p):] for k in state if k.startswith(p)})
        if hits > best_hits:
            best, best_hits = p, hits
    if not best:
        return state, ""
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}, best


def is_mae_layout(state: Mapping[str, Any]) -> bool:
    """True for an MAE pre-training checkpoint (encoder + ``decoder_*`` tensors), e.g. RETFound."""
    return any(k.startswith("decoder_") for k in state)


def mae_encoder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of an MAE (RETFound) state dict: ``decoder_*`` and ``mask_token`` dropped; the remaining
    keys (``patch_embed.proj.*``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm.*`` / ``fc_norm.*``) are
    already timm ``VisionTransformer`` names."""
    return {k: v for k, v in state.items() if not k.startswith(MAE_DROP_PREFIXES)}


def _final_norm(state: dict[str, torch.Tensor], target: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    has = {p: any(k.startswith(p + ".") for k in state) for p in ("norm", "fc_norm")}
    wants = {p: any(k.startswith(p + ".") for k in target) for p in ("norm", "fc_norm")}
    for src, dst in (("fc_norm", "norm"), ("norm", "fc_norm")):
        if has[src] and not has[dst] and wants[dst] and not wants[src]:
            return {(dst + k[len(src):] if k.startswith(src + ".") else k): v for k, v in state.items()}, \
                f"{src}.* -> {dst}.*"
    return state, ""


def timm_filter_fn(architecture: str):
    """timm's ``checkpoint_filter_fn(state_dict, model)`` of ``architecture``'s model family, or None."""
    entry = timm.models.model_entrypoint(timm.models.get_arch_name(architecture))
    module = sys.modules.get(entry.__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _names(v: Any) -> tuple[str, ...]:
    if not v:
        return ()
    return (v,) if isinstance(v, str) else tuple(v)


def map_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, architecture: str
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """File state -> keys and shapes of ``model`` (a plain, headless timm model of ``architecture``), steps 1-6
    of the module doc. Returns (mapped state, notes on what was done). Does not check completeness."""
    target_sd = model.state_dict()
    target = set(target_sd)
    notes: list[str] = []
    out, prefix = _strip_wrapper_prefix(dict(state), target)
    if prefix:
        notes.append(f"stripped prefix {prefix!r}")
    if is_mae_layout(out):
        n = len(out)
        out = mae_encoder_state(out)
        notes.append(f"MAE layout: dropped {n - len(out)} decoder/mask_token tensors")
    out, how = _final_norm(out, target)
    if how:
        notes.append(f"final norm {how}")
    fn = timm_filter_fn(architecture)
    if fn is not None:
        out = dict(fn(out, model))
        notes.append(f"timm {fn.__module__}.checkpoint_filter_fn")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = tuple(h for h in _names(cfg.get("classifier")) if not any(k.startswith(h + ".") for k in target))
    dropped = [k for k in out if any(k.startswith(h + ".") for h in heads)]
    if dropped:
        out = {k: v for k, v in out.items() if k not in dropped}
        notes.append(f"dropped classifier {dropped}")
    for conv in _names(cfg.get("first_conv")):
        k = conv + ".weight"
        w, t = out.get(k), target_sd.get(k)
        if w is not None and t is not None and w.ndim == 4 and t.ndim == 4 and w.shape != t.shape \
                and w.shape[1] == 3 and t.shape[1] != 3 and w.shape[0] == t.shape[0] and w.shape[2:] == t.shape[2:]:
            out[k] = timm.models.adapt_input_conv(int(t.shape[1]), w)
            notes.append(f"adapted {k} from 3 to {int(t.shape[1])} input channels")
    return out, notes


def _mismatch_error(uri: str, where: str, *, missing: list[str], unexpected: list[str],
                    shapes: list[str]) -> ValueError:
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape (file vs model): {shapes[:_SHOW]}")
    if missing:
        parts.append(f"{len(missing)} tensors the model needs are missing from the file: {missing[:_SHOW]}")
    if unexpected:
        parts.append(f"{len(unexpected)} file tensors do not belong to the model: {unexpected[:_SHOW]}")
    return ValueError(f"pretrained_file {uri} does not fit {where}: " + "; ".join(parts)
                      + " (another architecture or variant? check train.backbone / encoder and the file)")


# ------------------------------------------------------------------------------------------- loading

def backbone_of(model: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of ``model``'s timm backbone (module doc); ValueError when it has none."""
    for attr in BACKBONE_ATTRS:
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            return attr, m
    raise ValueError(f"{type(model).__name__} has no timm backbone ({' / '.join(BACKBONE_ATTRS)}) to load a "
                     f"pretrained_file into (e.g. graph_fusion without the image modality)")


def _plain_model(backbone: nn.Module) -> tuple[nn.Module, str, bool]:
    """(plain headless timm model to map onto, architecture, is a features_only net)."""
    build = getattr(backbone, BUILD_ATTR, None)
    if isinstance(build, Mapping):  # features_only net from create_encoder: rebuild the plain model
        kwargs = {k: v for k, v in dict(build["kwargs"]).items()
                  if k not in ("features_only", "pretrained", "out_indices", "feature_cls", "output_stride")}
        plain = timm.create_model(build["name"], pretrained=False, num_classes=0, **kwargs)
        return plain, str(build["name"]), True
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture") and hasattr(backbone, "forward_head"):
        return backbone, str(cfg["architecture"]), False
    raise ValueError(f"cannot load a pretrained_file into {type(backbone).__name__}: it is neither a timm model nor "
                     f"a features_only net from dr_ray.models.unet.create_encoder")


def load_backbone_file(model: nn.Module, uri: str) -> dict[str, Any]:
    """Load the weight file ``uri`` into ``model``'s timm backbone (module doc) and return what was done, also
    stored as ``model.pretrained_file_info``: {"file", "sha256", "size_bytes", "format", "module" (attribute),
    "architecture", "loaded_tensors", "file_tensors", "notes"}.

    Raises FileNotFoundError / ValueError (naming the file) for a missing or unreadable file, and ValueError
    naming the file and the first offending keys when it does not fit the backbone.
    """
    attr, backbone = backbone_of(model)
    plain, arch, features = _plain_model(backbone)
    state, wf = read_weight_file(uri)
    mapped, notes = map_state_dict(state, plain, arch)
    plain_sd = plain.state_dict()
    where = f"{type(model).__name__}.{attr} ({arch})"
    if features:
        from dr_ray.models.transfer import rename_state_keys

        own = backbone.state_dict()
        names, _ = rename_state_keys({k: k for k in plain_sd}, set(own))  # feature-net key -> plain key
        unmapped = sorted(set(own) - set(names))
        if unmapped:  # a timm naming transfer.py does not know: a dr-ray bug, not the file's
            raise RuntimeError(f"cannot map {arch} feature-net keys {unmapped[:_SHOW]} to the plain model's")
        needed = {names[k]: k for k in own}  # plain key -> feature-net key
    else:
        needed = {k: k for k in plain_sd}
    shapes = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(plain_sd[k].shape)}"
              for k in sorted(set(mapped) & set(plain_sd)) if mapped[k].shape != plain_sd[k].shape]
    missing = sorted(set(needed) - set(mapped))
    unexpected = sorted(set(mapped) - set(plain_sd))
    if shapes or missing or unexpected:
        raise _mismatch_error(uri, where, missing=missing, unexpected=unexpected, shapes=shapes)
    load = {needed[k]: mapped[k] for k in needed}
    backbone.load_state_dict(load, strict=True)
    info = {"file": wf.uri, "sha256": wf.sha256, "size_bytes": wf.size_bytes, "format": wf.format, "module": attr,
            "architecture": arch, "loaded_tensors": len(load), "file_tensors": wf.tensors, "notes": notes}
    setattr(model, INFO_ATTR, info)
    logger.info("loaded %d tensors of %s (sha256 %s) into %s; %s", len(load), uri, wf.sha256[:12], where,
                "; ".join(notes) or "keys as in the file")
    return info


def mark_pretrained_file(model: nn.Module, weight_file: WeightFile | None) -> nn.Module:
    """Record ``weight_file`` on ``model`` (as ``pretrained_file_info``) without loading it: for a model rebuilt
    to receive trained weights from a checkpoint whose training started from that file. Returns ``model``."""
    if weight_file is not None:
        attr, _ = backbone_of(model)
        d = weight_file.to_dict()
        setattr(model, INFO_ATTR, {"file": d.pop("uri"), **d, "module": attr,
                                   "note": "training started from this file; the saved weights are the trained ones"})
    return model


__all__ = ["BACKBONE_ATTRS", "WeightFile", "backbone_of", "check_weight_file", "is_mae_layout", "load_backbone_file",
           "mae_encoder_state", "map_state_dict", "mark_pretrained_file", "read_weight_file", "timm_filter_fn"]
