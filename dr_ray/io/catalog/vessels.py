"""Readers for the vessel / artery-vein datasets: DRIVE (+ RITE A/V labels), HRF-AV, LES-AV, CHASE_DB1, STARE.

Rows come from the image folder; no grades (null). Each image is its own patient, eye null (CHASE_DB1: the child,
left/right). An image
whose expected mask file is missing keeps a null path for it and is reported (line 0, file = the
mask folder); an absent optional label folder (e.g. no DRIVE_AV) just leaves the column null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog._collector import Collector
from dr_ray.io.catalog._paths import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    FolderIndex,
    dirname,
    first_dir,
    require_root,
    stem,
)
from dr_ray.io.catalog._result import CatalogResult
from dr_ray.io.catalog._rows import new_row, unique_rows


@dataclass(frozen=True)
class _Mask:
    column: str  # catalog column
    folder: str | None  # full folder path; None = not available for this dataset copy
    name: Callable[[str], str]  # image stem -> mask stem
    what: str  # for problem messages
    required: bool = False  # the dataset always ships this folder: report it when absent


def _read_folder_set(out: Collector, images_dir: str, split: str | None, masks: list[_Mask]) -> None:
    index = FolderIndex(images_dir)
    mask_index = {}
    for m in masks:
        if m.folder is not None and fs.is_dir(m.folder):
            mask_index[m.column] = FolderIndex(m.folder, MASK_EXTENSIONS)
        elif m.required and m.folder is not None:
            out.problem(m.folder, 0, f"{m.what} folder not found; {m.column} left null")
    for image in index.images(out.problems):
        native = stem(image)
        paths = {}
        for m in masks:
            mi = mask_index.get(m.column)
            if mi is None:
                continue
            hit = mi.find_stem(m.name(native))
            if hit is None:
                out.problem(m.folder, 0, f"no {m.what} for {native}: expected {m.name(native)}.*")
            paths[m.column] = hit
        out.rows.append(new_row(out.dataset, native, image, split=split, **paths))


def _dir(path: str) -> str | None:
    return path if fs.is_dir(path) else None


def _no_labels(dataset: str, labels: str) -> None:
    if labels:
        raise ValueError(f"{dataset} has no label file; labels must be empty (got {labels!r})")


def _result(out: Collector, root: str) -> CatalogResult:
    """The catalog, first row of each image id kept (folder sets of one dataset may overlap)."""
    out.rows = unique_rows(out.rows, out.problems, root)
    return out.result()


# --- DRIVE ---------------------------------------------------------------------------------------


def read_drive(root: str, labels: str = "") -> CatalogResult:
    """DRIVE (Staal et al. 2004), with the RITE artery/vein labels when a DRIVE_AV folder is found.

    Layout::

        root/training/images/21_training.tif (or .png)   root/test/images/01_test.tif
        root/training/1st_manual/21_manual1.gif          -> vessel_mask_path
        root/training/mask/21_training_mask.gif          -> fov_mask_path
        DRIVE_AV/training/1st_manual/21_training.png      -> av_mask_path (0 bg, 1 artery, 2 vein, 3 crossing)

    ``split`` is "train" for ``training/`` and "test" for ``test/``. DRIVE_AV is looked for at
    ``labels`` when given (relative to root or absolute), else ``root/DRIVE_AV``, else the sibling
    ``root/../DRIVE_AV``; a DRIVE_AV split folder that is absent leaves av_mask_path null silently,
    one that exists but lacks an image's file is reported. Ids are the image stems
    (``drive/21_training``): DRIVE numbers are unique across the two splits.
    """
    dataset = "drive"
    root = require_root(dataset, root)
    if labels:
        av_root = fs.join(root, labels)
        if not fs.is_dir(av_root):
            raise FileNotFoundError(f"{dataset}: DRIVE_AV folder not found: {av_root}")
    else:
        av_root = first_dir(root, ("DRIVE_AV",)) or _dir(fs.join(dirname(root), "DRIVE_AV"))
    out = Collector(dataset)
    found = False
    for sub, split in (("training", "train"), ("test", "test")):
        images_dir = fs.join(root, sub, "images")
        if not fs.is_dir(images_dir):
            continue
        found = True
        masks = [
            _Mask(C.VESSEL_MASK_PATH, fs.join(root, sub, "1st_manual"),
                  lambda s: f"{s.split('_')[0]}_manual1", "vessel mask", required=True),
            _Mask(C.FOV_MASK_PATH, fs.join(root, sub, "mask"), lambda s: f"{s}_mask", "FOV mask", required=True),
            _Mask(C.AV_MASK_PATH, _dir(fs.join(av_root, sub, "1st_manual")) if av_root else None,
                  lambda s: s, "artery/vein map"),
        ]
        _read_folder_set(out, images_dir, split, masks)
    if not found:
        raise FileNotFoundError(f"{dataset}: no training/images or test/images folder under {root}")
    return _result(out, root)


# --- HRF-AV / LES-AV -----------------------------------------------------------------------------


def _split_bases(root: str) -> list[tuple[str, str | None]]:
    """``root`` itself when it holds ``images/``, plus ``training/`` and ``test/`` sub-sets."""
    bases: list[tuple[str, str | None]] = []
    if fs.is_dir(fs.join(root, "images")):
        bases.append((root, None))
    for sub, split in (("training", "train"), ("test", "test")):
        if fs.is_dir(fs.join(root, sub, "images")):
            bases.append((fs.join(root, sub), split))
    return bases


def _read_split_layout(dataset: str, root: str, labels: str, masks_of: Callable[[str], list[_Mask]]) -> CatalogResult:
    """The layout HRF-AV and LES-AV share: ``images/`` plus the mask folders ``masks_of(base)``
    names, in ``root`` itself and/or in ``root/training`` and ``root/test`` (see ``_split_bases``)."""
    root = require_root(dataset, root)
    _no_labels(dataset, labels)
    bases = _split_bases(root)
    if not bases:
        raise FileNotFoundError(f"{dataset}: no images/ folder under {root} (nor training/images, test/images)")
    out = Collector(dataset)
    for base, split in bases:
        _read_folder_set(out, fs.join(base, "images"), split, masks_of(base))
    return _result(out, root)


def read_hrf_av(root: str, labels: str = "") -> CatalogResult:
    """HRF-AV: HRF images (Budai et al. 2013) with artery/vein labels (Hemelings et al. 2019).

    Layout (``root/`` itself, or ``root/training/`` and ``root/test/`` with the same sub-folders)::

        images/01_dr.JPG  01_g.jpg  01_h.jpg           (DR images use upper-case .JPG)
        1st_manual/01_dr_AVmanual.png                   -> av_mask_path (0 bg, 1 artery, 2 vein, 3 crossing)
        mask/01_dr_mask.tif                             -> fov_mask_path (RGB TIFF, use one channel)
        manual1/01_dr.tif  (optional, original HRF)     -> vessel_mask_path

    Without ``manual1/`` vessel_mask_path is null: the binary vessel mask is ``av > 0``. The
    filename category (dr / g / h) is a diagnosis, not an ICDR grade, so grade stays null; it can
    be read back from the id (``hrf_av/01_dr``). ``split`` is null for the flat layout.
    """
    return _read_split_layout("hrf_av", root, labels, lambda base: [
        _Mask(C.AV_MASK_PATH, fs.join(base, "1st_manual"), lambda s: f"{s}_AVmanual", "artery/vein map",
              required=True),
        _Mask(C.FOV_MASK_PATH, fs.join(base, "mask"), lambda s: f"{s}_mask", "FOV mask", required=True),
        _Mask(C.VESSEL_MASK_PATH, _dir(fs.join(base, "manual1")), lambda s: s, "vessel mask"),
    ])


def read_les_av(root: str, labels: str = "") -> CatalogResult:
    """LES-AV (Orlando et al. 2018): 22 optic-disc-centred images with artery/vein labels.

    Layout (``root/`` itself, or ``root/training/`` and ``root/test/`` with the same sub-folders)::

        images/42.png (or .jpg)
        1st_manual/42.png        -> av_mask_path (0 bg, 1 artery, 2 vein, 3 crossing)
        2nd_manual/42.png        -> vessel_mask_path (binary {0, 255})
        mask/42_mask.gif         -> fov_mask_path (palette GIF, values {0, 1})

    ``split`` is null for the flat layout, else "train" / "test".
    """
    return _read_split_layout("les_av", root, labels, lambda base: [
        _Mask(C.AV_MASK_PATH, fs.join(base, "1st_manual"), lambda s: s, "artery/vein map", required=True),
        _Mask(C.VESSEL_MASK_PATH, fs.join(base, "2nd_manual"), lambda s: s, "vessel mask", required=True),
        _Mask(C.FOV_MASK_PATH, fs.join(base, "mask"), lambda s: f"{s}_mask", "FOV mask", required=True),
    ])


# --- CHASE_DB1 / STARE ----------------------------------------------------------------------------

_CHASE_NAME = re.compile(r"^Image_(\d+)([LR])$", re.IGNORECASE)


def read_chase_db1(root: str, labels: str = "") -> CatalogResult:
    """CHASE_DB1 (Fraz et al. 2012; Child Heart And Health Study in England): 28 images of 14 children, both eyes.

    Layout (one flat folder, as distributed)::

        root/Image_01L.jpg  Image_01R.jpg ...          999 x 960 px
        root/Image_01L_1stHO.png                       -> vessel_mask_path (first observer, binary)
        root/Image_01L_2ndHO.png                       (second observer: not used)

    ``patient_id`` is the child (``chase_db1/01``), ``eye`` "left" (L) / "right" (R), so both eyes of a child stay
    in one fold. There are no FOV masks: fov_mask_path is null and training derives the FOV from the image
    (:func:`dr_ray.imaging.fov.fov_mask`). A file that is neither an image nor a known mask is ignored; an image
    without its ``_1stHO`` mask is reported.
    """
    dataset = "chase_db1"
    root = require_root(dataset, root)
    _no_labels(dataset, labels)
    index = FolderIndex(root, IMAGE_EXTENSIONS)
    masks = FolderIndex(root, MASK_EXTENSIONS)
    out = Collector(dataset)
    for image in index.images(out.problems):
        native = stem(image)
        m = _CHASE_NAME.match(native)
        if m is None:  # the observers' masks (Image_01L_1stHO.png) and anything else
            continue
        child, eye = m.group(1), "left" if m.group(2).upper() == "L" else "right"
        mask = masks.find_stem(f"{native}_1stHO")
        if mask is None:
            out.problem(root, 0, f"no vessel mask for {native}: expected {native}_1stHO.*")
        out.rows.append(new_row(dataset, native, image, patient=child, eye=eye,
                                **{C.VESSEL_MASK_PATH: mask}))
    if not out.rows:
        raise FileNotFoundError(f"{dataset}: no Image_NN[LR] images under {root}")
    return _result(out, root)


def read_stare(root: str, labels: str = "") -> CatalogResult:
    """STARE (Hoover et al. 2000): 20 fundus images with manual vessel segmentations by two observers.

    Layout (the distributed archives, unpacked and gunzipped)::

        root/stare-images/im0001.ppm ...     (or root/images/)      605 x 700 px
        root/labels-ah/im0001.ah.ppm         -> vessel_mask_path (Adam Hoover, the usual ground truth)
        root/labels-vk/im0001.vk.ppm         (Valentina Kouznetsova: not used)

    Each image is its own patient (STARE gives no pairing). No FOV masks: training derives the FOV from the
    image. Images without an ``.ah`` label (STARE has 400 images, 20 labelled) are left out of the catalog and
    counted in one problem line, since they cannot train a vessel model. Still-gzipped ``.ppm.gz`` files are
    reported: gunzip them first.
    """
    dataset = "stare"
    root = require_root(dataset, root)
    _no_labels(dataset, labels)
    images_dir = first_dir(root, ("stare-images", "images"))
    if images_dir is None:
        raise FileNotFoundError(f"{dataset}: no stare-images/ (or images/) folder under {root}")
    labels_dir = first_dir(root, ("labels-ah",))
    if labels_dir is None:
        raise FileNotFoundError(f"{dataset}: no labels-ah/ folder under {root}")
    gz = [f for f in fs.list_files(images_dir) + fs.list_files(labels_dir) if f.lower().endswith(".gz")]
    out = Collector(dataset)
    if gz:
        out.problem(images_dir, 0, f"{len(gz)} files are still gzipped (e.g. {gz[0]}): gunzip them")
    masks = FolderIndex(labels_dir, MASK_EXTENSIONS)
    unlabelled = 0
    for image in FolderIndex(images_dir).images(out.problems):
        native = stem(image)
        mask = masks.find_stem(f"{native}.ah")
        if mask is None:
            unlabelled += 1
            continue
        out.rows.append(new_row(dataset, native, image, **{C.VESSEL_MASK_PATH: mask}))
    if unlabelled:
        out.problem(labels_dir, 0, f"{unlabelled} images have no {labels_dir}/<image>.ah.* label: left out")
    if not out.rows:
        raise FileNotFoundError(f"{dataset}: no labelled images under {images_dir}")
    return _result(out, root)
