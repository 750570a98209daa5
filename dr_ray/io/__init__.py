"""Column names, file access, dataset catalogs and fold assignment.

The catalog API (readers, ``CatalogResult``, ``LabelProblem``, parquet helpers, ``assign_folds``) is
:mod:`dr_ray.io.catalog`'s, re-exported here under the names of its ``__all__``.

The re-export is lazy (PEP 562): ``dr_ray.io.columns`` is imported by every Ray task and actor process, and the
catalog pulls in scikit-learn (fold assignment), ~2 s of CPU per fresh worker process on a small node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy re-export below provides, for type checkers and IDEs (never run)
    from dr_ray.io import catalog
    from dr_ray.io.catalog import (PROBLEMS_SCHEMA, READERS, CatalogResult, LabelProblem, assign_folds,
                                   problems_table, read_aptos, read_catalog, read_catalog_parquet, read_chase_db1,
                                   read_drive, read_eyepacs, read_fgadr, read_hrf_av, read_idrid, read_les_av,
                                   read_messidor2, read_stare, validate_catalog, write_catalog)


def __getattr__(name: str) -> Any:
    catalog = importlib.import_module("dr_ray.io.catalog")
    if name == "catalog":
        return catalog
    if name in catalog.__all__:
        return getattr(catalog, name)
    raise AttributeError(f"module 'dr_ray.io' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("dr_ray.io.catalog").__all__])
