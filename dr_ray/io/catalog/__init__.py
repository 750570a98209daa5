"""Catalog readers: each public dataset's native layout -> one table with ``CATALOG_SCHEMA``.

``read_catalog(dataset, root, labels)`` dispatches by name; each ``read_<dataset>`` docstring gives
the layout it accepts. Label defects never stop a read: they come back as ``LabelProblem``s next to
the table (``CatalogResult``). Folds are filled afterwards by :func:`dr_ray.io.folds.assign_folds`.

Conventions for every reader: ``image_id = "<dataset>/<native id>"`` (unique), ``patient_id =
"<dataset>/<patient>"`` (the image's own id when the dataset gives no patient), ``eye`` "left" /
"right" or null, ``path`` the full local path or URI of the image, ``fold`` null.
"""

from __future__ import annotations

import re
from typing import Callable

from dr_ray.io.catalog._result import CatalogResult, LabelProblem
from dr_ray.io.catalog.grading import read_aptos, read_eyepacs, read_messidor2
from dr_ray.io.catalog.lesions import read_fgadr, read_idrid
from dr_ray.io.catalog.parquet import (
    PROBLEMS_SCHEMA,
    problems_table,
    read_catalog_parquet,
    validate_catalog,
    write_catalog,
)
from dr_ray.io.catalog.vessels import read_chase_db1, read_drive, read_hrf_av, read_les_av, read_stare
from dr_ray.io.folds import assign_folds  # re-exported: catalog users fill folds right after reading

READERS: dict[str, Callable[..., CatalogResult]] = {
    "eyepacs": read_eyepacs,
    "aptos": read_aptos,
    "messidor2": read_messidor2,
    "idrid": read_idrid,
    "fgadr": read_fgadr,
    "drive": read_drive,
    "hrf_av": read_hrf_av,
    "les_av": read_les_av,
    "chase_db1": read_chase_db1,
    "stare": read_stare,
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(n): n for n in READERS}


def read_catalog(dataset: str, root: str, labels: str = "") -> CatalogResult:
    """Read one dataset's native layout into a catalog. ``dataset`` is one of ``READERS``
    (``"messidor-2"``, ``"HRF-AV"`` etc. are accepted); an unknown name raises ValueError listing them.
    ``labels`` overrides the label file (relative to ``root`` or absolute); "" = the usual name."""
    name = _BY_KEY.get(_key(dataset)) if isinstance(dataset, str) else None
    if name is None:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(READERS)}")
    return READERS[name](root, labels)


__all__ = [
    "CatalogResult",
    "LabelProblem",
    "PROBLEMS_SCHEMA",
    "READERS",
    "assign_folds",
    "problems_table",
    "read_aptos",
    "read_catalog",
    "read_catalog_parquet",
    "read_chase_db1",
    "read_drive",
    "read_eyepacs",
    "read_fgadr",
    "read_hrf_av",
    "read_idrid",
    "read_les_av",
    "read_messidor2",
    "read_stare",
    "validate_catalog",
    "write_catalog",
]
