"""Turn the ``data`` config section into a catalog: read (or generate) the dataset, assign folds, limit."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa

from dr_ray.config import DataConfig
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.io.catalog import CatalogResult, assign_folds, read_catalog, read_catalog_parquet

log = logging.getLogger(__name__)

# Broken files added to the synthetic sample (as extra "patients") so the demo shows the quarantine.
_DEMO_BAD = {"90001_left": "truncated_jpeg", "90001_right": "zero_byte", "90002_left": "not_an_image"}
_DEMO_MISSING = "90002_right"  # a label row whose file does not exist: a label problem, not a catalog row


def synthetic_sample(root: str | Path, *, n_patients: int, width: int, height: int, seed: int, quality: int,
                     bad_files: bool) -> Path:
    """Write (once) the built-in EyePACS-layout sample under ``root``; reuse it when already complete."""
    from dr_ray.testing import make_bad_files, write_eyepacs_like_dataset

    root = Path(root)
    done = root / ".complete"
    key = f"{n_patients} {width} {height} {seed} {quality} {bad_files}"
    if done.is_file() and done.read_text() == key:
        return root
    if root.exists():
        shutil.rmtree(root)
    write_eyepacs_like_dataset(root, n_patients, width=width, height=height, seed=seed, quality=quality)
    if bad_files:
        with tempfile.TemporaryDirectory() as tmp:
            made = make_bad_files(tmp)
            for stem, kind in _DEMO_BAD.items():
                shutil.copyfile(made[kind], root / "train" / f"{stem}.jpeg")
        labels = root / "trainLabels.csv"
        with labels.open("a") as f:
            for stem in [*_DEMO_BAD, _DEMO_MISSING]:
                f.write(f"{stem},0\n")
    done.write_text(key)
    log.info("synthetic sample: %d patients at %dx%d in %s", n_patients, width, height, root)
    return root


def build_catalog(cfg: DataConfig, output_dir: str) -> CatalogResult:
    """Catalog for ``cfg`` with folds assigned over the whole dataset, then ``cfg.limit`` applied.

    Folds are drawn before the limit so a smoke run (``data.limit``) sees the same folds as the full run.
    """
    if cfg.catalog:
        table = read_catalog_parquet(cfg.catalog)
        result = CatalogResult(table=table, problems=[])
        if table.column(C.FOLD).null_count == 0:
            return _limit(result, cfg.limit)
    elif cfg.dataset == "synthetic":
        if fs.is_uri(output_dir):
            raise ValueError(f"output.dir={output_dir!r}: the synthetic sample is generated locally; "
                             "use a local output.dir for data.dataset=synthetic")
        s = cfg.synthetic
        root = synthetic_sample(os.path.join(output_dir, "sample"), n_patients=s.n_patients, width=s.width,
                                height=s.height, seed=s.seed, quality=s.quality, bad_files=s.bad_files)
        result = read_catalog("eyepacs", str(root), cfg.labels)
        result = CatalogResult(table=_rename_dataset(result.table, "eyepacs", "synthetic"), problems=result.problems)
    else:
        result = read_catalog(cfg.dataset, cfg.root, cfg.labels)
    if result.table.num_rows == 0:
        raise ValueError(f"the {cfg.dataset} catalog at {cfg.root or cfg.catalog} has no usable rows "
                         f"({len(result.problems)} label problems; first: "
                         f"{result.problems[0].reason if result.problems else 'none'})")
    table = assign_folds(result.table, k=cfg.folds, seed=cfg.seed)
    return _limit(CatalogResult(table=table, problems=result.problems), cfg.limit)


def _limit(result: CatalogResult, limit: int) -> CatalogResult:
    if limit and result.table.num_rows > limit:
        return CatalogResult(table=result.table.slice(0, limit), problems=result.problems)
    return result


def _rename_dataset(table: pa.Table, old: str, new: str) -> pa.Table:
    """Relabel a catalog read with another dataset's reader (the synthetic sample uses the EyePACS layout)."""
    def swap(name: str, values: list) -> pa.Array:
        return pa.array([None if v is None else (new + v[len(old):] if v.startswith(old) else v) for v in values],
                        table.schema.field(name).type)

    for name in (C.IMAGE_ID, C.PATIENT_ID, C.DATASET):
        table = table.set_column(table.schema.get_field_index(name), name, swap(name, table.column(name).to_pylist()))
    return table
