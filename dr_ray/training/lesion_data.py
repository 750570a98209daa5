"""Lesion-segmentation data, Ray-free: records (catalog rows; files) -> in-memory images with one binary mask
per lesion kind -> lesion-biased, augmented, normalised patch batches.

Channel order is the caller's ``kinds`` (a subset of :data:`dr_ray.io.columns.LESION_KINDS`). Per image and kind,
``present`` says whether the kind was annotated at all: a kind that was annotated but has no mask file is an empty
mask (a true negative, e.g. IDRiD soft exudates on an image without any), while a kind the dataset never
annotates (IDRiD has no IRMA / NV) or whose mask folder is missing is unknown, and a loss should ignore it.

Lesion datasets are small (IDRiD 81, FGADR 1,842 images), so a worker decodes its images once at the training
scale and keeps them in memory, as the vessel data does (:mod:`dr_ray.training.data`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.training.data import augment, normalise, patch_counts, split_by_patient

log = logging.getLogger(__name__)

# Kinds each dataset annotates for every image of its lesion part (a missing mask file = no such lesion).
# IDRiD (Porwal et al. 2018): MA, HE, EX, SE (+ optic disc, not a lesion); FGADR Seg-set (Zhou et al. 2021): six.
ANNOTATED_KINDS: dict[str, tuple[str, ...]] = {
    "idrid": ("ma", "he", "ex", "se"),
    "fgadr": C.LESION_KINDS,
    "synthetic": C.LESION_KINDS,
}

__all__ = [
    "ANNOTATED_KINDS", "LesionImage", "LesionRecord", "augment_lesion_patch", "check_kinds", "lesion_data_hash",
    "lesion_patch_batches", "lesion_records_from_catalog", "load_lesion_image", "load_lesion_images",
    "read_lesion_mask", "sample_lesion_patch_origins", "split_by_patient",
]


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple; ValueError for an empty, unknown or repeated kind (TypeError for a bare string)."""
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a sequence of lesion kinds, got the string {kinds!r}")
    out = tuple(kinds)
    if not out:
        raise ValueError("kinds: empty; name at least one of " + ", ".join(C.LESION_KINDS))
    for k in out:
        if k not in C.LESION_KINDS:
            raise ValueError(f"kinds: unknown lesion kind {k!r}; known: {', '.join(C.LESION_KINDS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"kinds: repeated kind in {out}")
    return out


@dataclass(frozen=True)
class LesionRecord:
    """Where one training image and its lesion masks come from (files; the synthetic sets are written as files
    too: :func:`dr_ray.testing.write_synthetic_set`).

    mask_paths: kind -> mask file (local path or URI); a kind mapped to None or left out has no file.
    annotated: kinds annotated for this image; one of them without a file is an empty mask, a kind not in it
        is unknown (``LesionImage.present`` False).
    """

    image_id: str
    patient_id: str
    path: str = ""  # RGB image (local path or URI)
    mask_paths: Mapping[str, str | None] = field(default_factory=dict)
    annotated: tuple[str, ...] = ()
    fov_mask_path: str | None = None  # None: FOV from the image (dr_ray.imaging.fov.fov_mask)


@dataclass(frozen=True, eq=False)
class LesionImage:
    """One decoded image at the training scale. ``eq=False``: compare the arrays with ``np.array_equal``."""

    image_id: str
    kinds: tuple[str, ...]  # channel order of masks / present
    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (K, H, W) bool, one channel per kind
    fov: np.ndarray  # (H, W) bool, field of view
    present: np.ndarray  # (K,) bool, kind annotated for this image (False: unknown, not "no lesion")


# --- records -------------------------------------------------------------------------------------


def lesion_records_from_catalog(table: pa.Table | Sequence[Mapping], kinds: Sequence[str] = C.LESION_KINDS, *,
                                annotated: Mapping[str, Sequence[str]] | None = None) -> list[LesionRecord]:
    """Records for the catalog rows (``CATALOG_SCHEMA`` table or row dicts) that carry lesion annotation.

    A row's annotated kinds are ``annotated[dataset]`` (default :data:`ANNOTATED_KINDS`) among ``kinds``, less any
    kind whose mask column is null in every row of that dataset in ``table``: the readers leave a whole column
    null when its mask folder is missing (reported as a catalog problem), and then that kind is unknown, not
    absent. So pass the whole dataset, not a few rows, or a rare kind (FGADR NV: 49 files) may look missing.
    A dataset not in ``annotated`` counts a kind as annotated only where the row has its file.

    Rows without any lesion mask path (IDRiD grading images) or with none of ``kinds`` annotated are skipped;
    the count is logged.
    """
    kinds = check_kinds(kinds)
    per_dataset = ANNOTATED_KINDS if annotated is None else {d: tuple(k) for d, k in annotated.items()}
    rows = table.to_pylist() if isinstance(table, pa.Table) else [dict(r) for r in table]
    columns = {k: C.lesion_mask_column(k) for k in C.LESION_KINDS}
    with_files: dict[str, set[str]] = {}
    for r in rows:
        have = with_files.setdefault(r[C.DATASET], set())
        have.update(k for k, col in columns.items() if r.get(col))
    for dataset, expected in per_dataset.items():
        missing = [k for k in expected if k in kinds and dataset in with_files and k not in with_files[dataset]]
        if missing:
            log.warning("%s: no %s mask in any row; treated as not annotated (present=False)", dataset,
                        ", ".join(missing))
    out: list[LesionRecord] = []
    skipped = 0
    for r in rows:
        dataset = r[C.DATASET]
        paths = {k: r.get(columns[k]) or None for k in C.LESION_KINDS}
        if dataset in per_dataset:
            ann = tuple(k for k in kinds if k in per_dataset[dataset] and k in with_files[dataset])
        else:
            ann = tuple(k for k in kinds if paths[k])
        if not any(paths.values()) or not ann:
            skipped += 1
            continue
        out.append(LesionRecord(
            image_id=r[C.IMAGE_ID], patient_id=r[C.PATIENT_ID], path=r[C.PATH],
            mask_paths={k: paths[k] for k in kinds}, annotated=ann, fov_mask_path=r.get(C.FOV_MASK_PATH) or None,
        ))
    if skipped:
        log.info("lesion records: %d of %d catalog rows have no lesion annotation for %s; skipped",
                 skipped, len(rows), ", ".join(kinds))
    return out


# --- decoding ------------------------------------------------------------------------------------


def _open(path: str, what: str) -> Image.Image:
    data = fs.read_bytes(path)  # FileNotFoundError naming the path propagates
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} {path}: cannot decode ({e})") from None
    return im


