"""Readers for the lesion-segmentation datasets: IDRiD (grading + segmentation parts) and FGADR Seg-set.

A lesion mask path is null when that image has no mask file for the kind, which for these datasets
means "no lesion of that kind annotated" (an empty mask). A whole lesion folder that is missing is
reported once as a folder-level problem (line 0).
"""

from __future__ import annotations

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog._collector import Collector, LabelFile, grade_at
from dr_ray.io.catalog._csv import csv_rows, fit_row, open_labels, parse_grade, read_label_text
from dr_ray.io.catalog._paths import (
    MASK_EXTENSIONS,
    FolderIndex,
    basename,
    first_dir,
    has_ext,
    require_root,
    resolve_labels,
    stem,
)
from dr_ray.io.catalog._result import CatalogResult, LabelProblem
from dr_ray.io.catalog._rows import new_row

# --- IDRiD ---------------------------------------------------------------------------------------

_IDRID_SPLITS = (("train", "a. Training Set"), ("test", "b. Testing Set"))
_IDRID_SUFFIX = {"MA": "ma", "HE": "he", "EX": "ex", "SE": "se"}  # _OD (optic disc) is ignored


def _part(root: str, name: str) -> str | None:
    """``root/name``, or ``root/name/name`` when the archive was extracted into a folder of its own name."""
    p = first_dir(root, (name,))
    if p is None:
        return None
    nested = first_dir(p, (name,))
    return nested or p


def _idrid_split_of(csv_path: str) -> str:
    name = basename(csv_path).lower()
    return "test" if ("test" in name or name.startswith("b.")) else "train"


def read_idrid(root: str, labels: str = "") -> CatalogResult:
    """IDRiD (Porwal et al. 2018), either or both of its parts.

    Disease grading (516 images, 413 train / 103 test)::

        root/B. Disease Grading/1. Original Images/a. Training Set/IDRiD_001.jpg   (b. Testing Set)
        root/B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
        root/B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv
            Image name,Retinopathy grade,Risk of macular edema   (+ empty padding columns)

    Every ``*.csv`` in ``2. Groundtruths`` is read (so the brief's ``a. IDRiD_Training Set.csv``
    naming works too); its split is "test" when its name contains "test" or starts with "b.",
    else "train". ``labels`` names one grading CSV instead (relative to root or absolute).

    Lesion segmentation (81 images, 54 train / 27 test)::

        root/A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg         (b. Testing Set)
        root/A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/
            1. Microaneurysms/IDRiD_01_MA.tif   2. Haemorrhages/..._HE.tif
            3. Hard Exudates/..._EX.tif         4. Soft Exudates/..._SE.tif   (5. Optic Disc ignored)

    Masks are matched by their ``_MA/_HE/_EX/_SE`` suffix anywhere under the split's groundtruth
    folder. A missing file -> that lesion path null (IDRiD has soft-exudate masks for only part of
    the images: an empty mask). A kind with no mask at all in a split is reported (line 0).
    ``A. Segmentation/A. Segmentation/...`` (archive extracted into its own name) is accepted too.

    Ids: the grading test images reuse the training names (both start at IDRiD_001), so ids carry
    part and split: ``idrid/grading/train/IDRiD_001``, ``idrid/grading/test/IDRiD_001``,
    ``idrid/segmentation/train/IDRiD_01``. Segmentation images have no grade (null); grading
    images have no lesion masks. IDRiD has no patient ids: each image is its own patient, eye null.
    Caveat: the segmentation images are said to show eyes that are also in the grading part, and
    no mapping is published, so do not put both parts in one train/test experiment without care.
    """
    dataset = "idrid"
    root = require_root(dataset, root)
    grading = _part(root, "B. Disease Grading")
    segmentation = _part(root, "A. Segmentation")
    if grading is None and segmentation is None and not labels:
        raise FileNotFoundError(
            f"{dataset}: neither 'B. Disease Grading' nor 'A. Segmentation' found under {root}"
        )
    out = Collector(dataset)
    if grading is not None or labels:
        _idrid_grading(root, grading, labels, out)
    if segmentation is not None:
        _idrid_segmentation(segmentation, out.rows, out.problems)
    return out.result()


def _idrid_grading(root: str, grading: str | None, labels: str, out: Collector) -> None:
    dataset = out.dataset
    if labels:
        csvs = [resolve_labels(root, labels)]
    else:
        gt = fs.join(grading, "2. Groundtruths")
        csvs = [f for f in fs.list_files(gt) if f.lower().endswith(".csv")]
        if not csvs:
            raise FileNotFoundError(f"{dataset}: no grading CSV in {gt}")
    base = grading or root
    for path in csvs:
        split = _idrid_split_of(path)
        folder = fs.join(base, "1. Original Images", dict(_IDRID_SPLITS)[split])
        index = FolderIndex(folder if fs.is_dir(folder) else None)
        if not index.exists:
            raise FileNotFoundError(f"{dataset}: image folder for {path} not found: {folder}")
        header, records = open_labels(dataset, path)
        i_img = header.require("Image name", "image")
        i_grade = header.require("Retinopathy grade", "grade")
        label_file = LabelFile(path, len(header), i_img, index, grade_at(i_grade),
                               expected=lambda cell, native: native + ".jpg")
        # Same rows and problems, but each grading file is its own id space (ids carry the split: the
        # test images reuse the training names), so duplicates and unlabelled images are per file.
        per_file = Collector(dataset, out.rows, out.problems)
        for line, fields in records:
            rec = per_file.label_row(label_file, line, fields)
            if rec is not None:
                per_file.rows.append(new_row(dataset, f"grading/{split}/{rec.native}", rec.image,
                                             grade=rec.grade, split=split))
        per_file.report_unlabelled(index, [path])


