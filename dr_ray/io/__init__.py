"""Column names, file access, dataset catalogs and fold assignment.

The catalog API (readers, ``CatalogResult``, ``LabelProblem``, parquet helpers, ``assign_folds``) is
:mod:`dr_ray.io.catalog`'s, re-exported here under the names of its ``__all__``.

The re-export is lazy (PEP 562): ``dr_ray.io.columns`` is imported by every Ray task and actor process, and the
catalog pulls in scikit-learn (fold assignment), ~2 s of CPU per fresh worker process on a small node.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    catalog = importlib.import_module("dr_ray.io.catalog")
    if name == "catalog":
        return catalog
    if name in catalog.__all__:
        return getattr(catalog, name)
    raise AttributeError(f"module 'dr_ray.io' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("dr_ray.io.catalog").__all__])
