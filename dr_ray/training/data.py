"""Vessel-segmentation data, Ray-free: records -> in-memory images -> augmented, normalised patch batches.

Vessel datasets are small (DRIVE 20, HRF 45, LES-AV 22 images), so every worker decodes its images once
and keeps them in memory; an epoch draws ``patches_per_image`` random patches from each.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from dr_ray.config.schema import PreprocessConfig
from dr_ray.imaging.enhance import INPUT_MODES, vessel_input  # noqa: F401 - the model input, a pure image function
from dr_ray.imaging.fov import crop_fov_mask, crop_to_fov
from dr_ray.imaging.preprocess import preprocess_image
from dr_ray.io import fs
from dr_ray.training.transforms import PairedTransform, jitter_intensity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VesselRecord:
    """Where one training image and its masks come from (files; the synthetic sets are written as files too:
    :func:`dr_ray.testing.write_synthetic_set`)."""

    image_id: str
    patient_id: str
    path: str = ""  # RGB image (local path or URI)
    vessel_mask_path: str = ""  # binary vessel mask; "" = use av_mask_path > 0
    av_mask_path: str = ""  # 0 background, 1 artery, 2 vein, 3 crossing
    fov_mask_path: str = ""  # "" = derived from the image (dr_ray.imaging.fov.fov_mask): CHASE_DB1, STARE
    field_degrees: float = 45.0  # the camera's nominal field of view (config.schema.VESSEL_FIELD_DEGREES)


@dataclass(frozen=True)
class VesselImage:
    """One decoded image at the training scale."""

    image_id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool, vessel pixels
    fov: np.ndarray  # (H, W) bool, field of view


def _decode(path: str, mode: str) -> np.ndarray:
    """Decode with PIL (DRIVE ships .tif images and .gif masks, which OpenCV cannot read)."""
    with Image.open(io.BytesIO(fs.read_bytes(path))) as im:
        if mode == "RGB":
            return np.asarray(im.convert("RGB"))
        if im.mode in ("P", "L", "1", "I", "I;16"):
            return np.asarray(im if im.mode != "1" else im.convert("L"))
        return np.asarray(im.convert("L"))


def _binary(mask: np.ndarray, name: str, path: str) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"{name} {path}: expected a single-channel mask, got shape {mask.shape}")
    return mask > (mask.max() / 2 if mask.max() > 1 else 0)


def fov_diameter_px(fov: np.ndarray) -> float:
    """Diameter of a (H, W) bool field of view, px: the wider of its row and column extents (a disc cut at the
    top and bottom of the frame keeps its full width)."""
    ys, xs = np.nonzero(fov)
    if not len(ys):
        raise ValueError("field of view is empty")
    return float(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)


def vessel_scale_factor(fov_px: float, fov_diameter: int, field_degrees: float = 45.0) -> float:
    """Resize factor that brings an image whose FOV is ``fov_px`` wide (a ``field_degrees`` camera) to the vessel
    scale of a 45-degree FOV ``fov_diameter`` px wide: equal px per degree of retina."""
    if fov_px <= 0 or fov_diameter <= 0 or field_degrees <= 0:
        raise ValueError(f"fov_px, fov_diameter, field_degrees must be > 0, got {fov_px}, {fov_diameter}, "
                         f"{field_degrees}")
    return fov_diameter * (field_degrees / 45.0) / fov_px


def crop_like_stored(mask: np.ndarray, geom, size: int, margin: float) -> np.ndarray:
    """(H, W) bool mask in source px -> (size, size) bool: the preprocess stage's FOV crop of it (``geom``: the
    FOV circle in source px, as ``PreprocessResult.fov``), resized like the image and thresholded at half."""
    rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return crop_to_fov(rgb, geom, size=size, margin=margin, mask_outside=False)[..., 0] > 127


def as_stored(image: np.ndarray, mask: np.ndarray, fov: np.ndarray, data: bytes, pre: PreprocessConfig
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the preprocess stage stores for this image (``preprocess_image`` of its file ``data``: FOV crop at
    ``pre.size``, CLAHE, ...), with the manual and FOV masks cropped alike (FOV: also inside the stored circle and
    the source frame). Training on this is training on what ``dr-ray vessels`` is fed."""
    res = preprocess_image(data, pre)
    geom, size, margin = res.fov, pre.size, pre.fov_margin  # res.fov is in source px, as the masks are
    fov = crop_like_stored(fov, geom, size, margin) & crop_fov_mask(geom, mask.shape, size=size, margin=margin)
    return res.image, crop_like_stored(mask, geom, size, margin) & fov, fov


