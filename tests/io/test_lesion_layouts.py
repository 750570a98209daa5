"""IDRiD and FGADR lesion-segmentation releases, rebuilt in tmp_path in their published folder layouts (tiny
64x48 images, the published file formats) with the defects real copies have: a lesion folder missing, an image
without one lesion's file, a mask whose size differs from its image, a label row naming a missing image.

Published layouts (IDRiD: Porwal et al. 2018, IEEE Dataport; FGADR: Zhou et al. 2021, Seg-set release):
  IDRiD  A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg  (b. Testing Set)
         A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif
             2. Haemorrhages/_HE, 3. Hard Exudates/_EX, 4. Soft Exudates/_SE (some images only), 5. Optic Disc/_OD;
         masks are RGB TIFFs with the lesion in the red channel.
  FGADR  Seg-set/Original_Images/0001_1.png, Seg-set/{Microaneurysms,Hemohedge,HardExudate,SoftExudate,IRMA,
         Neovascularization}_Masks/0001_1.png (same name as the image; IRMA/NV only for images that have them),
         Seg-set/DR_Seg_Grading_Label.csv without header: "0001_1.png,3".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dr_ray.io import columns as C
from dr_ray.io import read_catalog, read_fgadr, read_idrid
from dr_ray.training.lesion_data import lesion_records_from_catalog, load_lesion_image

W, H = 64, 48


def _image(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> str:
    """An RGB frame (bright disc on black, so the FOV is found) in the format of ``path``'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * h) ** 2
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[disc] = (150 + seed, 70, 40)
    Image.fromarray(rgb).save(path, format={".jpg": "JPEG", ".png": "PNG"}[path.suffix], quality=95)
    return str(path)


