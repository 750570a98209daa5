"""Readers for the grading datasets whose label CSV lists the images: EyePACS, APTOS, Messidor-2.

Rows come from the label file; a row that does not parse or names a missing image becomes a
:class:`LabelProblem` and is left out; image files that no row names are reported in one
folder-level problem (line 0) and left out too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dr_ray.io import fs
from dr_ray.io.catalog._base import (
    CatalogResult,
    FolderIndex,
    Header,
    LabelProblem,
    Seen,
    basename,
    build_table,
    csv_rows,
    first_dir,
    fit_row,
    new_row,
    parse_grade,
    patient_and_eye,
    read_label_text,
    require_root,
    resolve_labels,
    stem,
    strip_image_ext,
    unlabelled_problem,
)

log = logging.getLogger(__name__)


@dataclass
class _Collector:
    dataset: str
    rows: list
    problems: list
    seen: Seen

    @classmethod
    def new(cls, dataset: str) -> "_Collector":
        return cls(dataset, [], [], Seen())

    def problem(self, file: str, line: int, reason: str) -> None:
        self.problems.append(LabelProblem(file, line, reason))

    def result(self) -> CatalogResult:
        table = build_table(self.rows)
        log.info("%s: %d catalog rows, %d label problems", self.dataset, table.num_rows, len(self.problems))
        return CatalogResult(table, self.problems)


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

    out = _Collector.new(dataset)
    used: dict[str, set[str]] = {}
    indexes: dict[str, FolderIndex] = {}
    label_files: dict[str, list[str]] = {}
    for path, spec in sources:
        text = read_label_text(path)
        records = csv_rows(text)
        first = next(records, None)
        if first is None:
            raise ValueError(f"{dataset}: label file {path} is empty")
        header = Header(first[1], path)
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
        hits = used.setdefault(folder, set())
        for line, fields in records:
            row = fit_row(fields, len(header))
            if isinstance(row, str):
                out.problem(path, line, row)
                continue
            native = strip_image_ext(row[i_img])
            if not native:
                out.problem(path, line, "empty image id")
                continue
            grade = parse_grade(row[i_lvl])
            if isinstance(grade, str):
                out.problem(path, line, grade)
                continue
            split = default_split
            if i_use is not None:
                usage = row[i_use].lower()
                if not usage:
                    out.problem(path, line, "empty Usage")
                    continue
                split = f"test_{usage}"
            dup = out.seen.check(native, path, line)
            if dup:
                out.problem(path, line, dup)
                continue
            image = index.find(row[i_img])
            if image is None:
                out.problem(path, line, f"image file not found: {fs.join(folder, native + '.jpeg')}")
                continue
            hits.add(image)
            patient, eye = patient_and_eye(native)
            out.rows.append(new_row(dataset, native, image, patient=patient, eye=eye, grade=grade, split=split))
    for folder, index in indexes.items():
        p = unlabelled_problem(index, used[folder], label_files[folder])
        if p:
            out.problems.append(p)
    return out.result()


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
    text = read_label_text(path)
    name = stem(path)
    split = "test" if name.lower().startswith("test") else "train"
    folder = first_dir(root, (f"{name}_images", "train_images", "images", ""))
    records = csv_rows(text)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{dataset}: label file {path} is empty")
    header = Header(first[1], path)
    i_id = header.require("id_code")
    i_dx = header.find("diagnosis")
    if i_dx is None:
        log.warning("%s has no 'diagnosis' column: reading it as unlabelled (grade null)", path)
    index = FolderIndex(folder)
    out = _Collector.new(dataset)
    hits: set[str] = set()
    for line, fields in records:
        row = fit_row(fields, len(header))
        if isinstance(row, str):
            out.problem(path, line, row)
            continue
        native = strip_image_ext(row[i_id])
        if not native:
            out.problem(path, line, "empty image id")
            continue
        grade = None
        if i_dx is not None:
            grade = parse_grade(row[i_dx])
            if isinstance(grade, str):
                out.problem(path, line, grade)
                continue
        dup = out.seen.check(native, path, line)
        if dup:
            out.problem(path, line, dup)
            continue
        image = index.find(row[i_id])
        if image is None:
            out.problem(path, line, f"image file not found: {fs.join(folder, native + '.png')}")
            continue
        hits.add(image)
        out.rows.append(new_row(dataset, native, image, grade=grade, split=split))
    p = unlabelled_problem(index, hits, [path])
    if p:
        out.problems.append(p)
    return out.result()


# --- Messidor-2 ----------------------------------------------------------------------------------

_MESSIDOR_LABELS = ("messidor_data.csv", "messidor-2.csv", "messidor2.csv")
_MESSIDOR_PAIRS = ("messidor-2_pairs.csv", "messidor_pairs.csv", "messidor-2.csv", "messidor2.csv")


def _messidor_pairs(root: str, label_path: str, problems: list[LabelProblem]) -> dict[str, tuple[str, str]]:
    """Optional exam pairing file -> {image stem (lower case): (exam id, eye)}.

    A CSV (``,`` or ``;``) with one column whose name contains "left" and one containing "right"
    (image file names) and optionally an exam/patient column; each row is one examination.
    """
    for name in _MESSIDOR_PAIRS:
        path = fs.join(root, name)
        if path == label_path or not fs.exists(path):
            continue
        records = csv_rows(read_label_text(path))
        first = next(records, None)
        if first is None:
            continue
        names = [n.lower() for n in first[1]]
        i_left = next((i for i, n in enumerate(names) if "left" in n), None)
        i_right = next((i for i, n in enumerate(names) if "right" in n), None)
        if i_left is None or i_right is None:
            continue
        i_exam = next((i for i, n in enumerate(names) if i not in (i_left, i_right) and n), None)
        pairs: dict[str, tuple[str, str]] = {}
        for line, fields in records:
            if len(fields) <= max(i_left, i_right):
                problems.append(LabelProblem(path, line, f"expected {len(names)} columns, found {len(fields)}"))
                continue
            left, right = stem(fields[i_left]), stem(fields[i_right])
            exam = fields[i_exam] if i_exam is not None and i_exam < len(fields) and fields[i_exam] else left
            for s, eye in ((left, "left"), (right, "right")):
                if s:
                    pairs[s.lower()] = (exam, eye)
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
    pairing, so without pairing information **each image is its own patient** (eye null) and the two
    eyes of an exam may land in different folds. Pairing is taken from a ``patient`` column in the
    label file, or from an optional pairing CSV under root (messidor-2_pairs.csv, messidor_pairs.csv,
    or messidor-2.csv when it is not the label file) with one column containing "left" and one
    containing "right" (image file names) and an optional exam column, e.g. a CSV export of ADCIS'
    ``messidor-2.xls``; paired images get ``patient = exam`` and their eye.
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
    text = read_label_text(path)
    records = csv_rows(text)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{dataset}: label file {path} is empty")
    header = Header(first[1], path)
    i_img = header.require("image_id", "image", "filename", "name")
    i_grade = header.require("adjudicated_dr_grade", "grade", "dr_grade", "level")
    i_gradable = header.find("adjudicated_gradable", "gradable")
    i_patient = header.find("patient_id", "patient", "exam", "exam_id")
    i_eye = header.find("eye", "laterality")
    out = _Collector.new(dataset)
    pairs = {} if i_patient is not None else _messidor_pairs(root, path, out.problems)
    folder = first_dir(root, ("IMAGES", "images", "Images", ""))
    index = FolderIndex(folder)
    hits: set[str] = set()
    for line, fields in records:
        row = fit_row(fields, len(header))
        if isinstance(row, str):
            out.problem(path, line, row)
            continue
        cell = row[i_img]
        native = strip_image_ext(cell)
        if not native:
            out.problem(path, line, "empty image id")
            continue
        gradable = True
        if i_gradable is not None and row[i_gradable]:
            g = parse_grade(row[i_gradable])
            if g not in (0, 1):
                out.problem(path, line, f"gradable {row[i_gradable]!r} is not 0 or 1")
                continue
            gradable = g == 1
        grade = None
        if gradable:
            grade = parse_grade(row[i_grade])
            if isinstance(grade, str):
                out.problem(path, line, grade)
                continue
        eye = None
        if i_eye is not None and row[i_eye]:
            eye = row[i_eye].lower()
            eye = {"l": "left", "os": "left", "r": "right", "od": "right"}.get(eye, eye)
            if eye not in ("left", "right"):
                out.problem(path, line, f"eye {row[i_eye]!r} is not left or right")
                continue
        dup = out.seen.check(native, path, line)
        if dup:
            out.problem(path, line, dup)
            continue
        image = index.find(cell)
        if image is None:
            expected = cell if "." in basename(cell) else native + ".png"
            out.problem(path, line, f"image file not found: {fs.join(folder, expected)}")
            continue
        hits.add(image)
        patient = None
        if i_patient is not None and row[i_patient]:
            patient = row[i_patient]
        elif native.lower() in pairs:
            patient, eye = pairs[native.lower()]
        out.rows.append(new_row(dataset, native, image, patient=patient, eye=eye, grade=grade))
    p = unlabelled_problem(index, hits, [path])
    if p:
        out.problems.append(p)
    return out.result()
