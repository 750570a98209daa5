"""Catalog rows and the Arrow table builder: one row dict per image (:func:`new_row`), the first row of
each image id (:func:`unique_rows`) and rows -> a table with exactly ``CATALOG_SCHEMA`` (:func:`build_table`).
"""

from __future__ import annotations

import pyarrow as pa

from dr_ray.io import columns as C
from dr_ray.io.catalog._result import LabelProblem


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
