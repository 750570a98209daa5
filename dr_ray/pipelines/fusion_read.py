"""Reading a built joined index: its small columns in the driver (:func:`read_index`), a few fully fetched rows
(:func:`read_rows`), and the Ray Datasets training and evaluation stream (:func:`rows_dataset`,
:func:`fold_datasets`): one block per preprocess shard of index rows, each read task fetching its rows' big columns
straight from the stage shards (:func:`fetch_columns`) and CPU tasks decoding them (:func:`decode_batch`)."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.fusion_data import (
    BULKY,
    FORMAT_VERSION,
    MAX_BLOCK_ROWS,
    STAGES,
    SUCCESS_FILE,
    FusionData,
    dedupe_first,
    source_stage,
)


def _read_columns(path: str, columns: Sequence[str]) -> pa.Table:
    filesystem, inner = fs.resolve(path)
    return pads.dataset(inner, filesystem=filesystem, format="parquet").to_table(columns=list(columns))


def read_index(data: FusionData | str, columns: Sequence[str] = ()) -> pa.Table:
    """Small columns of the joined ok rows (ids, grades, folds, patients + ``columns``) read with pyarrow: label
    counts, folds and biomarker statistics, never the image bytes. ``data``: a FusionData or its path."""
    base = [C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.FOLD]
    path = data.path if isinstance(data, FusionData) else data
    return _read_columns(_ok_dir(path), [*base, *[c for c in columns if c not in base]])


def _ok_dir(path: str) -> str:
    marker = fs.join(path, SUCCESS_FILE)
    if not fs.exists(marker):
        raise FileNotFoundError(f"{path}: no {SUCCESS_FILE}: this joined index is gone or incomplete (rerun "
                                f"`dr-ray train` to rebuild it)")
    version = json.loads(fs.read_text(marker)).get("format_version", 1)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: joined data of format {version}, this dr-ray reads format {FORMAT_VERSION} "
                         f"(rerun `dr-ray train` to rebuild it)")
    return fs.join(path, f"{C.STATUS}={C.STATUS_OK}")


def fetch_columns(index: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Index rows (with their ``C.source_file_column`` references) -> a table of ``columns`` for the same rows in
    the same order; a column the index lacks is read from the stage shard named in the row's reference, each shard
    once per call with only the needed rows' ids as filter. Raises FileNotFoundError / ValueError naming the
    shard when it is gone or no longer holds a referenced image (the stage folder changed after the join)."""
    refs = {c[:-len("_file")]: c for c in index.column_names if c.endswith("_file") and c.startswith(
        ("preprocess", *STAGES))}
    stages = [s for s in STAGES if s in refs]
    out: dict[str, pa.ChunkedArray | pa.Array] = {}
    need: dict[str, list[str]] = {}
    for c in columns:
        if c in index.column_names:
            out[c] = index.column(c)
        else:
            need.setdefault(source_stage(c, stages), []).append(c)
    ids = index.column(C.IMAGE_ID).combine_chunks()
    for stage, cols in need.items():
        ref = index.column(refs[stage]).to_pylist()
        if any(r is None for r in ref):
            raise ValueError(f"{stage}: {sum(r is None for r in ref)} rows without a {stage} shard reference "
                             f"(quarantined rows carry no data)")
        parts = []
        for f in dict.fromkeys(ref):
            want = pc.filter(ids, pa.array([r == f for r in ref]))
            if not fs.exists(f):
                raise FileNotFoundError(f"{f}: {stage} shard referenced by the joined index is gone (the stage "
                                        f"folder changed after the join: rerun `dr-ray train` to rebuild it)")
            filesystem, inner = fs.resolve(f)
            t = pq.read_table(inner, columns=[C.IMAGE_ID, *cols], filesystem=filesystem,
                              filters=pc.field(C.IMAGE_ID).isin(want))
            t = dedupe_first(t, f)
            if t.num_rows != len(want):
                missing = set(want.to_pylist()) - set(t.column(C.IMAGE_ID).to_pylist())
                raise ValueError(f"{f}: {stage} shard no longer holds {sorted(missing)[:5]} (rerun `dr-ray train`)")
            parts.append(t)
        got = pa.concat_tables(parts)
        order = pc.index_in(ids, value_set=got.column(C.IMAGE_ID).combine_chunks())
        for c in cols:
            out[c] = got.column(c).take(order)
    return pa.table({c: out[c] for c in columns})


def read_rows(path: str, columns: Sequence[str], *, ids: Sequence[str] | None = None) -> pa.Table:
    """Joined ok rows of the index at ``path`` (all of them, or those of ``ids`` in index order) with any
    ``columns`` (big ones fetched from the stage shards): for a handful of rows in the driver (Grad-CAM,
    thumbnails, tests). Training and evaluation stream through :func:`rows_dataset` instead."""
    filesystem, inner = fs.resolve(_ok_dir(path))
    flt = None if ids is None else pc.field(C.IMAGE_ID).isin(list(ids))
    index = pads.dataset(inner, filesystem=filesystem, format="parquet").to_table(filter=flt)
    return fetch_columns(index, columns)


