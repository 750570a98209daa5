"""Shared pieces of the catalog readers: problem records, CSV rows with line numbers, folder indexes,
grade parsing, the per-row checks of label files (:class:`Collector`) and the Arrow table builder.

Every file access goes through :mod:`dr_ray.io.fs` so a dataset on object storage reads exactly like a
local folder. Each image folder is listed once (one ``list_files`` call), never probed per row.
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import pyarrow as pa

from dr_ray.io import columns as C
from dr_ray.io import fs

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpeg", ".jpg", ".bmp", ".ppm")  # preference order: lossless first
MASK_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm")  # .ppm: STARE


@dataclass(frozen=True)
class LabelProblem:
    """One label defect found while reading a dataset. Problems are reported, never fatal.

    file: the label CSV (or image/mask folder) the problem is about, as a full path or URI.
    line: 1-based line number in ``file`` (the header is line 1); 0 when not tied to a line.
    reason: what is wrong, e.g. ``"grade 'x' is not an integer 0-4"``.
    """

    file: str
    line: int
    reason: str


@dataclass
class CatalogResult:
    """A catalog table (``CATALOG_SCHEMA``) and the label problems met while building it.

    Rows named in ``problems`` with a line number were left out of ``table``; folder-level problems
    (line 0) describe a missing mask or unlabelled images and say in their reason what was done.
    """

    table: pa.Table
    problems: list[LabelProblem] = field(default_factory=list)

    @property
    def patient_level(self) -> bool:
        """True when every row has a known patient (``patient_id`` is not the image's own id): folds drawn from
        this table keep all images of a person together. False for APTOS, IDRiD, FGADR, and Messidor-2 without
        its exam pairing; :func:`dr_ray.io.folds.patient_level` gives the counts, which CV outputs record."""
        from dr_ray.io.folds import images_without_patient

        return images_without_patient(self.table) == 0


# --- paths ---------------------------------------------------------------------------------------


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def dirname(path: str) -> str:
    """Parent of a local path or URI (``s3://b/x/y`` -> ``s3://b/x``)."""
    stripped = path.rstrip("/")
    if fs.is_uri(stripped):
        scheme, rest = stripped.split("://", 1)
        parent = posixpath.dirname(rest)
        return f"{scheme}://{parent}" if parent else stripped
    import os

    return os.path.dirname(os.path.abspath(stripped))


def stem(name: str) -> str:
    """File name without folder and without its last extension."""
    base = basename(name)
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def has_ext(name: str, exts: Sequence[str]) -> bool:
    return basename(name).lower().endswith(tuple(exts))


def strip_image_ext(value: str) -> str:
    """A label cell naming an image, with or without its extension -> the native id (stem)."""
    return stem(value) if has_ext(value, IMAGE_EXTENSIONS) else value


def require_root(dataset: str, root: str) -> str:
    """``root`` as a local absolute path or URI; FileNotFoundError naming it when it is not a folder."""
    if not root:
        raise ValueError(f"{dataset}: root is empty; pass the dataset folder (local path or s3:// URI)")
    full = root if fs.is_uri(root) else fs.resolve(root)[1]
    if not fs.is_dir(full):
        raise FileNotFoundError(f"{dataset}: root {root!r} is not a readable folder")
    return full


def resolve_labels(root: str, labels: str) -> str:
    """``labels`` relative to ``root`` (or absolute / URI) -> full path."""
    return fs.join(root, labels)


def first_dir(root: str, candidates: Iterable[str]) -> str | None:
    """First candidate sub-folder of ``root`` that exists ("" = root itself)."""
    for c in candidates:
        p = fs.join(root, c) if c else root
        if fs.is_dir(p):
            return p
    return None


# --- folder index --------------------------------------------------------------------------------


class FolderIndex:
    """One listing of a folder: file name / stem lookups without further storage calls.

    Lookups are exact first, then case-insensitive (``IM000123.JPG`` vs ``im000123.jpg``). When two
    files share a stem, the one whose extension comes first in ``exts`` wins.
    """

    def __init__(self, folder: str | None, exts: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False):
        self.folder = folder
        self.files: list[str] = []
        if folder is not None:
            self.files = [f for f in fs.list_files(folder, recursive=recursive) if has_ext(f, exts)]
        rank = {e: i for i, e in enumerate(exts)}

        def order(path: str) -> int:
            low = path.lower()
            return min((rank[e] for e in exts if low.endswith(e)), default=len(exts))

        self.by_name: dict[str, str] = {}
        self.by_name_ci: dict[str, str] = {}
        self.by_stem: dict[str, str] = {}
        self.by_stem_ci: dict[str, str] = {}
        for f in sorted(self.files, key=lambda p: (order(p), p)):
            b = basename(f)
            self.by_name.setdefault(b, f)
            self.by_name_ci.setdefault(b.lower(), f)
            self.by_stem.setdefault(stem(b), f)
            self.by_stem_ci.setdefault(stem(b).lower(), f)

    @property
    def exists(self) -> bool:
        return self.folder is not None

    def images(self, problems: list[LabelProblem] | None = None) -> list[str]:
        """One file per stem (the preferred extension), sorted; other files sharing a stem
        (``01.tif`` next to ``01.png``) are reported to ``problems`` and skipped."""
        kept = sorted(set(self.by_stem.values()))
        if problems is not None and len(kept) < len(self.files):
            chosen = set(kept)
            for f in self.files:
                if f not in chosen:
                    problems.append(LabelProblem(
                        self.folder or "", 0,
                        f"duplicate image id {stem(f)}: {basename(f)} skipped, {basename(self.by_stem[stem(f)])} kept"))
        return kept

    def find(self, name_or_stem: str) -> str | None:
        """File named ``name_or_stem`` (a full name with extension, or a stem)."""
        for table, key in (
            (self.by_name, name_or_stem),
            (self.by_name_ci, name_or_stem.lower()),
            (self.by_stem, name_or_stem),
            (self.by_stem_ci, name_or_stem.lower()),
        ):
            hit = table.get(key)
            if hit is not None:
                return hit
        if has_ext(name_or_stem, IMAGE_EXTENSIONS + MASK_EXTENSIONS):
            return self.find_stem(stem(name_or_stem))
        return None

    def find_stem(self, s: str) -> str | None:
        return self.by_stem.get(s) or self.by_stem_ci.get(s.lower())


# --- CSV -----------------------------------------------------------------------------------------


def read_label_text(path: str) -> str:
    """Label file text. FileNotFoundError naming ``path``; UTF-8 (BOM tolerated), else cp1252."""
    try:
        data = fs.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"label file {path} is a folder, not a file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; decoding it as cp1252", path)
        return data.decode("cp1252", errors="replace")


def _delimiter(text: str) -> str:
    first = text.split("\n", 1)[0]
    if first.count(";") > first.count(",") and first.count(";") > 0:
        return ";"
    if "," not in first and "\t" in first:
        return "\t"
    return ","


def csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) per record; blank lines and all-empty records are skipped.

    The line number is the file line where the record starts (header = line 1). CRLF, lone CR and
    quoted fields are handled by the ``csv`` module; the delimiter is ``,`` unless the first line
    is clearly ``;``- or tab-separated.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    start = 1
    for row in reader:
        fields = [f.strip() for f in row]
        line = start
        start = reader.line_num + 1
        if not any(fields):
            continue
        yield line, fields


