"""Column names, file access, dataset catalogs and fold assignment.

The catalog API (readers, ``CatalogResult``, ``LabelProblem``, parquet helpers, ``assign_folds``) is
:mod:`dr_ray.io.catalog`'s, re-exported here under the names of its ``__all__``.
"""

from dr_ray.io import catalog
from dr_ray.io.catalog import *  # noqa: F403  (the names in catalog.__all__)

__all__ = list(catalog.__all__)
