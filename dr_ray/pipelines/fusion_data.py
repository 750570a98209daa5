"""The classifiers' training data: the preprocess stage's images joined by ``image_id`` with the pseudo-label
stage's lesion maps and the vessel stage's graphs and biomarkers, as a small **index** that references the stage
shards; the big columns (image PNG, lesion-map PNG, graph arrays) are never copied or shuffled.

The join runs in the driver with pyarrow over the stages' small columns only (ids, status, grades, folds,
biomarkers, lesion areas: ~0.3 KB per image, ~30 MB at EyePACS's 88,702 images) and writes
``<output.dir>/fusion_data/<hash>/`` with ``status=ok/`` (``index_schema``: catalog columns, the small stage
columns and, per stage, the shard file holding the row: ``C.source_file_column(stage)``), ``status=quarantined/``
(a preprocessed image that a needed stage quarantined or never processed, or that has no grade: ``error`` says
which and why), ``quarantine.csv``, ``summary.json`` and ``_SUCCESS.json`` (written last). Training reads
(:func:`fold_datasets`, :func:`rows_dataset`) make one Ray Data block per preprocess shard of the index rows and
let each read task fetch the big columns of its rows straight from the stage shards (:func:`fetch_columns`), so
the bytes that move are the ones the model consumes, once per epoch, and nothing is held until the end.

The hash covers the stages joined, their settings (config hashes, which include the model hashes), the ids,
grades and folds of their rows and the shard files referenced, so a changed input builds a new (small) folder and
an unchanged one is reused; a folder without ``_SUCCESS.json`` (a killed build) is rebuilt. After a build, the
earlier builds of the same stage folders (superseded: their inputs have changed since) and full-copy builds of
FORMAT_VERSION 1 are deleted, so old copies do not pile up. Rows in (preprocessed ``status=ok`` images) = joined +
quarantined, always.

Duplicate rows of one image inside a stage folder (a stage run twice into one folder) are resolved here by keeping
the row of the first shard in path order, and logged; the stages' own exactly-once layer is what prevents them.

This module holds what the joined data is (stages, columns, schemas, :class:`FusionData`); building the index is
:mod:`dr_ray.pipelines.fusion_join`, reading it :mod:`dr_ray.pipelines.fusion_read`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.runtime import stage_dir

log = logging.getLogger(__name__)

STAGE = "fusion_data"
FORMAT_VERSION = 2  # 1: full copies of every joined column (removed when a version-2 build of the same inputs is made)
SUCCESS_FILE = "_SUCCESS.json"
STAGES = ("pseudo_labels", "vessels")  # stages that can be joined onto the preprocessed images
MAX_BLOCK_ROWS = 1024  # index rows per read task at most (a task reads the stage shards of its rows once)

# Columns each joined stage contributes (besides image_id): small ones live in the index, bulky ones are fetched.
LESION_COLUMNS = (C.LESION_MAPS_PNG, C.LESION_MAP_KINDS, C.LESION_MAP_SIZE,
                  *[C.lesion_area_column(k) for k in C.LESION_KINDS],
                  *[C.lesion_count_column(k) for k in C.LESION_KINDS])
VESSEL_COLUMNS = (C.N_NODES, C.N_EDGES, C.GRAPH_X, C.GRAPH_POS, C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR,
                  C.DISC_FOUND, *C.BIOMARKERS, C.BIOMARKER_REASONS)
STAGE_COLUMNS = {"pseudo_labels": LESION_COLUMNS, "vessels": VESSEL_COLUMNS}
STAGE_SCHEMAS = {"preprocess": C.PREPROCESS_SCHEMA, "pseudo_labels": C.PSEUDO_LABELS_SCHEMA,
                  "vessels": C.VESSELS_SCHEMA}
PRESENCE = {"pseudo_labels": C.LESION_MAP_KINDS, "vessels": C.N_NODES}  # non-null in every joined ok row
BULKY = {C.IMAGE_PNG, C.CANNY_PNG, C.TOPHAT_PNG, C.LESION_MAPS_PNG, C.VESSEL_PROB_PNG, C.GRAPH_X, C.GRAPH_POS,
          C.GRAPH_EDGE_INDEX, C.GRAPH_EDGE_ATTR}
MODALITY_STAGES = {"lesion": "pseudo_labels", "graph": "vessels", "stats": "vessels"}


def stages_for(modalities: Sequence[str]) -> tuple[str, ...]:
    """The stages whose outputs ``modalities`` need, in ``STAGES`` order."""
    need = {MODALITY_STAGES[m] for m in modalities if m in MODALITY_STAGES}
    return tuple(s for s in STAGES if s in need)


def small_columns(stage: str) -> list[str]:
    return [c for c in STAGE_COLUMNS[stage] if c not in BULKY]


def index_schema(stages: Sequence[str]) -> pa.Schema:
    """Schema of the index rows for ``stages``: catalog columns, status/error/config_hash (= the data hash), the
    image side, each stage's small columns, then one shard-file reference per stage (preprocess first)."""
    pre = C.PREPROCESS_SCHEMA
    fields = [*C.CATALOG_SCHEMA, pa.field(C.STATUS, pa.string(), nullable=False), pa.field(C.ERROR, pa.string()),
              pa.field(C.CONFIG_HASH, pa.string()), pre.field(C.SIZE)]
    for s in stages:
        fields += [STAGE_SCHEMAS[s].field(c) for c in small_columns(s)]
    fields += [pa.field(C.source_file_column(s), pa.string()) for s in ("preprocess", *stages)]
    return pa.schema(fields)