class Header:
    """Column positions of a label CSV, matched case- and whitespace-insensitively."""

    def __init__(self, fields: list[str], file: str):
        self.file = file
        names = list(fields)
        while names and not names[-1]:  # exports padded with empty columns (IDRiD)
            names.pop()
        self.names = names
        self._pos = {_norm(n): i for i, n in reversed(list(enumerate(names)))}

    def __len__(self) -> int:
        return len(self.names)

    def find(self, *candidates: str) -> int | None:
        for c in candidates:
            i = self._pos.get(_norm(c))
            if i is not None:
                return i
        return None

    def require(self, *candidates: str) -> int:
        i = self.find(*candidates)
        if i is None:
            raise ValueError(
                f"{self.file}: no column named {' or '.join(repr(c) for c in candidates)} in the header "
                f"(found: {', '.join(repr(n) for n in self.names) or 'nothing'})"
            )
        return i


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


def fit_row(fields: list[str], n: int) -> list[str] | str:
    """Row trimmed of empty padding beyond ``n`` columns, or the reason it has the wrong width."""
    row = list(fields)
    while len(row) > n and not row[-1]:
        row.pop()
    if len(row) != n:
        return f"expected {n} columns, found {len(row)}"
    return row


_GRADE_RE = re.compile(r"^[+]?(\d+)(?:\.0*)?$")