def _idrid_segmentation(seg: str, rows: list, problems: list) -> None:
    dataset = "idrid"
    for split, sub in _IDRID_SPLITS:
        folder = fs.join(seg, "1. Original Images", sub)
        if not fs.is_dir(folder):
            continue
        index = FolderIndex(folder)
        gt = fs.join(seg, "2. All Segmentation Groundtruths", sub)
        masks: dict[tuple[str, str], str] = {}
        for f in fs.list_files(gt, recursive=True):
            if not has_ext(f, MASK_EXTENSIONS):
                continue
            s = stem(f)
            image_stem, _, suffix = s.rpartition("_")
            kind = _IDRID_SUFFIX.get(suffix.upper())
            if kind and image_stem:
                masks.setdefault((image_stem.lower(), kind), f)
        present = {kind for _, kind in masks}
        for suffix, kind in _IDRID_SUFFIX.items():
            if kind not in present:
                problems.append(LabelProblem(
                    gt, 0, f"no {C.LESION_NAMES[kind]} masks (*_{suffix}.tif) found; "
                           f"{C.lesion_mask_column(kind)} left null for the {split} segmentation images"))
        for image in index.images(problems):
            native = stem(image)
            lesion = {C.lesion_mask_column(k): masks.get((native.lower(), k)) for k in _IDRID_SUFFIX.values()}
            rows.append(new_row(dataset, f"segmentation/{split}/{native}", image, split=split, **lesion))


# --- FGADR ---------------------------------------------------------------------------------------

_FGADR_MASKS = (
    ("ma", ("Microaneurysms_Masks",)),
    ("he", ("Hemohedge_Masks", "Hemorrhage_Masks", "Haemorrhage_Masks")),
    ("ex", ("HardExudate_Masks",)),
    ("se", ("SoftExudate_Masks",)),
    ("irma", ("IRMA_Masks",)),
    ("nv", ("Neovascularization_Masks",)),
)


def read_fgadr(root: str, labels: str = "") -> CatalogResult:
    """FGADR Seg-set (Zhou et al. 2021): 1,842 images with six lesion masks and a DR grade.

    Layout (``root`` may be the release folder holding ``Seg-set/`` or ``Seg-set`` itself)::

        Seg-set/Original_Images/0001_1.png
        Seg-set/Microaneurysms_Masks/0001_1.png   Hemohedge_Masks/  (sic; Hemorrhage_Masks accepted)
        Seg-set/HardExudate_Masks/  SoftExudate_Masks/  IRMA_Masks/  Neovascularization_Masks/
        Seg-set/DR_Seg_Grading_Label.csv          rows "0001_1.png,3", no header

    Masks have the image's file name. A missing mask folder is reported (line 0) and its column
    left null; a missing mask file -> null (empty mask). ``labels`` overrides the grade CSV path. A
    first row whose grade cell is not a number is taken as a header and skipped.

    Rows come from the image folder, because the masks are useful without a grade: an image with no
    grade row keeps grade null and is reported (line 0); a grade row whose image is missing or that
    does not parse is reported with its line. FGADR names do not identify patients, so each image is
    its own patient, eye null.
    """
    dataset = "fgadr"
    root = require_root(dataset, root)
    base = first_dir(root, ("Seg-set", "")) if not fs.is_dir(fs.join(root, "Original_Images")) else root
    images_dir = fs.join(base, "Original_Images")
    if not fs.is_dir(images_dir):
        raise FileNotFoundError(f"{dataset}: image folder not found: {images_dir} (nor under {root}/Seg-set)")
    index = FolderIndex(images_dir)
    path = resolve_labels(base, labels) if labels else fs.join(base, "DR_Seg_Grading_Label.csv")
    out = Collector(dataset)

    grades: dict[str, int] = {}
    label_file = LabelFile(path, 2, 0, index, grade_at(1), expected=lambda cell, native: basename(cell))
    for n, (line, fields) in enumerate(csv_rows(read_label_text(path))):
        if n == 0 and _is_header(fields):
            continue
        rec = out.label_row(label_file, line, fields)
        if rec is not None:
            grades[rec.native] = rec.grade

    mask_index: dict[str, FolderIndex] = {}
    for kind, names in _FGADR_MASKS:
        folder = first_dir(base, names)
        if folder is None:
            out.problem(fs.join(base, names[0]), 0,
                        f"{C.LESION_NAMES[kind]} mask folder not found; {C.lesion_mask_column(kind)} left null")
            continue
        mask_index[kind] = FolderIndex(folder, MASK_EXTENSIONS)

    ungraded = []
    for image in index.images(out.problems):
        native = stem(image)
        grade = grades.get(native)
        if grade is None:
            ungraded.append(basename(image))
        lesion = {C.lesion_mask_column(k): (mi.find(basename(image)) if (mi := mask_index.get(k)) else None)
                  for k, _ in _FGADR_MASKS}
        out.rows.append(new_row(dataset, native, image, grade=grade, **lesion))
    if ungraded:
        names = ", ".join(ungraded[:5]) + (", ..." if len(ungraded) > 5 else "")
        out.problem(path, 0, f"{len(ungraded)} image(s) have no valid grade row; kept with grade null: {names}")
    return out.result()


def _is_header(fields: list[str]) -> bool:
    """FGADR's grade CSV has no header; a first record whose grade cell is not a grade and whose
    image cell is not an image file name is taken as one."""
    row = fit_row(fields, 2)
    if isinstance(row, str):
        return False  # reported by the row checks
    return isinstance(parse_grade(row[1]), str) and not has_ext(row[0], (".png", ".jpg", ".jpeg", ".tif"))