def _index_blocks(index: pa.Table) -> list[pa.Table]:
    """One block per preprocess shard of ``index`` (split at MAX_BLOCK_ROWS): a read task then reads each big
    column chunk once."""
    ref = C.source_file_column("preprocess")
    index = index.sort_by([(ref, "ascending"), (C.IMAGE_ID, "ascending")])
    files = index.column(ref).to_pylist()
    blocks, start = [], 0
    for i in range(1, len(files) + 1):
        if i == len(files) or files[i] != files[start] or i - start >= MAX_BLOCK_ROWS:
            blocks.append(index.slice(start, i - start))
            start = i
    return blocks


def rows_dataset(path: str, columns: Sequence[str], *, fold: int | None = None, exclude_fold: bool = False,
                 shuffle: bool = False, fetch_cpus: float = 1.0, image_ids: Sequence[str] | None = None):
    """A Ray Dataset of the joined ok rows of the index at ``path`` (optionally only fold ``fold``, or with
    ``exclude_fold`` every other fold) with ``columns``. The driver reads the index (small columns), cuts it into
    one block per preprocess shard, and each read task fetches its rows' big columns from the stage shards
    (:func:`fetch_columns`). ``shuffle``: the blocks come in a new random order every execution (every epoch);
    this is a barrier over the small index blocks only, never over fetched image bytes. ``image_ids``: keep only
    these rows (after the fold filter): the nested-CV splits of :func:`fold_datasets`."""
    import ray

    filesystem, inner = fs.resolve(_ok_dir(path))
    refs = [c for c in pads.dataset(inner, filesystem=filesystem, format="parquet").schema.names
            if c.endswith("_file")]
    keep = list(dict.fromkeys([C.IMAGE_ID, C.FOLD, *refs, *[c for c in columns if c not in BULKY]]))
    index = pads.dataset(inner, filesystem=filesystem, format="parquet").to_table()
    index = index.select([c for c in keep if c in index.column_names])
    if fold is not None:
        m = pc.equal(index.column(C.FOLD), fold)
        index = index.filter(pc.invert(m) if exclude_fold else m)
    if image_ids is not None:
        index = index.filter(pc.is_in(index.column(C.IMAGE_ID), value_set=pa.array(list(image_ids), pa.string())))
    blocks = _index_blocks(index)
    if not blocks:
        ds = ray.data.from_arrow(index.select([c for c in columns if c in index.column_names]))
        return ds
    ds = ray.data.from_arrow(blocks)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(fetch_columns, batch_format="pyarrow", batch_size=None, num_cpus=fetch_cpus,
                          fn_kwargs={"columns": list(columns)})


def fold_datasets(data: FusionData, spec, *, train_ids: Sequence[str], val_ids: Sequence[str],
                  decode_batch_size: int, decode_cpus: float, augment: bool):
    """(train, val) Ray Datasets of the rows ``train_ids`` and ``val_ids``, fetched from the stage shards
    (:func:`rows_dataset`), decoded and (train only) augmented by CPU tasks
    (:func:`dr_ray.training.fusion_data.decode_rows`). Lazy: they run when iterated.

    Nested CV: the caller draws both id sets from the outer training folds only (``train`` = inner training rows,
    ``val`` = the inner validation split that the LR schedule, early stopping and the epoch choice read; see
    :func:`dr_ray.io.folds.inner_split`), so the outer test fold is not in either dataset."""
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise ValueError(f"fold_datasets: {len(overlap)} image(s) in both train_ids and val_ids, e.g. "
                         f"{sorted(overlap)[:3]}")
    if not len(train_ids) or not len(val_ids):
        raise ValueError(f"fold_datasets: empty split ({len(train_ids)} training, {len(val_ids)} validation ids)")
    # Training blocks come in a new random order every epoch (each epoch re-executes the dataset) and rows are
    # shuffled in each worker's local buffer (train.shuffle_buffer).
    train = rows_dataset(data.path, spec.columns(), shuffle=True, fetch_cpus=decode_cpus, image_ids=train_ids)
    val = rows_dataset(data.path, spec.columns(), fetch_cpus=decode_cpus, image_ids=val_ids)

    def stage(d, aug: bool):
        return d.map_batches(decode_batch, batch_format="numpy", batch_size=decode_batch_size, num_cpus=decode_cpus,
                             fn_kwargs={"spec": spec, "augment": aug})

    return stage(train, augment), stage(val, False)


def decode_batch(batch: dict, *, spec, augment: bool) -> dict:
    """Ray Data batch function: joined rows (numpy batch) -> :func:`decode_rows` arrays. Augmentation draws from
    a fresh generator per call (Ray Data re-executes the dataset every epoch, so each epoch sees new transforms)."""
    from dr_ray.training.fusion_data import decode_rows

    return decode_rows(batch, spec, augment=augment, rng=np.random.default_rng() if augment else None)


__all__ = ["decode_batch", "fetch_columns", "fold_datasets", "read_index", "read_rows", "rows_dataset"]