def parse_grade(raw: str) -> int | str:
    """ICDR grade 0-4 from a label cell (``"2"``, ``" 2 "``, ``"2.0"``) or the reason it is not one."""
    m = _GRADE_RE.match(raw.strip())
    if m is None or int(m.group(1)) > 4:
        return f"grade {raw!r} is not an integer 0-4"
    return int(m.group(1))


_EYE_RE = re.compile(r"^(?P<patient>.+?)[_\-](?P<eye>left|right)$", re.IGNORECASE)


def patient_and_eye(native: str) -> tuple[str, str | None]:
    """``"10_left"`` -> ``("10", "left")``; a stem without an eye suffix -> ``(stem, None)``."""
    m = _EYE_RE.match(native)
    if m is None:
        return native, None
    return m.group("patient"), m.group("eye").lower()


class Seen:
    """First line of each native id, across one or more label files, for duplicate reports."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[str, int]] = {}

    def check(self, native: str, file: str, line: int) -> str | None:
        prior = self._first.get(native)
        if prior is None:
            self._first[native] = (file, line)
            return None
        pfile, pline = prior
        where = f"line {pline}" if pfile == file else f"line {pline} of {basename(pfile)}"
        return f"duplicate image id {native} (first on {where})"


# --- table ---------------------------------------------------------------------------------------


def new_row(dataset: str, native: str, path: str, *, patient: str | None = None, eye: str | None = None,
            grade: int | None = None, split: str | None = None, **masks: str | None) -> dict:
    """One catalog row. ``patient`` defaults to the image's own id (no pairing known)."""
    row = {name: None for name in C.CATALOG_COLUMNS}
    row.update(
        {
            C.IMAGE_ID: f"{dataset}/{native}",
            C.PATIENT_ID: f"{dataset}/{patient if patient is not None else native}",
            C.EYE: eye,
            C.DATASET: dataset,
            C.PATH: path,
            C.GRADE: grade,
            C.REFERABLE: None if grade is None else grade >= 2,
            C.SPLIT: split,
        }
    )
    for key, value in masks.items():
        if key not in row:
            raise KeyError(f"unknown catalog column {key!r}")
        row[key] = value
    return row


def unique_rows(rows: list[dict], problems: list[LabelProblem], where: str) -> list[dict]:
    """Rows with the first of each image id; later repeats are reported (line 0, file = ``where``)."""
    seen: dict[str, str] = {}
    out = []
    for r in rows:
        prior = seen.get(r[C.IMAGE_ID])
        if prior is not None:
            problems.append(LabelProblem(where, 0, f"duplicate image id {r[C.IMAGE_ID]}: {r[C.PATH]} skipped, {prior} kept"))
            continue
        seen[r[C.IMAGE_ID]] = r[C.PATH]
        out.append(r)
    return out


def build_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by catalog column) -> table with exactly ``CATALOG_SCHEMA``."""
    return pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA)


# --- label files ---------------------------------------------------------------------------------


def open_labels(dataset: str, path: str) -> tuple[Header, Iterator[tuple[int, list[str]]]]:
    """A label CSV's header and its remaining records; ValueError when the file has no record at all."""
    records = csv_rows(read_label_text(path))
    first = next(records, None)
    if first is None:
        raise ValueError(f"{dataset}: label file {path} is empty")
    return Header(first[1], path), records


def grade_at(col: int | None) -> Callable[[list[str]], int | str | None]:
    """``LabelFile.grade`` for an ICDR grade in column ``col``; no column (None) -> every grade null."""
    if col is None:
        return lambda cells: None
    return lambda cells: parse_grade(cells[col])