def image_input_column(image_input: str) -> str:
    from dr_ray.training.fusion_data import IMAGE_INPUT_COLUMN

    if image_input not in IMAGE_INPUT_COLUMN:
        raise ValueError(f"train.image_input={image_input!r}: known inputs {sorted(IMAGE_INPUT_COLUMN)}")
    return IMAGE_INPUT_COLUMN[image_input]


def fusion_schema(stages: Sequence[str], image_input: str = "clahe") -> pa.Schema:
    """Schema of fully fetched joined rows for ``stages`` (what :func:`read_rows` returns for every column):
    catalog columns, status/error/config_hash, the image, each stage's columns, then the image branch's input map
    when ``image_input`` is not the preprocessed image (``canny_png`` or ``vessel_prob_png``)."""
    pre = C.PREPROCESS_SCHEMA
    fields = [*C.CATALOG_SCHEMA, pa.field(C.STATUS, pa.string(), nullable=False), pa.field(C.ERROR, pa.string()),
              pa.field(C.CONFIG_HASH, pa.string()), pre.field(C.IMAGE_PNG), pre.field(C.SIZE)]
    for s in stages:
        fields += [STAGE_SCHEMAS[s].field(c) for c in STAGE_COLUMNS[s]]
    column = image_input_column(image_input)
    if column != C.IMAGE_PNG:
        fields.append(STAGE_SCHEMAS[source_stage(column, STAGES)].field(column))
    return pa.schema(fields)


@dataclass(frozen=True)
class FusionData:
    """A built joined index: where it is, its hash, the stages joined and its counts."""

    path: str  # <output.dir>/fusion_data/<hash>
    data_hash: str
    stages: tuple[str, ...]
    rows_in: int  # preprocessed status=ok images
    written: int  # joined rows (status=ok)
    quarantined: int
    lesion_kinds: tuple[str, ...]  # kinds of the joined lesion maps (empty without pseudo_labels)
    reused: bool  # found complete from an earlier run

    @property
    def ok_dir(self) -> str:
        return fs.join(self.path, f"{C.STATUS}={C.STATUS_OK}")

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["stages"], d["lesion_kinds"] = list(self.stages), list(self.lesion_kinds)
        return d


def stage_input(cfg: Config, stage: str) -> str:
    """The folder a train run reads ``stage`` from (``train.<stage>_input`` or ``<output.dir>/<stage>``)."""
    explicit = {"preprocess": cfg.train.preprocess_input, "pseudo_labels": cfg.train.pseudo_labels_input,
                "vessels": cfg.train.vessels_input}[stage]
    return explicit or stage_dir(cfg.output.dir, stage)


def source_stage(column: str, stages: Sequence[str]) -> str:
    for s in ("preprocess", *stages):
        if column in STAGE_SCHEMAS[s].names:
            return s
    raise ValueError(f"column {column!r} is in none of the joined stages {('preprocess', *stages)}")


def dedupe_first(t: pa.Table, where: str) -> pa.Table:
    if t.num_rows == 0:
        return t
    first = t.append_column("_i", pa.array(np.arange(t.num_rows))).group_by(C.IMAGE_ID, use_threads=False).aggregate(
        [("_i", "min")])
    if first.num_rows == t.num_rows:
        return t
    log.warning("%s: %d duplicate rows of %d images; keeping the first shard's row of each", where,
                t.num_rows - first.num_rows, first.num_rows)
    return t.take(pc.sort_indices(first.column("_i_min")))


__all__ = ["FusionData", "MODALITY_STAGES", "STAGES", "fusion_schema", "stage_input", "stages_for"]