def _lesions(seed: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A few 1-3 px blobs, different per seed; (h, w) bool."""
    w, h = size
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for _ in range(3):
        y, x, r = int(rng.integers(10, h - 10)), int(rng.integers(10, w - 10)), int(rng.integers(0, 2))
        m[y - r:y + r + 1, x - r:x + r + 1] = True
    return m


def _idrid_mask(path: Path, mask: np.ndarray) -> str:
    """IDRiD ground truth: RGB TIFF, lesion pixels (255, 0, 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask, 0] = 255
    Image.fromarray(rgb).save(path, format="TIFF")
    return str(path)


def _fgadr_mask(path: Path, mask: np.ndarray, rgb: bool = False) -> str:
    """FGADR ground truth: PNG, 0/255 (grey or RGB with equal channels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = mask.astype(np.uint8) * 255
    Image.fromarray(np.repeat(a[..., None], 3, axis=2) if rgb else a).save(path, format="PNG")
    return str(path)


IDRID_DIRS = {"ma": ("1. Microaneurysms", "MA"), "he": ("2. Haemorrhages", "HE"),
              "ex": ("3. Hard Exudates", "EX"), "se": ("4. Soft Exudates", "SE")}


def build_idrid(root: Path) -> dict:
    """IDRiD with both parts. Train: IDRiD_01 (all four lesions), IDRiD_02 (no _SE file), IDRiD_03 (_HE mask
    32x24, image 64x48). Test: IDRiD_55 with no "4. Soft Exudates" folder at all. Grading: the training CSV
    (published header with padding columns) names IDRiD_003, whose image is missing."""
    seg = root / "A. Segmentation"
    out: dict = {"images": {}, "masks": {}, "arrays": {}}
    for split, sub, names in (("train", "a. Training Set", ("IDRiD_01", "IDRiD_02", "IDRiD_03")),
                              ("test", "b. Testing Set", ("IDRiD_55",))):
        gt = seg / "2. All Segmentation Groundtruths" / sub
        for i, name in enumerate(names):
            out["images"][name] = _image(seg / "1. Original Images" / sub / f"{name}.jpg", i)
            for j, (kind, (folder, suffix)) in enumerate(IDRID_DIRS.items()):
                if kind == "se" and name != "IDRiD_01":
                    continue  # soft exudates: only some images have a file; the test split none at all
                size = (32, 24) if (name, kind) == ("IDRiD_03", "he") else (W, H)
                m = _lesions(100 * i + j + (7 if split == "test" else 0), size)
                out["masks"][(name, kind)] = _idrid_mask(gt / folder / f"{name}_{suffix}.tif", m)
                out["arrays"][(name, kind)] = m
            _idrid_mask(gt / "5. Optic Disc" / f"{name}_OD.tif", _lesions(99))  # not a lesion: ignored
    g = root / "B. Disease Grading"
    for i, name in enumerate(("IDRiD_001", "IDRiD_002")):
        _image(g / "1. Original Images" / "a. Training Set" / f"{name}.jpg", i)
    csv = g / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    csv.parent.mkdir(parents=True)
    csv.write_bytes(b"Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,\r\n"
                    b"IDRiD_001,3,2,,,,,,,,\r\nIDRiD_002,0,0,,,,,,,,\r\nIDRiD_003,2,1,,,,,,,,\r\n")
    out["csv"] = str(csv)
    out["grading_images"] = g / "1. Original Images" / "a. Training Set"
    out["test_gt"] = str(seg / "2. All Segmentation Groundtruths" / "b. Testing Set")
    return out


FGADR_DIRS = {"ma": "Microaneurysms_Masks", "he": "Hemohedge_Masks", "ex": "HardExudate_Masks",
              "se": "SoftExudate_Masks", "irma": "IRMA_Masks", "nv": "Neovascularization_Masks"}


def build_fgadr(release: Path) -> dict:
    """FGADR Seg-set inside its release folder. Every image has MA/HE/EX/SE files (empty where no lesion);
    IRMA_Masks is missing; NV only for 0003_3; HardExudate_Masks/0002_1.png is 32x24; the grade CSV's line 4
    names 0004_2.png, which is not in Original_Images."""
    base = release / "Seg-set"
    out: dict = {"base": base, "images": {}, "masks": {}, "arrays": {}}
    for i, name in enumerate(("0001_1", "0002_1", "0003_3")):
        out["images"][name] = _image(base / "Original_Images" / f"{name}.png", i)
        for j, (kind, folder) in enumerate(FGADR_DIRS.items()):
            if kind == "irma" or (kind == "nv" and name != "0003_3"):
                continue
            size = (32, 24) if (name, kind) == ("0002_1", "ex") else (W, H)
            m = _lesions(10 * i + j, size) if (name, kind) != ("0001_1", "se") else np.zeros((H, W), bool)
            out["masks"][(name, kind)] = _fgadr_mask(base / folder / f"{name}.png", m, rgb=(kind == "he"))
            out["arrays"][(name, kind)] = m
    csv = base / "DR_Seg_Grading_Label.csv"
    csv.write_text("0001_1.png,1\n0002_1.png,3\n0003_3.png,4\n0004_2.png,2\n")
    out["csv"] = str(csv)
    return out


def _row_tuples(table, *cols):
    return [tuple(r[c] for c in cols) for r in table.to_pylist()]


def test_idrid_published_layout_rows_and_problems(tmp_path: Path):
    fx = build_idrid(tmp_path / "IDRiD")
    res = read_idrid(str(tmp_path / "IDRiD"))
    m = fx["masks"]
    cols = (C.IMAGE_ID, C.SPLIT, C.GRADE, C.PATH) + C.LESION_MASK_COLUMNS
    gi = fx["grading_images"]
    assert _row_tuples(res.table, *cols) == [
        ("idrid/grading/train/IDRiD_001", "train", 3, str(gi / "IDRiD_001.jpg")) + (None,) * 6,
        ("idrid/grading/train/IDRiD_002", "train", 0, str(gi / "IDRiD_002.jpg")) + (None,) * 6,
        ("idrid/segmentation/train/IDRiD_01", "train", None, fx["images"]["IDRiD_01"],
         m["IDRiD_01", "ma"], m["IDRiD_01", "he"], m["IDRiD_01", "ex"], m["IDRiD_01", "se"], None, None),
        ("idrid/segmentation/train/IDRiD_02", "train", None, fx["images"]["IDRiD_02"],
         m["IDRiD_02", "ma"], m["IDRiD_02", "he"], m["IDRiD_02", "ex"], None, None, None),
        ("idrid/segmentation/train/IDRiD_03", "train", None, fx["images"]["IDRiD_03"],
         m["IDRiD_03", "ma"], m["IDRiD_03", "he"], m["IDRiD_03", "ex"], None, None, None),
        ("idrid/segmentation/test/IDRiD_55", "test", None, fx["images"]["IDRiD_55"],
         m["IDRiD_55", "ma"], m["IDRiD_55", "he"], m["IDRiD_55", "ex"], None, None, None),
    ]
    assert [(p.file, p.line, p.reason) for p in res.problems] == [
        (fx["csv"], 4, f"image file not found: {gi / 'IDRiD_003.jpg'}"),
        (fx["test_gt"], 0, ("no soft exudates masks (*_SE.tif) found; lesion_se_path left null for the test "
                            "segmentation images")),
    ]
    assert read_catalog("IDRiD", str(tmp_path / "IDRiD")).table.equals(res.table)


def test_fgadr_published_layout_rows_and_problems(tmp_path: Path):
    release = tmp_path / "FGADR-Seg-set_Release"
    fx = build_fgadr(release)
    res = read_fgadr(str(release))
    m = fx["masks"]
    cols = (C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.REFERABLE, C.PATH) + C.LESION_MASK_COLUMNS
    assert _row_tuples(res.table, *cols) == [
        ("fgadr/0001_1", "fgadr/0001_1", 1, False, fx["images"]["0001_1"],
         m["0001_1", "ma"], m["0001_1", "he"], m["0001_1", "ex"], m["0001_1", "se"], None, None),
        ("fgadr/0002_1", "fgadr/0002_1", 3, True, fx["images"]["0002_1"],
         m["0002_1", "ma"], m["0002_1", "he"], m["0002_1", "ex"], m["0002_1", "se"], None, None),
        ("fgadr/0003_3", "fgadr/0003_3", 4, True, fx["images"]["0003_3"],
         m["0003_3", "ma"], m["0003_3", "he"], m["0003_3", "ex"], m["0003_3", "se"], None, m["0003_3", "nv"]),
    ]
    base = fx["base"]
    assert [(p.file, p.line, p.reason) for p in res.problems] == [
        (fx["csv"], 4, f"image file not found: {base / 'Original_Images' / '0004_2.png'}"),
        (str(base / "IRMA_Masks"), 0,
         "intraretinal microvascular abnormalities mask folder not found; lesion_irma_path left null"),
    ]
    assert read_fgadr(str(base)).table.equals(res.table)  # Seg-set itself as root


@pytest.mark.parametrize("dataset", ["idrid", "fgadr"])
def test_catalog_to_loaded_masks(tmp_path: Path, dataset: str):
    """Catalog rows -> lesion records -> decoded masks equal to the written ones; absent files are empty but
    annotated, kinds the release lacks are not annotated; the size mismatch is a ValueError naming the file."""
    if dataset == "idrid":
        fx = build_idrid(tmp_path / "IDRiD")
        table = read_idrid(str(tmp_path / "IDRiD")).table
        native = {f"idrid/segmentation/{s}/{n}": n for s, n in
                  (("train", "IDRiD_01"), ("train", "IDRiD_02"), ("train", "IDRiD_03"), ("test", "IDRiD_55"))}
        annotated = (True, True, True, True, False, False)  # IDRiD never annotates IRMA / NV
        bad = ("IDRiD_03", "he")
    else:
        fx = build_fgadr(tmp_path / "FGADR-Seg-set_Release")
        table = read_fgadr(str(tmp_path / "FGADR-Seg-set_Release")).table
        native = {f"fgadr/{n}": n for n in ("0001_1", "0002_1", "0003_3")}
        annotated = (True, True, True, True, False, True)  # IRMA_Masks missing from this copy
        bad = ("0002_1", "ex")
    records = lesion_records_from_catalog(table, C.LESION_KINDS)
    assert [r.image_id for r in records] == list(native)  # IDRiD grading rows carry no lesion masks: skipped
    for rec in records:
        name = native[rec.image_id]
        if name == bad[0]:
            with pytest.raises(ValueError) as err:
                load_lesion_image(rec, C.LESION_KINDS)
            assert str(err.value) == (f"lesion mask {fx['masks'][bad]}: size 32x24 px differs from its image "
                                      f"{fx['images'][name]} ({W}x{H} px)")
            continue
        im = load_lesion_image(rec, C.LESION_KINDS)
        assert im.image.shape == (H, W, 3) and im.masks.shape == (6, H, W)
        assert tuple(im.present) == annotated
        for k, kind in enumerate(C.LESION_KINDS):
            expected = fx["arrays"].get((name, kind), np.zeros((H, W), bool))
            assert np.array_equal(im.masks[k], expected), (name, kind)
        assert 0.3 < im.fov.mean() < 0.8  # the bright disc, found by dr_ray.imaging.fov.fov_mask
