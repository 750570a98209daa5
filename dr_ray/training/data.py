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

from dr_ray.imaging.enhance import INPUT_MODES, vessel_input  # noqa: F401 - the model input, a pure image function
from dr_ray.io import fs

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class VesselRecord:
    """Where one training image and its masks come from: files, or a synthetic frame (``synthetic_seed``)."""

    image_id: str
    patient_id: str
    path: str = ""  # RGB image (local path or URI); "" for synthetic
    vessel_mask_path: str = ""  # binary vessel mask; "" = use av_mask_path > 0
    av_mask_path: str = ""  # 0 background, 1 artery, 2 vein, 3 crossing
    fov_mask_path: str = ""  # "" = derived from the image (dr_ray.imaging.fov.fov_mask): CHASE_DB1, STARE
    synthetic_seed: int = -1  # >= 0: draw dr_ray.testing.make_fundus(seed, size, size, lesions=False)
    synthetic_size: int = 0


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


def load_vessel_image(rec: VesselRecord, *, scale: float = 1.0, input_mode: str = "rgb") -> VesselImage:
    """Decode ``rec`` (or draw it), resize by ``scale`` (area for the image, nearest for the masks), then
    turn the image into the model input ``input_mode`` (:func:`vessel_input`)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
    if rec.synthetic_seed >= 0:
        from dr_ray.testing import make_fundus

        f = make_fundus(rec.synthetic_seed, rec.synthetic_size, rec.synthetic_size, lesions=False)
        image, mask, fov = f.image, f.vessel_mask, f.fov_mask
    else:
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
    if scale != 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interp)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        fov = cv2.resize(fov.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    image = vessel_input(np.ascontiguousarray(image, np.uint8), input_mode)
    return VesselImage(rec.image_id, np.ascontiguousarray(image, np.uint8), mask.astype(bool), fov.astype(bool))


def load_vessel_images(records: Sequence[VesselRecord], *, scale: float = 1.0,
                       input_mode: str = "rgb") -> list[VesselImage]:
    return [load_vessel_image(r, scale=scale, input_mode=input_mode) for r in records]


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
    """sha256 of the sorted training image ids with their file sizes (synthetic: seed and size)."""
    lines = []
    for r in sorted(records, key=lambda r: r.image_id):
        if r.synthetic_seed >= 0:
            sizes = [f"synthetic:{r.synthetic_seed}:{r.synthetic_size}"]
        else:
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
    """Random flips / rot90 (applied to all three) and brightness, contrast, gamma (image only).

    image: (P, P, 3) float32 in 0..1; mask, fov: (P, P) bool. Returns the same shapes, image clipped to 0..1.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    arrays = []
    for a in (image, mask, fov):
        a = np.rot90(a, k, axes=(0, 1))
        arrays.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    image, mask, fov = arrays
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    contrast = float(rng.uniform(0.8, 1.2))
    brightness = float(rng.uniform(-0.1, 0.1))
    image = np.clip(image, 0.0, 1.0) ** gamma
    image = (image - image.mean()) * contrast + image.mean() + brightness
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask, fov


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
