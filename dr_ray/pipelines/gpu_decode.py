"""Batched JPEG decoding on a GPU (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``), with the CPU
decoder (:func:`dr_ray.imaging.decode`) as the per-image fallback; ``preprocess.decode_device: cuda`` selects it.

What a batch goes through (:func:`decode_batch`):

1. every file, on CPU: :func:`~dr_ray.imaging.plan_decode` (probe, header checks, truncated-JPEG check, the
   libjpeg reduction the CPU path would use), so a bad file gets exactly the CPU path's ``ImageDecodeError``;
2. the JPEGs among the files that pass, in ONE ``decode_jpeg(list, mode=RGB, device=device)`` call (full
   resolution; if that call raises, each image alone, to find the ones that fail);
3. each decoded frame downscaled on the device (area average, i.e. a box filter) to the size the CPU reduced-DCT
   decode produces for that file (``ceil(H / f), ceil(W / f)``, same ``choose_reduction`` factor ``f``), so the
   FOV search and the crop downstream see the same geometry; then copied to the host as (h, w, 3) uint8 RGB;
4. whatever step 2 or 3 could not do (not a JPEG: PNG, TIFF ...; nvJPEG refused the image; the device resize
   failed) is decoded by the CPU path instead, and one warning per batch says how many and why.

Pixels differ slightly from the CPU path (nvJPEG's IDCT and chroma upsampling + a box filter vs libjpeg's scaled
IDCT): about one grey level on average on the EyePACS sample (tests/imaging/test_gpu_decode.py).

This module lives in ``pipelines`` because it imports torch (``dr_ray.imaging`` is torch-free); torch and
torchvision are imported only when a function here runs, never by importing this module, so the CPU task
modules stay torch-free. A process that runs the CUDA path holds torch (~0.5 GB per worker process).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from dr_ray.imaging import ImageDecodeError, ImageHeader, decode, decoded_shape, plan_decode
from dr_ray.imaging.decode import JPEG_FORMATS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["Decoded", "DecodeOutcome", "select_device", "decode_batch", "decode_batch_report"]

Decoded = tuple[np.ndarray, int, ImageHeader]  # what dr_ray.imaging.decode returns: (image, factor, header)
DecodeOutcome = Union[Decoded, ImageDecodeError]  # per input file: decoded, or the reason it is unusable


def select_device(setting: str) -> str:
    """The torch device the batched decoder runs on for ``preprocess.decode_device=setting``: ``"cuda"``.

    Raises RuntimeError naming ``preprocess.decode_device`` when this process sees no CUDA device (a task
    without a GPU: ``preprocess.decode_gpus_per_task`` is 0 or the cluster has no GPU) instead of quietly
    decoding the whole run on CPU. ValueError for a setting other than "cuda".
    """
    if setting != "cuda":
        raise ValueError(f"setting: the batched decoder runs for preprocess.decode_device=cuda, got {setting!r}")
    import torch

    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise RuntimeError(
            "preprocess.decode_device=cuda, but this process sees no CUDA device (torch.cuda.is_available() is "
            f"False; CUDA_VISIBLE_DEVICES={visible!r}). Give the preprocess tasks a GPU "
            "(preprocess.decode_gpus_per_task > 0, on a cluster with GPUs) or set preprocess.decode_device=cpu.")
    return "cuda"


def _as_tensor(data: bytes) -> torch.Tensor:
    """File bytes -> 1-D uint8 CPU tensor (a copy: torch wants a writable buffer)."""
    import torch

    return torch.from_numpy(np.frombuffer(data, np.uint8).copy())


def _decode_jpeg(tensors: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """One ``torchvision.io.decode_jpeg`` call on a list: (3, H, W) uint8 RGB tensors on ``device``, in order.

    torchvision 0.29 deprecates its image decoders in favour of TorchCodec; that DeprecationWarning is expected
    here and not repeated per batch. Raises what decode_jpeg raises (RuntimeError for data nvJPEG refuses)."""
    import torchvision.io

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        out = torchvision.io.decode_jpeg(tensors, mode=torchvision.io.ImageReadMode.RGB, device=device)
    if not isinstance(out, list) or len(out) != len(tensors):
        raise RuntimeError(f"decode_jpeg returned {type(out).__name__} of length "
                           f"{len(out) if hasattr(out, '__len__') else '?'} for {len(tensors)} inputs")
    return out


def _device_decode(blobs: Sequence[bytes], device: str) -> tuple[list[torch.Tensor | Exception], str | None]:
    """Decode JPEG bytes on ``device``: one batched call; if it raises, each image alone.

    Returns (per blob the (3, H, W) uint8 tensor or the exception decode_jpeg raised for it alone, the batched
    call's error as text or None when the batched call worked)."""
    tensors = [_as_tensor(b) for b in blobs]
    try:
        return list(_decode_jpeg(tensors, device)), None
    except (RuntimeError, ValueError) as e:
        batch_error = f"{type(e).__name__}: {str(e).strip()[:160]}"
    out: list[torch.Tensor | Exception] = []
    for t in tensors:
        try:
            out.append(_decode_jpeg([t], device)[0])
        except (RuntimeError, ValueError) as e:
            out.append(e)
    return out, batch_error


def _to_host(chw: torch.Tensor, header: ImageHeader, factor: int) -> np.ndarray:
    """A full-resolution (3, H, W) uint8 decode -> (ceil(H/factor), ceil(W/factor), 3) uint8 RGB numpy array,
    downscaled on the tensor's device by area averaging. ValueError when the shape does not match ``header``."""
    import torch
    import torch.nn.functional as F

    if tuple(chw.shape) != (3, header.height, header.width) or chw.dtype != torch.uint8:
        raise ValueError(f"decode_jpeg gave {tuple(chw.shape)} {chw.dtype}; the header says "
                         f"(3, {header.height}, {header.width}) uint8")
    h, w = decoded_shape(header, factor)
    if factor > 1:
        x = F.interpolate(chw.unsqueeze(0).to(torch.float32), size=(h, w), mode="area")
        chw = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    return chw.permute(1, 2, 0).contiguous().cpu().numpy()


def _fallback_summary(reasons: dict[int, str], n: int, device: str, batch_error: str | None) -> str:
    """The one warning line of a batch: how many of ``n`` images the CPU fallback decoded, per reason."""
    counts = Counter(reasons.values())
    why = "; ".join(f"{k} x {r}" for r, k in counts.most_common())
    text = f"batched JPEG decode on {device}: {len(reasons)} of {n} images decoded on CPU instead"
    text += f" ({why})" if reasons else ""
    if batch_error is not None:
        text += f"; the batched decode_jpeg call failed ({batch_error}), images were retried one by one"
    return text


def decode_batch_report(blobs: Sequence[bytes], *, target: int | None, reduced: bool, max_pixels: int,
                        min_side: int, device: str) -> tuple[list[DecodeOutcome], dict[int, str]]:
    """:func:`decode_batch` plus, per index decoded by the CPU fallback although its file is usable, the reason
    it was not decoded on ``device`` (e.g. ``"not a JPEG (PNG)"``). Refused files are not in that dict: their
    outcome is the ImageDecodeError."""
    n = len(blobs)
    outcomes: list[DecodeOutcome | None] = [None] * n
    plans: dict[int, tuple[ImageHeader, int]] = {}
    for i, data in enumerate(blobs):
        try:
            plans[i] = plan_decode(data, target=target, reduced=reduced, max_pixels=max_pixels, min_side=min_side)
        except ImageDecodeError as e:
            outcomes[i] = e
    fallback: dict[int, str] = {i: f"not a JPEG ({h.format})" for i, (h, _) in plans.items()
                                if h.format not in JPEG_FORMATS}
    jpegs = [i for i in plans if i not in fallback]
    batch_error = None
    if jpegs:
        decoded, batch_error = _device_decode([blobs[i] for i in jpegs], device)
        for k, i in enumerate(jpegs):
            d, decoded[k] = decoded[k], None  # the full-resolution frame leaves the device once it is resized
            header, factor = plans[i]
            if isinstance(d, Exception):
                fallback[i] = f"decode_jpeg failed ({type(d).__name__}: {str(d).strip()[:120]})"
                continue
            try:
                outcomes[i] = (_to_host(d, header, factor), factor, header)
            except (RuntimeError, ValueError) as e:  # device OOM in the resize, an output that is not the frame
                fallback[i] = f"device resize / copy failed ({type(e).__name__}: {str(e).strip()[:120]})"
            del d
    for i in fallback:
        try:
            outcomes[i] = decode(blobs[i], target=target, reduced=reduced, max_pixels=max_pixels, min_side=min_side)
        except ImageDecodeError as e:
            outcomes[i] = e
    if fallback or batch_error is not None:
        log.warning("%s", _fallback_summary(fallback, n, device, batch_error))
    missing = [i for i, o in enumerate(outcomes) if o is None]
    if missing:  # every index is refused, decoded on the device or decoded by the fallback
        raise RuntimeError(f"decode_batch: no outcome for inputs {missing} (a bug)")
    return outcomes, fallback


def decode_batch(blobs: Sequence[bytes], *, target: int | None, reduced: bool, max_pixels: int, min_side: int,
                 device: str) -> list[DecodeOutcome]:
    """Decode a batch of image files, the JPEGs in one batched ``decode_jpeg`` call on ``device``.

    blobs: encoded files (any format :func:`dr_ray.imaging.decode` reads); target, reduced, max_pixels,
    min_side: as for :func:`~dr_ray.imaging.decode`; device: torch device, ``"cuda"`` (nvJPEG) in production,
    ``"cpu"`` (torchvision's libjpeg decode, then the same resize) in tests.
    Returns one outcome per blob, in order: ``(image, factor, header)`` as :func:`~dr_ray.imaging.decode`
    returns it (image (ceil(H/factor), ceil(W/factor), 3) uint8 RGB), or the ImageDecodeError that
    :func:`~dr_ray.imaging.decode` raises for that file (same reason text).
    """
    return decode_batch_report(blobs, target=target, reduced=reduced, max_pixels=max_pixels, min_side=min_side,
                               device=device)[0]
