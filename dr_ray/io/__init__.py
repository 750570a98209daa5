"""Column names, file access, dataset catalogs and fold assignment."""

from dr_ray.io.catalog import (
    CatalogResult,
    LabelProblem,
    problems_table,
    read_aptos,
    read_catalog,
    read_catalog_parquet,
    read_drive,
    read_eyepacs,
    read_fgadr,
    read_hrf_av,
    read_idrid,
    read_les_av,
    read_messidor2,
    validate_catalog,
    write_catalog,
)
from dr_ray.io.folds import assign_folds

__all__ = [
    "CatalogResult",
    "LabelProblem",
    "assign_folds",
    "problems_table",
    "read_aptos",
    "read_catalog",
    "read_catalog_parquet",
    "read_drive",
    "read_eyepacs",
    "read_fgadr",
    "read_hrf_av",
    "read_idrid",
    "read_les_av",
    "read_messidor2",
    "validate_catalog",
    "write_catalog",
]
