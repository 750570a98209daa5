"""Catalog Parquet files and problem reports: write, read back, validate."""

from __future__ import annotations

import posixpath
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog._result import CatalogResult, LabelProblem

PROBLEMS_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line", pa.int32(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def validate_catalog(table: pa.Table, source: str = "catalog") -> pa.Table:
    """Check ``table`` against ``CATALOG_SCHEMA`` and return it with exactly that schema.

    Column order may differ and compatible types are cast (e.g. int64 grade -> int8); missing or
    extra columns, uncastable types, nulls in required columns, duplicate image ids, grades outside
    0-4, and referable disagreeing with grade raise ``ValueError`` naming ``source``.
    """
    if not isinstance(table, pa.Table):
        raise ValueError(f"{source}: expected a pyarrow.Table, got {type(table).__name__}")
    names = set(table.column_names)
    missing = [n for n in C.CATALOG_COLUMNS if n not in names]
    extra = [n for n in table.column_names if n not in C.CATALOG_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise ValueError(f"{source}: not a catalog table: {'; '.join(parts)}")
    table = table.select(list(C.CATALOG_COLUMNS))
    arrays = []
    for f in C.CATALOG_SCHEMA:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"{source}: column {f.name!r} has type {col.type}, expected {f.type}: {e}") from None
        if not f.nullable and col.null_count:
            raise ValueError(f"{source}: column {f.name!r} has {col.null_count} null value(s); it must be filled")
        arrays.append(col)
    table = pa.Table.from_arrays(arrays, schema=C.CATALOG_SCHEMA)
    if table.num_rows:
        ids = table.column(C.IMAGE_ID)
        n_unique = pc.count_distinct(ids).as_py()
        if n_unique != table.num_rows:
            counts = pc.value_counts(ids)
            dups = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
            raise ValueError(f"{source}: {table.num_rows - n_unique} duplicate image id(s), e.g. {dups}")
        grade = table.column(C.GRADE)
        bad = pc.sum(pc.or_(pc.less(grade, 0), pc.greater(grade, 4))).as_py() or 0
        if bad:
            raise ValueError(f"{source}: {bad} grade value(s) outside 0-4")
        expected = pc.greater_equal(grade, 2)
        same = pc.equal(expected, table.column(C.REFERABLE))
        agree = pc.and_(pc.equal(pc.is_null(expected), pc.is_null(table.column(C.REFERABLE))),
                        pc.fill_null(same, True))
        n_bad = table.num_rows - (pc.sum(agree).as_py() or 0)
        if n_bad:
            raise ValueError(f"{source}: {n_bad} row(s) where referable is not (grade >= 2)")
    return table


def write_catalog(result_or_table: CatalogResult | pa.Table, path: str) -> None:
    """Write a catalog (validated against ``CATALOG_SCHEMA``) as one Parquet file at ``path``.

    ``path`` is a local path or URI; parent folders are created. Problems of a
    :class:`CatalogResult` are not written here: use ``problems_table`` for the report.
    """
    table = result_or_table.table if isinstance(result_or_table, CatalogResult) else result_or_table
    table = validate_catalog(table, source=f"catalog for {path}")
    filesystem, inner = fs.resolve(path)
    parent = posixpath.dirname(inner)
    if parent:
        filesystem.create_dir(parent, recursive=True)
    pq.write_table(table, inner, filesystem=filesystem)


def read_catalog_parquet(path: str) -> pa.Table:
    """Read a catalog Parquet file (or folder of Parquet files) and validate it.

    FileNotFoundError / ValueError name ``path``.
    """
    filesystem, inner = fs.resolve(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"catalog not found: {path}")
    try:
        table = pq.read_table(inner, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet catalog: {e}") from None
    return validate_catalog(table.replace_schema_metadata(None), source=path)


def problems_table(problems: Iterable[LabelProblem]) -> pa.Table:
    """Problems -> table (file string, line int32, reason string), e.g. to write next to the catalog."""
    items = list(problems)
    return pa.table(
        {
            "file": pa.array([p.file for p in items], pa.string()),
            "line": pa.array([p.line for p in items], pa.int32()),
            "reason": pa.array([p.reason for p in items], pa.string()),
        },
        schema=PROBLEMS_SCHEMA,
    )
