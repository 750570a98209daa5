"""Catalog readers: real data in ../shared/data (skipped when absent) and tiny fixture folders in tmp_path
with known label defects, checked row by row and problem by problem."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dr_ray.io import columns as C
from dr_ray.io import (
    CatalogResult,
    LabelProblem,
    problems_table,
    read_aptos,
    read_catalog,
    read_catalog_parquet,
    read_drive,
    read_eyepacs,
    read_fgadr,
    read_idrid,
    read_messidor2,
    write_catalog,
)


def _img(path: Path, value: int = 0, mode: str = "RGB") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".gif": "GIF"}[path.suffix.lower()]
    Image.new(mode, (8, 6), (value,) * 3 if mode == "RGB" else value).save(path, format=fmt)
    return str(path)


def _text(path: Path, text: str, crlf: bool = False, bom: bool = False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return str(path)


def _rows(result: CatalogResult, *cols: str) -> list[tuple]:
    return [tuple(r[c] for c in cols) for r in result.table.to_pylist()]


def _problems(result: CatalogResult) -> list[tuple[str, int, str]]:
    return [(p.file, p.line, p.reason) for p in result.problems]


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_eyepacs_real_sample(shared_data: Path):
    root = shared_data / "EyePACS_kaggle_sample"
    # The sample's trainLabels.csv lists exactly the six images present (not all 35,126 Kaggle rows).
    with open(root / "trainLabels.csv", newline="", encoding="utf-8-sig") as f:
        assert len(list(csv.reader(f))) == 7
    res = read_eyepacs(str(root))
    assert res.problems == []
    assert res.table.schema.equals(C.CATALOG_SCHEMA)
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE, C.GRADE, C.REFERABLE, C.SPLIT, C.DATASET) == [
        ("eyepacs/10_left", "eyepacs/10", "left", 0, False, "train", "eyepacs"),
        ("eyepacs/10_right", "eyepacs/10", "right", 0, False, "train", "eyepacs"),
        ("eyepacs/15_left", "eyepacs/15", "left", 1, False, "train", "eyepacs"),
        ("eyepacs/15_right", "eyepacs/15", "right", 2, True, "train", "eyepacs"),
        ("eyepacs/16_left", "eyepacs/16", "left", 4, True, "train", "eyepacs"),
        ("eyepacs/16_right", "eyepacs/16", "right", 4, True, "train", "eyepacs"),
    ]
    for r in res.table.to_pylist():
        assert r[C.PATH] == str(root / "images" / (r[C.IMAGE_ID].split("/")[1] + ".jpeg"))
        assert Path(r[C.PATH]).is_file()
        assert r[C.FOLD] is None
    # Through the dispatcher too.
    assert read_catalog("EyePACS", str(root)).table.equals(res.table)


@pytest.mark.shared_data
def test_eyepacs_real_256_preproc(shared_data: Path):
    res = read_eyepacs(str(shared_data / "EyePACS_256_preproc"))
    assert res.problems == []
    t = res.table
    assert t.num_rows == 150
    assert len(set(t.column(C.PATIENT_ID).to_pylist())) == 75
    grades = t.column(C.GRADE).to_pylist()
    assert {g: grades.count(g) for g in range(5)} == {0: 36, 1: 27, 2: 36, 3: 28, 4: 23}  # MANIFEST.md
    assert sorted(set(t.column(C.EYE).to_pylist())) == ["left", "right"]


@pytest.mark.shared_data
def test_drive_real(shared_data: Path):
    res = read_catalog("drive", str(shared_data / "DRIVE"))
    assert res.problems == []
    rows = res.table.to_pylist()
    assert [r[C.IMAGE_ID] for r in rows] == [f"drive/{n}_training" for n in range(21, 41)]
    for r in rows:
        n = r[C.IMAGE_ID].split("/")[1].split("_")[0]
        assert r[C.PATIENT_ID] == r[C.IMAGE_ID] and r[C.GRADE] is None and r[C.SPLIT] == "train"
        assert r[C.VESSEL_MASK_PATH] == str(shared_data / "DRIVE/training/1st_manual" / f"{n}_manual1.gif")
        assert r[C.FOV_MASK_PATH] == str(shared_data / "DRIVE/training/mask" / f"{n}_training_mask.gif")
        # DRIVE_AV is the sibling folder ../DRIVE_AV
        assert r[C.AV_MASK_PATH] == str(shared_data / "DRIVE_AV/training/1st_manual" / f"{n}_training.png")
        for col in (C.PATH, C.VESSEL_MASK_PATH, C.FOV_MASK_PATH, C.AV_MASK_PATH):
            assert Path(r[col]).is_file()


@pytest.mark.shared_data
def test_hrf_av_real(shared_data: Path):
    res = read_catalog("hrf-av", str(shared_data / "HRF-AV"))
    assert res.problems == []
    root = shared_data / "HRF-AV"
    assert _rows(res, C.IMAGE_ID, C.PATH, C.AV_MASK_PATH, C.FOV_MASK_PATH, C.VESSEL_MASK_PATH, C.GRADE) == [
        ("hrf_av/01_dr", str(root / "images/01_dr.JPG"), str(root / "1st_manual/01_dr_AVmanual.png"),
         str(root / "mask/01_dr_mask.tif"), None, None),
        ("hrf_av/01_h", str(root / "images/01_h.jpg"), str(root / "1st_manual/01_h_AVmanual.png"),
         str(root / "mask/01_h_mask.tif"), None, None),
    ]


@pytest.mark.shared_data
def test_les_av_real(shared_data: Path):
    res = read_catalog("les_av", str(shared_data / "LES-AV"))
    assert res.problems == []
    t = res.table
    assert t.num_rows == 15
    assert len(set(t.column(C.PATIENT_ID).to_pylist())) == 15
    assert "les_av/34" in t.column(C.IMAGE_ID).to_pylist()
    for r in t.to_pylist():
        native = r[C.IMAGE_ID].split("/")[1]
        assert r[C.AV_MASK_PATH].endswith(f"LES-AV/1st_manual/{native}.png")
        assert r[C.VESSEL_MASK_PATH].endswith(f"LES-AV/2nd_manual/{native}.png")
        assert r[C.FOV_MASK_PATH].endswith(f"LES-AV/mask/{native}_mask.gif")
        for col in (C.PATH, C.AV_MASK_PATH, C.VESSEL_MASK_PATH, C.FOV_MASK_PATH):
            assert Path(r[col]).is_file()


# --- EyePACS fixture -----------------------------------------------------------------------------

EYEPACS_CSV = """image,level
10_left,0
10_right,x