def load_vessel_image(rec: VesselRecord, *, scale: float = 1.0, input_mode: str = "rgb",
                      fov_diameter: int = 0, preprocess: PreprocessConfig | None = None) -> VesselImage:
    """Decode ``rec`` (or draw it); with ``preprocess``, replace it by what the preprocess stage would store
    (:func:`as_stored`); resize by ``scale`` or, when ``fov_diameter`` > 0, to that vessel scale
    (:func:`vessel_scale_factor` of its FOV; area for the image, nearest for the masks), then turn the image
    into the model input ``input_mode`` (:func:`vessel_input`)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
    if not rec.path:
        raise ValueError(f"{rec.image_id}: record has no image path")
    image = _decode(rec.path, "RGB")
    if rec.vessel_mask_path:
        mask = _binary(_decode(rec.vessel_mask_path, "L"), "vessel_mask_path", rec.vessel_mask_path)
    elif rec.av_mask_path:
        av = _decode(rec.av_mask_path, "L")
        if av.ndim != 2 or av.max() > 3:
            raise ValueError(f"av_mask_path {rec.av_mask_path}: expected labels 0..3, got max {av.max()}")
        mask = av > 0
    else:
        raise ValueError(f"{rec.image_id}: neither vessel_mask_path nor av_mask_path is set")
    if rec.fov_mask_path:
        fov = _binary(_decode(rec.fov_mask_path, "L"), "fov_mask_path", rec.fov_mask_path)
    else:  # datasets without FOV masks: the preprocess stage's detector (red channel above its threshold)
        from dr_ray.imaging.fov import fov_mask

        fov = fov_mask(image)
    for name, m in (("vessel mask", mask), ("FOV mask", fov)):
        if m.shape != image.shape[:2]:
            raise ValueError(f"{rec.image_id}: {name} shape {m.shape} differs from the image's {image.shape[:2]}")
    fov_px = None
    if preprocess is not None:
        image, mask, fov = as_stored(image, mask, fov, fs.read_bytes(rec.path), preprocess)
        fov_px = preprocess.size / (1.0 + preprocess.fov_margin)  # the stored circle, as the vessels stage takes it
    if fov_diameter:
        scale = vessel_scale_factor(fov_px or fov_diameter_px(fov), fov_diameter, rec.field_degrees)
    if scale != 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interp)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        fov = cv2.resize(fov.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    image = vessel_input(np.ascontiguousarray(image, np.uint8), input_mode)
    return VesselImage(rec.image_id, np.ascontiguousarray(image, np.uint8), mask.astype(bool), fov.astype(bool))


def load_vessel_images(records: Sequence[VesselRecord], *, scale: float = 1.0, input_mode: str = "rgb",
                       fov_diameter: int = 0, preprocess: PreprocessConfig | None = None) -> list[VesselImage]:
    return [load_vessel_image(r, scale=scale, input_mode=input_mode, fov_diameter=fov_diameter, preprocess=preprocess)
            for r in records]


def split_by_patient(records: Sequence[VesselRecord], *, val_fraction: float,
                     seed: int) -> tuple[list[VesselRecord], list[VesselRecord]]:
    """(train, val): whole patients held out, ``round(val_fraction * patients)`` of them, at least one,
    and at least one left for training. Deterministic for a given seed and set of records."""
    patients = sorted({r.patient_id for r in records})
    if len(patients) < 2:
        raise ValueError(f"records: need images of at least 2 patients to hold one out, got {len(patients)}")
    n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    rng = np.random.default_rng(seed)
    val_patients = set(rng.permutation(patients)[:n_val].tolist())
    train = [r for r in records if r.patient_id not in val_patients]
    val = [r for r in records if r.patient_id in val_patients]
    return train, val


def train_data_hash(records: Sequence[VesselRecord]) -> str:
    """sha256 of the sorted training image ids with their file sizes."""
    lines = []
    for r in sorted(records, key=lambda r: r.image_id):
        sizes = []
        for p in (r.path, r.vessel_mask_path, r.av_mask_path, r.fov_mask_path):
            if p:
                filesystem, inner = fs.resolve(p)
                sizes.append(str(filesystem.get_file_info(inner).size))
        lines.append("\t".join([r.image_id, *sizes]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- patches and augmentation -------------------------------------------------------------------


def sample_patch_origins(fov: np.ndarray, n: int, patch: int, rng: np.random.Generator, *,
                         fov_bias: float = 0.9) -> np.ndarray:
    """(n, 2) int (y, x) top-left corners of ``patch``-px squares inside a (H, W) frame, H, W >= patch.

    With probability ``fov_bias`` a patch is centred on a uniformly drawn FOV pixel (clipped to the frame),
    else anywhere in the frame.
    """
    h, w = fov.shape
    if h < patch or w < patch:
        raise ValueError(f"fov: frame {h}x{w} is smaller than the patch ({patch}); pad it first")
    ys, xs = np.nonzero(fov)
    out = np.empty((n, 2), np.int64)
    for i in range(n):
        if len(ys) and rng.random() < fov_bias:
            j = rng.integers(len(ys))
            cy, cx = ys[j] - patch // 2, xs[j] - patch // 2
        else:
            cy, cx = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        out[i] = (min(max(cy, 0), h - patch), min(max(cx, 0), w - patch))
    return out


def pad_to_at_least(img: VesselImage, size: int) -> VesselImage:
    """Zero-pad (bottom/right) so both sides are >= ``size``; padding is outside the FOV."""
    h, w = img.mask.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return img
    return VesselImage(img.image_id, np.pad(img.image, ((0, ph), (0, pw), (0, 0))),
                       np.pad(img.mask, ((0, ph), (0, pw))), np.pad(img.fov, ((0, ph), (0, pw))))


def augment(image: np.ndarray, mask: np.ndarray, fov: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One :class:`PairedTransform` applied to all three, then :func:`jitter_intensity` of the image.

    image: (P, P, 3) float32 in 0..1; mask, fov: (P, P) bool. Returns the same shapes, image clipped to 0..1.
    """
    t = PairedTransform.draw(rng)
    return jitter_intensity(t(image), rng), t(mask), t(fov)


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) float 0..1 or uint8 -> (3, H, W) float32 with the model's mean/std."""
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def patch_counts(n_images: int, *, patches_per_image: int, num_patches: int | None,
                 rng: np.random.Generator) -> list[int]:
    """Patches to draw from each of ``n_images`` images in one epoch: ``patches_per_image`` each, or, when
    ``num_patches`` is given, exactly that many from images drawn round-robin in a random order (DDP workers
    need equal step counts even when their image shards differ in size)."""
    if num_patches is None:
        return [patches_per_image] * n_images
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches!r}")
    return np.bincount(rng.permutation(n_images)[np.arange(num_patches) % n_images], minlength=n_images).tolist()


