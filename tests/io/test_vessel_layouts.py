"""CHASE_DB1 and STARE readers on fixture folders in the published layouts (no copies of the datasets are on this
machine): ids, patients and eyes, mask paths, problems for missing masks / unlabelled / gzipped files, and the FOV
derived from the image when a dataset ships no FOV masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dr_ray.config import load_config
from dr_ray.io import columns as C
from dr_ray.io.catalog import read_catalog
from dr_ray.testing import make_fundus


def _fundus(path: Path, seed: int, size: int = 96) -> np.ndarray:
    f = make_fundus(seed, size, size)
    Image.fromarray(f.image).save(path)
    return f.vessel_mask


def _mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


@pytest.fixture()
def chase(tmp_path) -> Path:
    root = tmp_path / "CHASEDB1"
    root.mkdir()
    for i, (child, eye) in enumerate([("01", "L"), ("01", "R"), ("02", "L")]):
        m = _fundus(root / f"Image_{child}{eye}.jpg", i)
        if (child, eye) != ("02", "L"):  # Image_02L ships without its masks
            _mask(root / f"Image_{child}{eye}_1stHO.png", m)
            _mask(root / f"Image_{child}{eye}_2ndHO.png", m)
    (root / "readme.txt").write_text("CHASE_DB1")
    return root


def test_chase_db1_layout(chase):
    res = read_catalog("CHASE_DB1", str(chase))
    rows = {r[C.IMAGE_ID]: r for r in res.table.to_pylist()}
    assert sorted(rows) == ["chase_db1/Image_01L", "chase_db1/Image_01R", "chase_db1/Image_02L"]
    assert rows["chase_db1/Image_01L"][C.PATIENT_ID] == rows["chase_db1/Image_01R"][C.PATIENT_ID] == "chase_db1/01"
    assert (rows["chase_db1/Image_01L"][C.EYE], rows["chase_db1/Image_01R"][C.EYE]) == ("left", "right")
    assert rows["chase_db1/Image_01L"][C.VESSEL_MASK_PATH].endswith("Image_01L_1stHO.png")  # first observer
    assert rows["chase_db1/Image_02L"][C.VESSEL_MASK_PATH] is None and rows["chase_db1/Image_01L"][C.FOV_MASK_PATH] is None
    assert [p.reason for p in res.problems] == ["no vessel mask for Image_02L: expected Image_02L_1stHO.*"]
    with pytest.raises(FileNotFoundError, match="no Image_NN"):
        read_catalog("chase_db1", str(chase / ".."))


def test_stare_layout(tmp_path):
    root = tmp_path / "STARE"
    (root / "stare-images").mkdir(parents=True)
    (root / "labels-ah").mkdir()
    (root / "labels-vk").mkdir()
    for i in (1, 2, 3):
        m = _fundus(root / "stare-images" / f"im000{i}.ppm", i)
        if i != 3:  # im0003 is one of STARE's 380 unlabelled images
            _mask(root / "labels-ah" / f"im000{i}.ah.ppm", m)
            _mask(root / "labels-vk" / f"im000{i}.vk.ppm", m)
    (root / "stare-images" / "im0004.ppm.gz").write_bytes(b"\x1f\x8b")
    res = read_catalog("stare", str(root))
    rows = {r[C.IMAGE_ID]: r for r in res.table.to_pylist()}
    assert sorted(rows) == ["stare/im0001", "stare/im0002"]
    assert rows["stare/im0001"][C.VESSEL_MASK_PATH].endswith("labels-ah/im0001.ah.ppm")  # Hoover's labels
    assert rows["stare/im0001"][C.PATIENT_ID] == "stare/im0001"
    reasons = " | ".join(p.reason for p in res.problems)
    assert "1 files are still gzipped" in reasons and "1 images have no" in reasons
    with pytest.raises(FileNotFoundError, match="labels-ah"):
        (root / "labels-ah" / "im0001.ah.ppm").unlink()
        (root / "labels-ah" / "im0002.ah.ppm").unlink()
        (root / "labels-ah").rmdir()
        read_catalog("stare", str(root))


def test_vessel_training_records_derive_the_fov_when_none_is_shipped(chase):
    from dr_ray.pipelines.train_vessels import vessel_records
    from dr_ray.training.data import load_vessel_image

    cfg = load_config(None, ["train_vessels.datasets=[chase_db1]", f"train_vessels.roots=[{chase}]"])
    records, skipped = vessel_records(cfg)
    assert [r.image_id for r in records] == ["chase_db1/Image_01L", "chase_db1/Image_01R"]
    assert skipped == ["chase_db1/Image_02L"]
    img = load_vessel_image(records[0])
    truth = make_fundus(0, 96, 96).fov_mask
    assert img.fov.shape == truth.shape and (img.fov == truth).mean() > 0.95  # the FOV circle (JPEG rim aside)
    assert truth.mean() < 0.85  # ... which the whole frame would not be
    assert img.mask.sum() > 0