11_left,1
11_right,2,extra
12_left,3
11_left,1
,2
 11_right , 4
13_left,5
"""


def test_eyepacs_bad_rows(tmp_path: Path):
    for name in ("10_left", "10_right", "11_left", "11_right", "99_left"):
        _img(tmp_path / "train" / f"{name}.jpeg")
    labels = _text(tmp_path / "trainLabels.csv", EYEPACS_CSV, crlf=True, bom=True)
    res = read_eyepacs(str(tmp_path))
    train = tmp_path / "train"
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE, C.GRADE, C.REFERABLE, C.PATH) == [
        ("eyepacs/10_left", "eyepacs/10", "left", 0, False, str(train / "10_left.jpeg")),
        ("eyepacs/11_left", "eyepacs/11", "left", 1, False, str(train / "11_left.jpeg")),
        ("eyepacs/11_right", "eyepacs/11", "right", 4, True, str(train / "11_right.jpeg")),
    ]
    assert _problems(res) == [
        (labels, 3, "grade 'x' is not an integer 0-4"),
        (labels, 6, "expected 2 columns, found 3"),
        (labels, 7, f"image file not found: {train / '12_left.jpeg'}"),
        (labels, 8, "duplicate image id 11_left (first on line 5)"),
        (labels, 9, "empty image id"),
        (labels, 11, "grade '5' is not an integer 0-4"),
        (str(train), 0, "2 image file(s) have no row in trainLabels.csv; left out: 10_right.jpeg, 99_left.jpeg"),
    ]
    assert all(isinstance(p, LabelProblem) for p in res.problems)


def test_eyepacs_train_and_test_solution(tmp_path: Path):
    for name in ("1_left", "1_right"):
        _img(tmp_path / "train" / f"{name}.jpeg")
    for name in ("2_left", "2_right"):
        _img(tmp_path / "test" / f"{name}.jpeg")
    _text(tmp_path / "trainLabels.csv", "image,level\n1_left,0\n1_right,3\n")
    _text(tmp_path / "retinopathy_solution.csv", "image,level,Usage\n2_left,2,Public\n2_right,0,Private\n")
    res = read_eyepacs(str(tmp_path))
    assert res.problems == []
    assert _rows(res, C.IMAGE_ID, C.GRADE, C.SPLIT) == [
        ("eyepacs/1_left", 0, "train"),
        ("eyepacs/1_right", 3, "train"),
        ("eyepacs/2_left", 2, "test_public"),
        ("eyepacs/2_right", 0, "test_private"),
    ]
    # labels= picks one file; an absolute path works like a relative one.
    only_test = read_eyepacs(str(tmp_path), labels=str(tmp_path / "retinopathy_solution.csv"))
    assert _rows(only_test, C.IMAGE_ID, C.PATH) == [
        ("eyepacs/2_left", str(tmp_path / "test/2_left.jpeg")),
        ("eyepacs/2_right", str(tmp_path / "test/2_right.jpeg")),
    ]
    assert read_eyepacs(str(tmp_path), labels="trainLabels.csv").table.num_rows == 2


def test_eyepacs_images_in_root_and_errors(tmp_path: Path):
    _img(tmp_path / "5_right.jpeg")
    _text(tmp_path / "trainLabels.csv", "image,level\n5_right.jpeg,2\n")
    res = read_eyepacs(str(tmp_path))
    assert _rows(res, C.IMAGE_ID, C.PATH, C.REFERABLE) == [("eyepacs/5_right", str(tmp_path / "5_right.jpeg"), True)]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_eyepacs(str(tmp_path), labels="nope.csv")
    with pytest.raises(FileNotFoundError, match="missing_root"):
        read_eyepacs(str(tmp_path / "missing_root"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="trainLabels.csv"):
        read_eyepacs(str(empty))
    _text(tmp_path / "bad" / "trainLabels.csv", "name,grade\n5_right,2\n")
    with pytest.raises(ValueError, match=r"bad/trainLabels.csv: no column named 'image'"):
        read_eyepacs(str(tmp_path / "bad"))


# --- APTOS ---------------------------------------------------------------------------------------


def test_aptos(tmp_path: Path):
    for name in ("000c1434d8d7", "001639a390f0", "0024cdab0c1e"):
        _img(tmp_path / "train_images" / f"{name}.png")
    _img(tmp_path / "test_images" / "0005cfc8afb6.png")
    labels = _text(tmp_path / "train.csv", "id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n0024cdab0c1e,-1\n"
                                           "ffffffffffff,0\n", crlf=True)
    _text(tmp_path / "test.csv", "id_code\n0005cfc8afb6\n")
    res = read_aptos(str(tmp_path))
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE, C.GRADE, C.REFERABLE, C.SPLIT) == [
        ("aptos/000c1434d8d7", "aptos/000c1434d8d7", None, 2, True, "train"),
        ("aptos/001639a390f0", "aptos/001639a390f0", None, 4, True, "train"),
    ]
    images = tmp_path / "train_images"
    assert _problems(res) == [
        (labels, 4, "grade '-1' is not an integer 0-4"),
        (labels, 5, f"image file not found: {images / 'ffffffffffff.png'}"),
        (str(images), 0, "1 image file(s) have no row in train.csv; left out: 0024cdab0c1e.png"),
    ]
    test = read_catalog("aptos", str(tmp_path), labels="test.csv")
    assert _rows(test, C.IMAGE_ID, C.GRADE, C.REFERABLE, C.SPLIT, C.PATH) == [
        ("aptos/0005cfc8afb6", None, None, "test", str(tmp_path / "test_images/0005cfc8afb6.png"))
    ]


# --- Messidor-2 ----------------------------------------------------------------------------------

MESSIDOR_CSV = """image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
20051020_43808_0100_PP.png,0,0,1
20051020_43832_0100_PP.png,2.0,1,1
IM002385.JPG,,,0
IM002386.JPG,3,0,1
20051020_44000_0100_PP.png,1,0,1
IM002387.JPG,x,0,1
IM002388.JPG,1,0,7
"""


def _messidor_images(root: Path) -> None:
    for name in ("20051020_43808_0100_PP.png", "20051020_43832_0100_PP.png", "IM002385.JPG", "im002386.jpg",
                 "IM002387.JPG", "IM002388.JPG", "IM009999.JPG"):
        _img(root / "IMAGES" / name)


def test_messidor2_krause(tmp_path: Path):
    _messidor_images(tmp_path)
    labels = _text(tmp_path / "messidor_data.csv", MESSIDOR_CSV)
    res = read_messidor2(str(tmp_path))
    img = tmp_path / "IMAGES"
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE, C.GRADE, C.REFERABLE, C.PATH) == [
        ("messidor2/20051020_43808_0100_PP", "messidor2/20051020_43808_0100_PP", None, 0, False,
         str(img / "20051020_43808_0100_PP.png")),
        ("messidor2/20051020_43832_0100_PP", "messidor2/20051020_43832_0100_PP", None, 2, True,
         str(img / "20051020_43832_0100_PP.png")),
        # ungradable: kept, grade and referable null, not a problem
        ("messidor2/IM002385", "messidor2/IM002385", None, None, None, str(img / "IM002385.JPG")),
        # file name case differs from the label cell
        ("messidor2/IM002386", "messidor2/IM002386", None, 3, True, str(img / "im002386.jpg")),
    ]
    assert _problems(res) == [
        (labels, 6, f"image file not found: {img / '20051020_44000_0100_PP.png'}"),
        (labels, 7, "grade 'x' is not an integer 0-4"),
        (labels, 8, "gradable '7' is not 0 or 1"),
        (str(img), 0, "3 image file(s) have no row in messidor_data.csv; left out: "
                      "IM002387.JPG, IM002388.JPG, IM009999.JPG"),
    ]


def test_messidor2_pairing_and_variant(tmp_path: Path):
    _messidor_images(tmp_path)
    _text(tmp_path / "messidor_data.csv", MESSIDOR_CSV)
    _text(tmp_path / "messidor-2_pairs.csv",
          "Exam;Left eye;Right eye\nexam1;20051020_43808_0100_PP.png;20051020_43832_0100_PP.png\n"
          "exam2;IM002385.JPG;IM002386.JPG\n")
    res = read_messidor2(str(tmp_path))
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE) == [
        ("messidor2/20051020_43808_0100_PP", "messidor2/exam1", "left"),
        ("messidor2/20051020_43832_0100_PP", "messidor2/exam1", "right"),
        ("messidor2/IM002385", "messidor2/exam2", "left"),
        ("messidor2/IM002386", "messidor2/exam2", "right"),
    ]
    # image,patient,grade variant (e.g. derived from messidor-2.xls), images in root itself
    v = tmp_path / "variant"
    _img(v / "a.png")
    _img(v / "b.png")
    _text(v / "messidor-2.csv", "image,patient,grade\na.png,p1,1\nb.png,p1,3\n")
    res = read_catalog("Messidor-2", str(v))
    assert res.problems == []
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.GRADE) == [
        ("messidor2/a", "messidor2/p1", 1), ("messidor2/b", "messidor2/p1", 3)]


# --- IDRiD ---------------------------------------------------------------------------------------

# As published: trailing-space header name, empty padding columns, all-empty padding rows.
IDRID_TRAIN_CSV = """Image name,Retinopathy grade,Risk of macular edema ,,,
IDRiD_001,3,2,,,
IDRiD_002,2,2,,,
IDRiD_003,9,0,,,
IDRiD_004,0,0,,,
,,,,,
"""


def test_idrid_both_parts(tmp_path: Path):
    g = tmp_path / "B. Disease Grading"
    for name in ("IDRiD_001", "IDRiD_002", "IDRiD_003"):
        _img(g / "1. Original Images/a. Training Set" / f"{name}.jpg")
    _img(g / "1. Original Images/b. Testing Set/IDRiD_001.jpg")
    train_csv = _text(g / "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv", IDRID_TRAIN_CSV, crlf=True)
    _text(g / "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
          "Image name,Retinopathy grade,Risk of macular edema\nIDRiD_001,4,1\n")
    s = tmp_path / "A. Segmentation"
    for name in ("IDRiD_01", "IDRiD_02"):
        _img(s / "1. Original Images/a. Training Set" / f"{name}.jpg")
    gt = s / "2. All Segmentation Groundtruths/a. Training Set"
    ma1 = _img(gt / "1. Microaneurysms/IDRiD_01_MA.tif", mode="L")
    ma2 = _img(gt / "1. Microaneurysms/IDRiD_02_MA.tif", mode="L")
    he1 = _img(gt / "2. Haemorrhages/IDRiD_01_HE.tif", mode="L")
    ex1 = _img(gt / "3. Hard Exudates/IDRiD_01_EX.tif", mode="L")
    ex2 = _img(gt / "3. Hard Exudates/IDRiD_02_EX.tif", mode="L")
    _img(gt / "5. Optic Disc/IDRiD_01_OD.tif", mode="L")  # ignored
    # no "4. Soft Exudates" folder at all

    res = read_idrid(str(tmp_path))
    cols = (C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.REFERABLE, C.SPLIT,
            C.lesion_mask_column("ma"), C.lesion_mask_column("he"), C.lesion_mask_column("ex"),
            C.lesion_mask_column("se"), C.lesion_mask_column("irma"), C.lesion_mask_column("nv"))
    assert _rows(res, *cols) == [
        ("idrid/grading/train/IDRiD_001", "idrid/grading/train/IDRiD_001", 3, True, "train") + (None,) * 6,
        ("idrid/grading/train/IDRiD_002", "idrid/grading/train/IDRiD_002", 2, True, "train") + (None,) * 6,
        ("idrid/grading/test/IDRiD_001", "idrid/grading/test/IDRiD_001", 4, True, "test") + (None,) * 6,
        ("idrid/segmentation/train/IDRiD_01", "idrid/segmentation/train/IDRiD_01", None, None, "train",
         ma1, he1, ex1, None, None, None),
        ("idrid/segmentation/train/IDRiD_02", "idrid/segmentation/train/IDRiD_02", None, None, "train",
         ma2, None, ex2, None, None, None),
    ]
    assert res.table.column(C.PATH).to_pylist()[2] == str(g / "1. Original Images/b. Testing Set/IDRiD_001.jpg")
    assert _problems(res) == [
        (train_csv, 4, "grade '9' is not an integer 0-4"),
        (train_csv, 5, f"image file not found: {g / '1. Original Images/a. Training Set/IDRiD_004.jpg'}"),
        (str(g / "1. Original Images/a. Training Set"), 0,
         "1 image file(s) have no row in a. IDRiD_Disease Grading_Training Labels.csv; left out: IDRiD_003.jpg"),
        (str(gt), 0, "no soft exudates masks (*_SE.tif) found; lesion_se_path left null for the train "
                     "segmentation images"),
    ]


def test_idrid_missing_everything(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="Disease Grading"):
        read_idrid(str(tmp_path))


# --- FGADR ---------------------------------------------------------------------------------------


def test_fgadr(tmp_path: Path):
    base = tmp_path / "Seg-set"
    names = ("0001_1.png", "0002_1.png", "0003_2.png")
    for n in names:
        _img(base / "Original_Images" / n)
    masks = {}
    for folder in ("Microaneurysms_Masks", "Hemohedge_Masks", "HardExudate_Masks", "SoftExudate_Masks",
                   "Neovascularization_Masks"):  # no IRMA_Masks
        for n in names:
            if folder == "SoftExudate_Masks" and n == "0003_2.png":
                continue  # a missing mask file -> null
            masks[(folder, n)] = _img(base / folder / n, mode="L")
    labels = _text(base / "DR_Seg_Grading_Label.csv", "0001_1.png,3\n0002_1.png,x\n0004_1.png,1\n0003_2.png,0\n")
    res = read_catalog("fgadr", str(tmp_path))
    cols = (C.IMAGE_ID, C.PATIENT_ID, C.GRADE, C.REFERABLE) + C.LESION_MASK_COLUMNS
    assert _rows(res, *cols) == [
        ("fgadr/0001_1", "fgadr/0001_1", 3, True, masks[("Microaneurysms_Masks", "0001_1.png")],
         masks[("Hemohedge_Masks", "0001_1.png")], masks[("HardExudate_Masks", "0001_1.png")],
         masks[("SoftExudate_Masks", "0001_1.png")], None, masks[("Neovascularization_Masks", "0001_1.png")]),
        ("fgadr/0002_1", "fgadr/0002_1", None, None, masks[("Microaneurysms_Masks", "0002_1.png")],
         masks[("Hemohedge_Masks", "0002_1.png")], masks[("HardExudate_Masks", "0002_1.png")],
         masks[("SoftExudate_Masks", "0002_1.png")], None, masks[("Neovascularization_Masks", "0002_1.png")]),
        ("fgadr/0003_2", "fgadr/0003_2", 0, False, masks[("Microaneurysms_Masks", "0003_2.png")],
         masks[("Hemohedge_Masks", "0003_2.png")], masks[("HardExudate_Masks", "0003_2.png")],
         None, None, masks[("Neovascularization_Masks", "0003_2.png")]),
    ]
    assert _problems(res) == [
        (labels, 2, "grade 'x' is not an integer 0-4"),
        (labels, 3, f"image file not found: {base / 'Original_Images' / '0004_1.png'}"),
        (str(base / "IRMA_Masks"), 0,
         "intraretinal microvascular abnormalities mask folder not found; lesion_irma_path left null"),
        (labels, 0, "1 image(s) have no valid grade row; kept with grade null: 0002_1.png"),
    ]
    # Seg-set itself as root gives the same table.
    assert read_fgadr(str(base)).table.equals(res.table)


# --- DRIVE fixture -------------------------------------------------------------------------------


def test_drive_fixture_test_split_and_missing_mask(tmp_path: Path):
    root = tmp_path / "DRIVE"
    _img(root / "training/images/21_training.tif")
    _img(root / "training/1st_manual/21_manual1.gif", mode="L")
    _img(root / "training/mask/21_training_mask.gif", mode="L")
    _img(root / "test/images/01_test.tif")
    _img(root / "test/1st_manual/01_manual1.gif", mode="L")
    (root / "test/mask").mkdir(parents=True)  # FOV mask missing
    av = _img(root / "DRIVE_AV/training/1st_manual/21_training.png", mode="L")  # DRIVE_AV inside root
    res = read_drive(str(root))
    assert _rows(res, C.IMAGE_ID, C.SPLIT, C.AV_MASK_PATH, C.FOV_MASK_PATH) == [
        ("drive/21_training", "train", av, str(root / "training/mask/21_training_mask.gif")),
        ("drive/01_test", "test", None, None),
    ]
    assert _problems(res) == [(str(root / "test/mask"), 0, "no FOV mask for 01_test: expected 01_test_mask.*")]
    with pytest.raises(FileNotFoundError, match="images"):
        read_drive(str(tmp_path))


# --- dispatch, parquet, problems -----------------------------------------------------------------


def test_read_catalog_unknown_dataset(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown dataset 'chase'; known: eyepacs, aptos, messidor2, idrid, "
                                         "fgadr, drive, hrf_av, les_av, chase_db1, stare"):
        read_catalog("chase", str(tmp_path))
    with pytest.raises(ValueError, match="labels must be empty"):
        read_catalog("les_av", str(tmp_path), labels="x.csv")


def test_write_and_read_parquet(tmp_path: Path):
    for name in ("1_left", "1_right"):
        _img(tmp_path / "train" / f"{name}.jpeg")
    _text(tmp_path / "trainLabels.csv", "image,level\n1_left,0\n1_right,3\n")
    res = read_eyepacs(str(tmp_path))
    out = tmp_path / "out" / "sub" / "catalog.parquet"
    write_catalog(res, str(out))
    back = read_catalog_parquet(str(out))
    assert back.schema.equals(C.CATALOG_SCHEMA)
    assert back.equals(res.table)
    write_catalog(res.table, str(tmp_path / "t.parquet"))  # a bare table works too
    assert read_catalog_parquet(str(tmp_path / "t.parquet")).equals(res.table)

    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        read_catalog_parquet(str(tmp_path / "nothing.parquet"))
    bad = tmp_path / "bad.parquet"
    pq.write_table(res.table.drop_columns([C.SPLIT]), bad)
    with pytest.raises(ValueError, match=rf"{bad}: not a catalog table: missing columns \['split'\]"):
        read_catalog_parquet(str(bad))
    dup = pa.concat_tables([res.table, res.table.slice(0, 1)])
    with pytest.raises(ValueError, match="1 duplicate image id"):
        write_catalog(dup, str(tmp_path / "dup.parquet"))
    wrong = res.table.set_column(res.table.column_names.index(C.REFERABLE), C.REFERABLE, pa.array([True, True]))
    with pytest.raises(ValueError, match="referable is not"):
        write_catalog(wrong, str(tmp_path / "wrong.parquet"))


def test_problems_table():
    t = problems_table([LabelProblem("a.csv", 3, "grade 'x' is not an integer 0-4"), LabelProblem("dir", 0, "r")])
    assert t.schema.names == ["file", "line", "reason"]
    assert t.schema.field("line").type == pa.int32()
    assert t.to_pylist() == [
        {"file": "a.csv", "line": 3, "reason": "grade 'x' is not an integer 0-4"},
        {"file": "dir", "line": 0, "reason": "r"},
    ]
    assert problems_table([]).num_rows == 0


def test_les_av_split_layout_duplicates_and_missing_folder(tmp_path: Path):
    for sub, ids in (("training", ("42", "49")), ("test", ("224",))):
        for i in ids:
            _img(tmp_path / sub / "images" / f"{i}.png")
            _img(tmp_path / sub / "1st_manual" / f"{i}.png", mode="L")
            _img(tmp_path / sub / "mask" / f"{i}_mask.gif", mode="L")
            if sub == "training":
                _img(tmp_path / sub / "2nd_manual" / f"{i}.png", mode="L")
    _img(tmp_path / "training/images/42.jpg")  # same id, second extension: reported, .png kept
    res = read_catalog("LES-AV", str(tmp_path))
    assert _rows(res, C.IMAGE_ID, C.SPLIT, C.PATH, C.VESSEL_MASK_PATH) == [
        ("les_av/42", "train", str(tmp_path / "training/images/42.png"), str(tmp_path / "training/2nd_manual/42.png")),
        ("les_av/49", "train", str(tmp_path / "training/images/49.png"), str(tmp_path / "training/2nd_manual/49.png")),
        ("les_av/224", "test", str(tmp_path / "test/images/224.png"), None),
    ]
    assert _problems(res) == [
        (str(tmp_path / "training/images"), 0, "duplicate image id 42: 42.jpg skipped, 42.png kept"),
        (str(tmp_path / "test/2nd_manual"), 0, "vessel mask folder not found; vessel_mask_path left null"),
    ]


# --- Messidor-2 exam pairing as distributed, and the patient-level flag ------------------------------


def test_messidor2_distribution_pairing_file(tmp_path: Path, caplog):
    _messidor_images(tmp_path)
    _text(tmp_path / "messidor_data.csv", MESSIDOR_CSV)
    # as in the Messidor-2 download: ';'-separated, header left;right, one exam per row, names with extension
    pairs = _text(tmp_path / "messidor-2.csv", "left;right\n20051020_43808_0100_PP.png;20051020_43832_0100_PP.png\n"
                                               "IM002385.JPG;IM002386.JPG\nIM002386.JPG;IM009999.JPG\n", crlf=True)
    res = read_messidor2(str(tmp_path))
    exam1, exam2 = "messidor2/20051020_43808_0100_PP+20051020_43832_0100_PP", "messidor2/IM002385+IM002386"
    assert _rows(res, C.IMAGE_ID, C.PATIENT_ID, C.EYE) == [
        ("messidor2/20051020_43808_0100_PP", exam1, "left"),
        ("messidor2/20051020_43832_0100_PP", exam1, "right"),
        ("messidor2/IM002385", exam2, "left"),
        ("messidor2/IM002386", exam2, "right"),
    ]
    assert (pairs, 4, "image IM002386 is already in the exam on line 3; this row's left eye skipped") in _problems(res)
    assert res.patient_level
    # without the pairing file: every image its own patient, a warning, patient_level false
    (tmp_path / "messidor-2.csv").unlink()
    with caplog.at_level("WARNING", logger="dr_ray.io.catalog._collector"):
        res = read_messidor2(str(tmp_path))
    assert not res.patient_level
    assert any("4 of 4 images have no patient id" in r.getMessage() for r in caplog.records)
    # the pairing file alone is not a label file
    only = tmp_path / "only_pairs"
    _img(only / "IMAGES" / "a.png")
    _text(only / "messidor-2.csv", "left;right\na.png;b.png\n")
    with pytest.raises(ValueError, match="exam pairing file of the Messidor-2 distribution"):
        read_messidor2(str(only))


def _pic(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), 0 if mode == "L" else (0, 0, 0)).save(path)


def _layout_eyepacs(root: Path) -> None:
    for p in (1, 2, 3):
        for eye in ("left", "right"):
            _pic(root / "train" / f"{p}_{eye}.jpeg")
    _text(root / "trainLabels.csv", "image,level\n1_left,0\n1_right,2\n2_left,1\n2_right,1\n3_left,4\n3_right,0\n")


def _layout_aptos(root: Path) -> None:
    for i in ("a1", "b2", "c3"):
        _pic(root / "train_images" / f"{i}.png")
    _text(root / "train.csv", "id_code,diagnosis\na1,0\nb2,2\nc3,1\n")


def _layout_messidor2(root: Path) -> None:
    for n in ("x1.png", "x2.png", "y1.JPG", "y2.JPG"):
        _pic(root / "IMAGES" / n)
    _text(root / "messidor_data.csv", "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
                                      "x1.png,0,0,1\nx2.png,3,0,1\ny1.JPG,1,0,1\ny2.JPG,0,0,1\n")
    _text(root / "messidor-2.csv", "left;right\nx1.png;x2.png\ny1.JPG;y2.JPG\n")


def _layout_idrid(root: Path) -> None:
    g = root / "B. Disease Grading"
    for n in ("IDRiD_001", "IDRiD_002", "IDRiD_003"):
        _pic(g / "1. Original Images/a. Training Set" / f"{n}.jpg")
    _text(g / "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
          "Image name,Retinopathy grade,Risk of macular edema\nIDRiD_001,3,2\nIDRiD_002,0,0\nIDRiD_003,2,1\n")


def _layout_fgadr(root: Path) -> None:
    for n in ("0001_1.png", "0002_1.png", "0003_2.png"):
        _pic(root / "Seg-set" / "Original_Images" / n)
    _text(root / "Seg-set" / "DR_Seg_Grading_Label.csv", "0001_1.png,3\n0002_1.png,0\n0003_2.png,1\n")


def _layout_drive(root: Path) -> None:
    for i in (21, 22, 23):
        _pic(root / "training/images" / f"{i}_training.tif")
        _pic(root / "training/1st_manual" / f"{i}_manual1.gif", "L")
        _pic(root / "training/mask" / f"{i}_training_mask.gif", "L")


def _layout_hrf_av(root: Path) -> None:
    for s in ("01_dr", "01_g", "02_h"):
        _pic(root / "images" / f"{s}.{'JPG' if s.endswith('dr') else 'jpg'}")
        _pic(root / "1st_manual" / f"{s}_AVmanual.png", "L")
        _pic(root / "mask" / f"{s}_mask.tif")


def _layout_les_av(root: Path) -> None:
    for i in ("42", "49", "224"):
        _pic(root / "images" / f"{i}.png")
        _pic(root / "1st_manual" / f"{i}.png", "L")
        _pic(root / "2nd_manual" / f"{i}.png", "L")
        _pic(root / "mask" / f"{i}_mask.gif", "L")


def _layout_chase_db1(root: Path) -> None:
    for n in ("01L", "01R", "02L", "02R", "03L"):
        _pic(root / f"Image_{n}.jpg")
        _pic(root / f"Image_{n}_1stHO.png", "L")


def _layout_stare(root: Path) -> None:
    for i in (1, 2, 3):
        _pic(root / "stare-images" / f"im000{i}.ppm")
        _pic(root / "labels-ah" / f"im000{i}.ah.ppm")


# reader -> (fixture in its published layout, whether its images carry patient ids)
_LAYOUTS = {
    "eyepacs": (_layout_eyepacs, True), "aptos": (_layout_aptos, False), "messidor2": (_layout_messidor2, True),
    "idrid": (_layout_idrid, False), "fgadr": (_layout_fgadr, False), "drive": (_layout_drive, False),
    "hrf_av": (_layout_hrf_av, False), "les_av": (_layout_les_av, False), "chase_db1": (_layout_chase_db1, True),
    "stare": (_layout_stare, False),
}


def test_every_reader_has_a_fold_leakage_fixture():
    from dr_ray.io.catalog import READERS

    assert sorted(_LAYOUTS) == sorted(READERS)  # a new reader must join test_no_patient_spans_two_folds


@pytest.mark.parametrize("dataset", sorted(_LAYOUTS))
def test_no_patient_spans_two_folds(tmp_path: Path, dataset: str):
    from dr_ray.io import assign_folds

    layout, has_patients = _LAYOUTS[dataset]
    layout(tmp_path)
    res = read_catalog(dataset, str(tmp_path))
    assert res.table.num_rows >= 3, _problems(res)
    t = assign_folds(res.table, k=2, seed=0)
    folds_of: dict[str, set] = {}
    for p, f in zip(t.column(C.PATIENT_ID).to_pylist(), t.column(C.FOLD).to_pylist()):
        folds_of.setdefault(p, set()).add(f)
    assert all(len(f) == 1 for f in folds_of.values()), folds_of
    assert res.patient_level is has_patients
    if has_patients:  # the fixture really has patients with two images, kept together
        assert max(Counter(t.column(C.PATIENT_ID).to_pylist()).values()) == 2
