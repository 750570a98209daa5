"""Readers for the grading datasets whose label CSV lists the images: EyePACS, APTOS, Messidor-2.

Rows come from the label file; a row that does not parse or names a missing image becomes a
:class:`LabelProblem` and is left out; image files that no row names are reported in one
folder-level problem (line 0) and left out too.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable

from dr_ray.io import fs
from dr_ray.io.catalog._collector import Collector, LabelFile, grade_at
from dr_ray.io.catalog._csv import csv_rows, open_labels, parse_grade, patient_and_eye, read_label_text
from dr_ray.io.catalog._paths import (
    IMAGE_EXTENSIONS,
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

log = logging.getLogger(__name__)


# --- EyePACS -------------------------------------------------------------------------------------

_EYEPACS_SOURCES = (
    # label file, image folders tried in order ("" = root itself), split when the file has no Usage
    ("trainLabels.csv", ("train", "images", ""), "train"),
    ("retinopathy_solution.csv", ("test", "images", ""), "test"),
)


def read_eyepacs(root: str, labels: str = "") -> CatalogResult:
    """EyePACS / Kaggle "Diabetic Retinopathy Detection" (2015).

    Layout::

        root/trainLabels.csv            image,level          (35,126 rows in the full release)
        root/train/{patient}_{left|right}.jpeg                (Kaggle); or root/images/ ; or root/
        root/retinopathy_solution.csv   image,level,Usage    (test labels released after the challenge)
        root/test/{patient}_{left|right}.jpeg                 or root/images/ ; or root/

    With ``labels`` empty, every one of the two label files that exists is read (at least one must).
    ``labels`` names one label file instead (relative to root, or absolute/URI); its images are looked
    for in ``train/`` (``test/`` when it has a Usage column), ``images/``, then root.

    ``image`` is the file stem (an extension in the cell is tolerated); ``level`` the ICDR grade.
    Patient and eye come from the stem ``{patient}_{left|right}``; a stem without that suffix keeps
    eye null and is its own patient. ``split`` is ``"train"`` for rows of a file without a Usage
    column, else ``"test_public"`` / ``"test_private"`` from Usage (Kaggle's public/private
    leaderboard halves; select the whole test set with ``split.startswith("test")``).
    Also reads the 256-px ``EyePACS_256_preproc`` layout (same files, ``images/``).
    """
    dataset = "eyepacs"
    root = require_root(dataset, root)
    if labels:
        path = resolve_labels(root, labels)
        if not fs.exists(path):
            raise FileNotFoundError(f"{dataset}: label file not found: {path}")
        sources = [(path, None)]
    else:
        sources = []
        for name, folders, split in _EYEPACS_SOURCES:
            path = fs.join(root, name)
            if fs.exists(path):
                sources.append((path, (folders, split)))
        if not sources:
            expected = " or ".join(fs.join(root, n) for n, _, _ in _EYEPACS_SOURCES)
            raise FileNotFoundError(f"{dataset}: no label file found; expected {expected}")

    out = Collector(dataset)
    indexes: dict[str, FolderIndex] = {}
    label_files: dict[str, list[str]] = {}
    for path, spec in sources:
        header, records = open_labels(dataset, path)
        i_img = header.require("image")
        i_lvl = header.require("level")
        i_use = header.find("Usage")
        if spec is None:
            folders, default_split = (("test", "images", "") if i_use is not None else ("train", "images", "")), "train"
        else:
            folders, default_split = spec
        folder = first_dir(root, folders)
        if folder is None:
            raise FileNotFoundError(f"{dataset}: no image folder for {path}; looked in {folders} under {root}")
        index = indexes.setdefault(folder, FolderIndex(folder))
        label_files.setdefault(folder, []).append(path)
        label_file = LabelFile(path, len(header), i_img, index, grade_at(i_lvl),
                               expected=lambda cell, native: native + ".jpeg", check=_usage_check(i_use))
        for line, fields in records:
            rec = out.label_row(label_file, line, fields)
            if rec is None:
                continue
            split = default_split if i_use is None else f"test_{rec.cells[i_use].lower()}"
            patient, eye = patient_and_eye(rec.native)
            out.rows.append(new_row(dataset, rec.native, rec.image, patient=patient, eye=eye, grade=rec.grade,
                                    split=split))
    for folder, index in indexes.items():
        out.report_unlabelled(index, label_files[folder])
    return out.result()


def _usage_check(i_use: int | None) -> Callable[[list[str]], str | None]:
    """``LabelFile.check`` for a Usage column (solution file): its cell must not be empty."""
    if i_use is None:
        return lambda cells: None
    return lambda cells: None if cells[i_use] else "empty Usage"


# --- APTOS ---------------------------------------------------------------------------------------


def read_aptos(root: str, labels: str = "") -> CatalogResult:
    """APTOS 2019 Blindness Detection (Kaggle).

    Layout::

        root/train.csv               id_code,diagnosis
        root/train_images/{id_code}.png
        root/test.csv                id_code               (no public labels)
        root/test_images/{id_code}.png

    ``labels`` defaults to ``train.csv``. Images are looked for in ``{label stem}_images/``
    (``train_images`` / ``test_images``), then ``images/``, then root. ``split`` is ``"test"`` for a
    label file whose name starts with "test", else ``"train"``. A label file without a
    ``diagnosis`` column (the Kaggle ``test.csv``) is read as unlabelled: grade null.
    APTOS has no patient ids: each image is its own patient (image-level folds).
    """
    dataset = "aptos"
    root = require_root(dataset, root)
    path = resolve_labels(root, labels or "train.csv")
    header, records = open_labels(dataset, path)
    name = stem(path)
    split = "test" if name.lower().startswith("test") else "train"
    folder = first_dir(root, (f"{name}_images", "train_images", "images", ""))
    i_id = header.require("id_code")
    i_dx = header.find("diagnosis")
    if i_dx is None:
        log.warning("%s has no 'diagnosis' column: reading it as unlabelled (grade null)", path)
    index = FolderIndex(folder)
    label_file = LabelFile(path, len(header), i_id, index, grade_at(i_dx),
                           expected=lambda cell, native: native + ".png")
    out = Collector(dataset)
    for line, fields in records:
        rec = out.label_row(label_file, line, fields)
        if rec is not None:
            out.rows.append(new_row(dataset, rec.native, rec.image, grade=rec.grade, split=split))
    out.report_unlabelled(index, [path])
    return out.result()


# --- Messidor-2 ----------------------------------------------------------------------------------

_MESSIDOR_LABELS = ("messidor_data.csv", "messidor-2.csv", "messidor2.csv")
_MESSIDOR_PAIRS = ("messidor-2_pairs.csv", "messidor_pairs.csv", "messidor-2.csv", "messidor2.csv")
_EYES = {"l": "left", "os": "left", "r": "right", "od": "right"}


def _pair_columns(names: list[str]) -> tuple[int, int] | None:
    """Columns of the left / right image names in a pairing header (names containing "left" / "right")."""
    low = [n.lower() for n in names]
    i_left = next((i for i, n in enumerate(low) if "left" in n), None)
    i_right = next((i for i, n in enumerate(low) if "right" in n), None)
    return None if i_left is None or i_right is None else (i_left, i_right)


def _messidor_pairs(root: str, label_path: str, problems: list[LabelProblem]) -> dict[str, tuple[str, str]]:
    """Optional exam pairing file -> {image stem (lower case): (exam id, eye)}.

    The Messidor-2 distribution's ``messidor-2.csv`` (``;``-separated, header ``left;right``, one row per
    examination: the left eye's and the right eye's image file names), or any CSV (``,`` or ``;``) with one column
    whose name contains "left", one containing "right" and optionally an exam/patient column. Without an exam
    column the exam id is ``<left stem>+<right stem>`` (never an image's own id, so paired images count as
    patient-level). A headerless two-column file of image names is read as left;right. An image named by two
    exams is a problem (its later row is skipped).
    """
    for name in _MESSIDOR_PAIRS:
        path = fs.join(root, name)
        if path == label_path or not fs.exists(path):
            continue
        records = csv_rows(read_label_text(path))
        first = next(records, None)
        if first is None:
            continue
        names = first[1]
        cols = _pair_columns(names)
        if cols is None and len(names) == 2 and all(has_ext(n, IMAGE_EXTENSIONS) for n in names):
            cols = (0, 1)
            records = itertools.chain([first], records)  # no header: the first line is an exam too
            names = ["left", "right"]
        if cols is None:
            log.info("messidor2: %s has no left/right image columns; not used for pairing", path)
            continue
        i_left, i_right = cols
        i_exam = next((i for i, n in enumerate(names) if i not in (i_left, i_right) and n), None)
        pairs: dict[str, tuple[str, str]] = {}
        first_line: dict[str, int] = {}
        for line, fields in records:
            if len(fields) <= max(i_left, i_right):
                problems.append(LabelProblem(path, line, f"expected {len(names)} columns, found {len(fields)}"))
                continue
            left, right = stem(fields[i_left]), stem(fields[i_right])
            if i_exam is not None and i_exam < len(fields) and fields[i_exam]:
                exam = fields[i_exam]
            else:
                exam = f"{left}+{right}" if left and right else (left or right)
            for s, eye in ((left, "left"), (right, "right")):
                if not s:
                    continue
                if s.lower() in pairs:
                    problems.append(LabelProblem(path, line, f"image {s} is already in the exam on line "
                                                             f"{first_line[s.lower()]}; this row's {eye} eye skipped"))
                    continue
                pairs[s.lower()] = (exam, eye)
                first_line[s.lower()] = line
        log.info("messidor2: %d images paired into exams from %s", len(pairs), path)
        return pairs
    return {}


def read_messidor2(root: str, labels: str = "") -> CatalogResult:
    """Messidor-2 with the adjudicated grades of Krause et al. 2018.

    Layout::

        root/messidor_data.csv   image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
        root/IMAGES/{image_id}   (e.g. 20051020_43808_0100_PP.png, IM002385.JPG); or root/images/; or root/

    ``labels`` defaults to the first of messidor_data.csv, messidor-2.csv, messidor2.csv under root.
    A simpler ``image,patient,grade`` variant is also read (columns matched by name:
    image_id|image|filename|name, adjudicated_dr_grade|grade|dr_grade|level, patient_id|patient|exam,
    optional eye, optional adjudicated_gradable|gradable).

    Ungradable images (``adjudicated_gradable`` = 0; 4 in Krause's file, whose grade cell is empty)
    are **kept with grade null** (referable null) and are not problems: the image exists and its
    label says "ungradable", which quality studies need; grading code skips null grades.

    Patients: Messidor-2 comes in exam pairs (one image per eye), but image names do not encode the
    pairing. Pairing is taken from a ``patient`` column in the label file, or from a pairing CSV under
    root: the distribution's own ``messidor-2.csv`` (``left;right`` image names, one exam per row; see
    :func:`_messidor_pairs`), or messidor-2_pairs.csv / messidor_pairs.csv with one column containing
    "left", one containing "right" and an optional exam column (e.g. a CSV export of ADCIS'
    ``messidor-2.xls``); paired images get ``patient = exam`` and their eye. Without pairing
    information **each image is its own patient** (eye null): the catalog logs a warning and every CV
    output records ``patient_level: false``, since both eyes of an exam may land in different folds.
    """
    dataset = "messidor2"
    root = require_root(dataset, root)
    if labels:
        path = resolve_labels(root, labels)
    else:
        path = next((fs.join(root, n) for n in _MESSIDOR_LABELS if fs.exists(fs.join(root, n))), "")
        if not path:
            raise FileNotFoundError(
                f"{dataset}: no label file found; expected one of {', '.join(fs.join(root, n) for n in _MESSIDOR_LABELS)}"
            )
    header, records = open_labels(dataset, path)
    if header.find("image_id", "image", "filename", "name") is None and _pair_columns(header.names):
        raise ValueError(f"{dataset}: {path} is the exam pairing file of the Messidor-2 distribution (left;right "
                         f"image names, no grades); put the adjudicated grades (Krause et al. messidor_data.csv) "
                         f"under {root} or pass labels=")
    i_img = header.require("image_id", "image", "filename", "name")
    i_grade = header.require("adjudicated_dr_grade", "grade", "dr_grade", "level")
    i_gradable = header.find("adjudicated_gradable", "gradable")
    i_patient = header.find("patient_id", "patient", "exam", "exam_id")
    i_eye = header.find("eye", "laterality")
    out = Collector(dataset)
    pairs = {} if i_patient is not None else _messidor_pairs(root, path, out.problems)
    index = FolderIndex(first_dir(root, ("IMAGES", "images", "Images", "")))

    def grade(cells: list[str]) -> int | str | None:
        """Ungradable (gradable cell 0) -> None: kept with grade null."""
        if i_gradable is not None and cells[i_gradable]:
            g = parse_grade(cells[i_gradable])
            if g not in (0, 1):
                return f"gradable {cells[i_gradable]!r} is not 0 or 1"
            if g == 0:
                return None
        return parse_grade(cells[i_grade])

    def eye_of(cells: list[str]) -> str | None:
        """The eye cell, lower case, L / OS / R / OD as "left" / "right"; None when absent or empty.
        Anything else comes back as is (``eye_check`` rejects it)."""
        if i_eye is None or not cells[i_eye]:
            return None
        eye = cells[i_eye].lower()
        return _EYES.get(eye, eye)

    def eye_check(cells: list[str]) -> str | None:
        ok = eye_of(cells) in (None, "left", "right")
        return None if ok else f"eye {cells[i_eye]!r} is not left or right"

    label_file = LabelFile(path, len(header), i_img, index, grade, check=eye_check,
                           expected=lambda cell, native: cell if "." in basename(cell) else native + ".png")
    for line, fields in records:
        rec = out.label_row(label_file, line, fields)
        if rec is None:
            continue
        patient, eye = None, eye_of(rec.cells)
        if i_patient is not None and rec.cells[i_patient]:
            patient = rec.cells[i_patient]
        elif rec.native.lower() in pairs:
            patient, eye = pairs[rec.native.lower()]
        out.rows.append(new_row(dataset, rec.native, rec.image, patient=patient, eye=eye, grade=rec.grade))
    out.report_unlabelled(index, [path])
    return out.result()
