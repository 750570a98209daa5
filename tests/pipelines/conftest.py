"""Fixtures shared by the model-stage tests: a small preprocess run to read from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def label_models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny vessel U-Net and a tiny 4-lesion sigmoid U-Net, fixed random weights, pretrained=False (the
    ``dr-ray label`` tests)."""
    from dr_ray.models.tiny import tiny_label_models

    return tiny_label_models(tmp_path_factory.mktemp("label_models"))


@pytest.fixture(scope="session")
def label_threshold(label_models) -> float:
    """Random weights give vessel probabilities in a narrow band: threshold inside it (85th percentile on a
    synthetic fundus), so the graphs and biomarkers are not empty and their equality means something."""
    from dr_ray.models import load_model_dir
    from dr_ray.testing import make_fundus
    from dr_ray.training import predict_image

    model, _ = load_model_dir(label_models[0])
    image = make_fundus(0, 128, 128).image
    prob = predict_image(model, image, mean=model.spec.mean, std=model.spec.std)
    return round(float(np.percentile(prob, 85)), 4)
