"""Fixtures shared by the model-stage tests: a small preprocess run to read from."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dr_ray.config import load_config
from dr_ray.io import columns as C


PRE_SETTINGS = ("data.synthetic.n_patients=3", "data.synthetic.width=768", "data.synthetic.height=512",
                "preprocess.size=128", "ray.rows_per_file=2", "ray.batch_size=2")


@pytest.fixture(scope="session")
def preprocessed(ray_cluster, tmp_path_factory) -> Path:
    """A preprocess run over 6 synthetic images (+ its own quarantined broken files), plus one planted row whose
    stored PNG is damaged: the model stages must quarantine that one."""
    from dr_ray.pipelines.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("pre")
    run_preprocess(load_config(None, [f"output.dir={root}", *PRE_SETTINGS]))
    ok_dir = root / "preprocess" / "status=ok"
    src = pq.read_table(sorted(ok_dir.glob("*.parquet"))[0])
    bad = src.slice(0, 1)
    bad = bad.set_column(bad.schema.get_field_index(C.IMAGE_ID), C.IMAGE_ID, pa.array(["synthetic/damaged_png"]))
    bad = bad.set_column(bad.schema.get_field_index(C.IMAGE_PNG), C.IMAGE_PNG,
                         pa.array([b"\x89PNG\r\n\x1a\n but the rest is gone"], pa.binary()))
    pq.write_table(bad, ok_dir / "zz_damaged.parquet")
    return root / "preprocess"