def _decode_rgb(path: str) -> np.ndarray:
    with _open(path, "image") as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def read_lesion_mask(path: str) -> np.ndarray:
    """A binary mask file (PNG, TIFF, GIF, BMP, JPEG; grey, palette or RGB) -> (H, W) bool.

    A pixel is set where its brightest colour channel exceeds half the mask's maximum (0/1 masks: > 0). The
    channel maximum matters: IDRiD's TIFFs carry the lesion in the red channel only (a grey conversion gives
    76, which a fixed 128 threshold would lose); FGADR's PNGs have anti-aliased edges (1-254), cut at the middle.
    """
    with _open(path, "lesion mask") as im:
        if im.mode == "1":
            im = im.convert("L")
        elif im.mode == "P":
            im = im.convert("RGB")
        elif im.mode in ("LA", "PA"):
            im = im.convert("L")
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)
    if a.ndim != 2:
        raise ValueError(f"lesion mask {path}: expected a 2-D mask, got shape {a.shape}")
    top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return np.zeros(a.shape, bool)
    return a > (top / 2 if top > 1 else 0)


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} px"


def _resize_mask(mask: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """Max-pooling style: shrinking uses INTER_AREA on 0/1 floats and keeps every output pixel that any lesion
    pixel overlaps (> 0), so a 1-px microaneurysm survives any downscale (masks may grow by up to one output
    pixel at their edges); enlarging uses nearest neighbour."""
    h, w = mask.shape
    if (w, h) == wh:
        return mask
    if wh[0] <= w and wh[1] <= h:
        return cv2.resize(mask.astype(np.float32), wh, interpolation=cv2.INTER_AREA) > 0
    return cv2.resize(mask.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST).astype(bool)


def load_lesion_image(rec: LesionRecord, kinds: Sequence[str] = C.LESION_KINDS, size: int | None = None
                      ) -> LesionImage:
    """Decode ``rec`` (files through :mod:`dr_ray.io.fs`, local or s3) or draw it, at the training scale.

    kinds: channel order of ``masks``/``present``; a kind without a mask file gives an empty channel.
    size: longer side in px after resizing (aspect kept); None keeps the native size. The image is resized
        with INTER_AREA (INTER_LINEAR when enlarging), masks max-pooling style (:func:`_resize_mask`).
    The FOV comes from ``rec.fov_mask_path`` when set, else from :func:`dr_ray.imaging.fov.fov_mask` of the
    resized image.

    Raises ValueError naming the file when a mask's size differs from its image's (a batch job quarantines the
    record), when a mask or the image cannot be decoded, and when the frame has no field of view.
    """
    kinds = check_kinds(kinds)
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    fov: np.ndarray | None
    if not rec.path:
        raise ValueError(f"{rec.image_id}: record has no image path")
    image = _decode_rgb(rec.path)
    masks = []
    for k in kinds:
        p = rec.mask_paths.get(k)
        if not p:
            masks.append(np.zeros(image.shape[:2], bool))
            continue
        m = read_lesion_mask(p)
        if m.shape != image.shape[:2]:
            raise ValueError(f"lesion mask {p}: size {_size_text(m.shape)} differs from its image {rec.path} "
                             f"({_size_text(image.shape)})")
        masks.append(m)
    fov = None
    if rec.fov_mask_path:
        fov = read_lesion_mask(rec.fov_mask_path)
        if fov.shape != image.shape[:2]:
            raise ValueError(f"FOV mask {rec.fov_mask_path}: size {_size_text(fov.shape)} differs from its "
                             f"image {rec.path} ({_size_text(image.shape)})")
    if size is not None:
        h, w = image.shape[:2]
        scale = size / max(h, w)
        wh = (max(1, round(w * scale)), max(1, round(h * scale)))
        if wh != (w, h):
            image = cv2.resize(image, wh, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            masks = [_resize_mask(m, wh) for m in masks]
            if fov is not None:
                fov = cv2.resize(fov.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST).astype(bool)
    image = np.ascontiguousarray(image, np.uint8)
    if fov is None:
        from dr_ray.imaging.fov import fov_mask

        fov = fov_mask(image)
    if not fov.any():
        raise ValueError(f"{rec.image_id}: no field of view found in {rec.path}")
    stacked = np.stack(masks).astype(bool) if masks else np.zeros((0, *image.shape[:2]), bool)
    present = np.array([k in rec.annotated for k in kinds], bool)
    return LesionImage(rec.image_id, kinds, image, stacked, fov.astype(bool), present)


def load_lesion_images(records: Sequence[LesionRecord], kinds: Sequence[str] = C.LESION_KINDS,
                       size: int | None = None) -> list[LesionImage]:
    return [load_lesion_image(r, kinds, size) for r in records]


def lesion_data_hash(records: Sequence[LesionRecord]) -> str:
    """sha256 of the sorted image ids with the sizes of their files."""
    lines = []
    for r in sorted(records, key=lambda r: r.image_id):
        parts = []
        for p in (r.path, *(r.mask_paths.get(k) for k in sorted(r.mask_paths)), r.fov_mask_path):
            if p:
                filesystem, inner = fs.resolve(p)
                parts.append(str(filesystem.get_file_info(inner).size))
            else:
                parts.append("-")
        lines.append("\t".join([r.image_id, ",".join(r.annotated), *parts]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- patches and augmentation -------------------------------------------------------------------


def sample_lesion_patch_origins(masks: np.ndarray, fov: np.ndarray, n: int, patch: int, rng: np.random.Generator,
                                *, lesion_fraction: float = 0.5) -> np.ndarray:
    """(n, 2) int64 (y, x) top-left corners of ``patch``-px squares in a (H, W) frame, H, W >= patch.

    With probability ``lesion_fraction`` (when the image has any lesion pixel) a patch contains a lesion pixel:
    a kind is drawn uniformly among the kinds with pixels (so rare, tiny microaneurysms are drawn as often as
    large exudate fields), then a pixel of it, placed at a uniform offset inside the patch. Otherwise the patch
    is centred on a uniform FOV pixel (anywhere in the frame when the FOV is empty). Corners are clipped to the
    frame, which keeps the chosen pixel inside the patch.

    masks: (K, H, W) bool. fov: (H, W) bool.
    """
    if masks.ndim != 3 or masks.shape[1:] != fov.shape:
        raise ValueError(f"masks: expected (K, H, W) matching fov {fov.shape}, got {masks.shape}")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction!r}")
    h, w = fov.shape
    if h < patch or w < patch:
        raise ValueError(f"fov: frame {h}x{w} is smaller than the patch ({patch}); pad it first")
    lesion_px = [np.flatnonzero(m) for m in masks]
    lesion_px = [p for p in lesion_px if len(p)]
    fov_px = np.flatnonzero(fov)
    out = np.empty((n, 2), np.int64)
    for i in range(n):
        if lesion_px and rng.random() < lesion_fraction:
            px = lesion_px[int(rng.integers(len(lesion_px)))]
            y, x = divmod(int(px[rng.integers(len(px))]), w)
            oy, ox = y - int(rng.integers(patch)), x - int(rng.integers(patch))
        elif len(fov_px):
            y, x = divmod(int(fov_px[rng.integers(len(fov_px))]), w)
            oy, ox = y - patch // 2, x - patch // 2
        else:
            oy, ox = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        out[i] = (min(max(oy, 0), h - patch), min(max(ox, 0), w - patch))
    return out


def augment_lesion_patch(image: np.ndarray, masks: np.ndarray, fov: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random flip / rot90 applied identically to image, every mask channel and the FOV; brightness, contrast,
    gamma (:func:`dr_ray.training.data.augment`) and a per-channel colour gain of 0.9-1.1 on the image only.

    image: (P, P, 3) float32 0..1; masks: (K, P, P) bool; fov: (P, P) bool. Returns the same shapes and dtypes.
    """
    image, m, fov = augment(image, np.ascontiguousarray(masks.transpose(1, 2, 0)), fov, rng)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image = np.clip(image * gain, 0.0, 1.0).astype(np.float32)
    return image, np.ascontiguousarray(m.transpose(2, 0, 1)), fov


def _pad(img: LesionImage, size: int) -> LesionImage:
    """Zero-pad (bottom/right) so both sides are >= ``size``; padding is outside the FOV, without lesions."""
    h, w = img.fov.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return img
    return LesionImage(img.image_id, img.kinds, np.pad(img.image, ((0, ph), (0, pw), (0, 0))),
                       np.pad(img.masks, ((0, 0), (0, ph), (0, pw))), np.pad(img.fov, ((0, ph), (0, pw))),
                       img.present)


def lesion_patch_batches(images: Sequence[LesionImage], *, patch: int, patches_per_image: int, batch_size: int,
                         mean: Sequence[float], std: Sequence[float], rng: np.random.Generator,
                         lesion_fraction: float = 0.5, augment_patches: bool = True,
                         num_patches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of shuffled patch batches::

        "image": (B, 3, P, P) float32, normalised with mean/std
        "masks": (B, K, P, P) float32 0/1, channels in the images' ``kinds`` order
        "fov": (B, 1, P, P) float32 0/1
        "present": (B, K) float32 0/1, kind annotated for the patch's image (mask a loss with it)

    ``patches_per_image`` patches per image (:func:`sample_lesion_patch_origins` with ``lesion_fraction``), or
    exactly ``num_patches`` from images drawn round-robin in a random order (equal DDP step counts). The last
    batch may be smaller.
    """
    if not images:
        raise ValueError("images: empty; nothing to train on")
    kinds = images[0].kinds
    for im in images:
        if im.kinds != kinds:
            raise ValueError(f"images: {im.image_id} has kinds {im.kinds}, {images[0].image_id} has {kinds}")
    padded = [_pad(im, patch) for im in images]
    counts = patch_counts(len(padded), patches_per_image=patches_per_image, num_patches=num_patches, rng=rng)
    jobs = [(i, o) for i, (im, n) in enumerate(zip(padded, counts))
            for o in sample_lesion_patch_origins(im.masks, im.fov, n, patch, rng, lesion_fraction=lesion_fraction)]
    order = rng.permutation(len(jobs))
    for start in range(0, len(order), batch_size):
        xs, ms, fs_, ps = [], [], [], []
        for j in order[start:start + batch_size]:
            i, (y, x) = jobs[j]
            im = padded[i]
            img = im.image[y:y + patch, x:x + patch].astype(np.float32) / 255.0
            m, f = im.masks[:, y:y + patch, x:x + patch], im.fov[y:y + patch, x:x + patch]
            if augment_patches:
                img, m, f = augment_lesion_patch(img, m, f, rng)
            xs.append(normalise(img, mean, std))
            ms.append(m.astype(np.float32))
            fs_.append(f[None].astype(np.float32))
            ps.append(im.present.astype(np.float32))
        yield {"image": torch.from_numpy(np.stack(xs)), "masks": torch.from_numpy(np.stack(ms)),
               "fov": torch.from_numpy(np.stack(fs_)), "present": torch.from_numpy(np.stack(ps))}
