"""Label CSV reading of the catalog readers: file text (UTF-8 with BOM, else cp1252), records with their
line numbers and a detected delimiter, header column lookup, row width checks and the parsing of grade
and ``<patient>_<eye>`` cells. Reads go through :mod:`dr_ray.io.fs` (local folders and object storage alike).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Iterator

from dr_ray.io import fs

log = logging.getLogger(__name__)


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


def open_labels(dataset: str, path: str) -> tuple[Header, Iterator[tuple[int, list[str]]]]:
    """A label CSV's header and its remaining records; ValueError when the file has no record at all."""
    records = csv_rows(read_label_text(path))
    first = next(records, None)
    if first is None:
        raise ValueError(f"{dataset}: label file {path} is empty")
    return Header(first[1], path), records
