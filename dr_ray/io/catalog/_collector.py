"""The per-row checks of label files: :class:`LabelFile` says how one label CSV names and grades its images,
:class:`Collector` runs the checks every label reader applies to a record (width, empty id, grade, reader
check, duplicate id via :class:`Seen`, image file found), gathers rows and problems, reports unlabelled
images and builds the :class:`CatalogResult`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog._csv import fit_row, parse_grade
from dr_ray.io.catalog._paths import FolderIndex, basename, strip_image_ext
from dr_ray.io.catalog._result import CatalogResult, LabelProblem
from dr_ray.io.catalog._rows import build_table

log = logging.getLogger(__name__)


# --- duplicate ids -------------------------------------------------------------------------------


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


# --- label files ---------------------------------------------------------------------------------


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