@dataclass(frozen=True)
class LabelFile:
    """How the records of one label CSV name and grade their images (see :meth:`Collector.label_row`).

    path: the label file, named by its problems. width: columns per record (the header's).
    image: column of the image cell (file name, with or without extension). index: the image folder.
    grade(cells): the grade, None (no grade), or the reason the record has no valid one (see grade_at).
    check(cells): the reason a reader-specific cell (Usage, eye) rejects the record, or None.
    expected(cell, native): the file name a "not found" problem names under ``index.folder``.
    """

    path: str
    width: int
    image: int
    index: FolderIndex
    grade: Callable[[list[str]], int | str | None]
    expected: Callable[[str, str], str]
    check: Callable[[list[str]], str | None] = lambda cells: None


class LabelRow(NamedTuple):
    """A label record that passed every check: its cells, native id (the image cell's stem), grade
    (None = no grade) and the image file it names."""

    cells: list[str]
    native: str
    grade: int | None
    image: str


@dataclass
class Collector:
    """One reader's rows and problems, the native ids its label files have given (duplicate check)
    and the image files its label records matched (for the unlabelled-images report)."""

    dataset: str
    rows: list[dict] = field(default_factory=list)
    problems: list[LabelProblem] = field(default_factory=list)
    seen: Seen = field(default_factory=Seen)
    used: set[str] = field(default_factory=set)

    def problem(self, file: str, line: int, reason: str) -> None:
        self.problems.append(LabelProblem(file, line, reason))

    def label_row(self, label_file: LabelFile, line: int, fields: list[str]) -> LabelRow | None:
        """The checks every label reader runs on a record, in this order: column count, empty image
        id, grade, ``label_file.check``, duplicate id, image file in ``label_file.index``. The first
        that fails becomes a problem (``label_file.path``, ``line``) and None is returned (a record
        rejected before the duplicate check does not claim its id); else the parsed record, whose
        image is then marked used."""
        cells = fit_row(fields, label_file.width)
        if isinstance(cells, str):
            return self._reject(label_file, line, cells)
        cell = cells[label_file.image]
        native = strip_image_ext(cell)
        if not native:
            return self._reject(label_file, line, "empty image id")
        grade = label_file.grade(cells)
        if isinstance(grade, str):
            return self._reject(label_file, line, grade)
        reason = label_file.check(cells)
        if reason:
            return self._reject(label_file, line, reason)
        duplicate = self.seen.check(native, label_file.path, line)
        if duplicate:
            return self._reject(label_file, line, duplicate)
        image = label_file.index.find(cell)
        if image is None:
            expected = fs.join(label_file.index.folder, label_file.expected(cell, native))
            return self._reject(label_file, line, f"image file not found: {expected}")
        self.used.add(image)
        return LabelRow(cells, native, grade, image)

    def _reject(self, label_file: LabelFile, line: int, reason: str) -> None:
        self.problem(label_file.path, line, reason)

    def report_unlabelled(self, index: FolderIndex, label_files: Sequence[str]) -> None:
        """One folder-level problem naming the image files of ``index`` that no label record
        matched (they are left out of the table)."""
        extra = [f for f in index.files if f not in self.used]
        if not extra or index.folder is None:
            return
        names = ", ".join(basename(f) for f in extra[:5]) + (", ..." if len(extra) > 5 else "")
        listed = " or ".join(basename(f) for f in label_files)
        self.problem(index.folder, 0, f"{len(extra)} image file(s) have no row in {listed}; left out: {names}")

    def result(self) -> CatalogResult:
        """The table and problems; a warning when graded images have no patient id (image-level folds)."""
        from dr_ray.io.folds import images_without_patient

        table = build_table(self.rows)
        log.info("%s: %d catalog rows, %d label problems", self.dataset, table.num_rows, len(self.problems))
        n_without = images_without_patient(table)
        if n_without and table.column(C.GRADE).null_count < table.num_rows:
            log.warning("%s: %d of %d images have no patient id: each is its own patient, so folds are image-level "
                        "and both eyes of one person may be split between training and test (patient_level: false "
                        "in every CV output)", self.dataset, n_without, table.num_rows)
        return CatalogResult(table, self.problems)