def patch_batches(images: Sequence[VesselImage], *, patch: int, patches_per_image: int, batch_size: int,
                  mean: Sequence[float], std: Sequence[float], rng: np.random.Generator,
                  fov_bias: float = 0.9, augment_patches: bool = True,
                  num_patches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of shuffled patch batches: {"image": (B, 3, P, P) float32 normalised,
    "mask": (B, 1, P, P) float32 0/1, "fov": (B, 1, P, P) float32 0/1}. The last batch may be smaller.

    ``patches_per_image`` patches from every image, or, when ``num_patches`` is given, exactly that many
    from images drawn round-robin in a random order (DDP workers need equal step counts even when their
    image shards differ in size).
    """
    if not images:
        raise ValueError("images: empty; nothing to train on")
    padded = [pad_to_at_least(im, patch) for im in images]
    counts = patch_counts(len(padded), patches_per_image=patches_per_image, num_patches=num_patches, rng=rng)
    jobs = [(i, o) for i, (im, n) in enumerate(zip(padded, counts))
            for o in sample_patch_origins(im.fov, n, patch, rng, fov_bias=fov_bias)]
    order = rng.permutation(len(jobs))
    for start in range(0, len(order), batch_size):
        xs, ms, fs_ = [], [], []
        for j in order[start:start + batch_size]:
            i, (y, x) = jobs[j]
            im = padded[i]
            img = im.image[y:y + patch, x:x + patch].astype(np.float32) / 255.0
            m, f = im.mask[y:y + patch, x:x + patch], im.fov[y:y + patch, x:x + patch]
            if augment_patches:
                img, m, f = augment(img, m, f, rng)
            xs.append(normalise(img, mean, std))
            ms.append(m[None].astype(np.float32))
            fs_.append(f[None].astype(np.float32))
        yield {"image": torch.from_numpy(np.stack(xs)), "mask": torch.from_numpy(np.stack(ms)),
               "fov": torch.from_numpy(np.stack(fs_))}
