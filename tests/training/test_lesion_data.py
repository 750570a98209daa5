"""Lesion data: masks decoded as written, microaneurysms surviving downscaling, absent vs unannotated kinds,
size-mismatch errors, lesion-biased patch sampling at the requested rate, augmentation aligned across channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dr_ray.io import columns as C
from dr_ray.testing import make_fundus
from dr_ray.training.lesion_data import (
    LesionImage,
    LesionRecord,
    augment_lesion_patch,
    lesion_data_hash,
    lesion_patch_batches,
    lesion_records_from_catalog,
    load_lesion_image,
    read_lesion_mask,
    sample_lesion_patch_origins,
    split_by_patient,
)


def synthetic_lesion_records(root, seeds, size, *, grade=None):
    """make_fundus frames written as files under ``root`` (dr_ray.testing.write_synthetic_set)."""
    from dr_ray.pipelines.train_lesions import synthetic_lesion_records as records

    return records(str(root), seeds, size, grade=grade)


def _frame(path: Path, w: int, h: int) -> str:
    """RGB PNG: a bright disc on black (so dr_ray.imaging.fov finds a FOV)."""
    yy, xx = np.mgrid[:h, :w]
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2] = (170, 80, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return str(path)


def _save(path: Path, a: np.ndarray, fmt: str = "PNG") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)
    return str(path)


def _blobs(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for _ in range(4):
        y, x = rng.integers(5, h - 5), rng.integers(5, w - 5)
        m[y - 1:y + 2, x - 2:x + 1] = True
    return m


# --- decoding ------------------------------------------------------------------------------------


def test_read_lesion_mask_formats(tmp_path: Path):
    m = _blobs(48, 64, 0)
    grey = m.astype(np.uint8) * 255
    red = np.zeros((48, 64, 3), np.uint8)
    red[m, 0] = 255  # IDRiD: lesion in the red channel only; as grey it would be 76
    soft = grey.copy()
    soft[0, 0] = 100  # an anti-aliased edge value below the middle: background
    soft[m] = 200  # above the middle: lesion
    files = {
        "grey.png": _save(tmp_path / "grey.png", grey),
        "red.tif": _save(tmp_path / "red.tif", red, "TIFF"),
        "ones.png": _save(tmp_path / "ones.png", m.astype(np.uint8)),  # 0/1 labels
        "rgb.png": _save(tmp_path / "rgb.png", np.repeat(grey[..., None], 3, axis=2)),
        "soft.png": _save(tmp_path / "soft.png", soft),
        "drive.gif": _save(tmp_path / "drive.gif", grey, "GIF"),
    }
    for name, path in files.items():
        assert np.array_equal(read_lesion_mask(path), m), name
    assert not read_lesion_mask(_save(tmp_path / "empty.png", np.zeros((48, 64), np.uint8))).any()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    with pytest.raises(ValueError, match=f"lesion mask {tmp_path / 'broken.png'}: cannot decode"):
        read_lesion_mask(str(tmp_path / "broken.png"))


def test_load_masks_equal_written_missing_kind_empty_and_present_flags(tmp_path: Path):
    h, w = 48, 64
    image = _frame(tmp_path / "im.png", w, h)
    ma, ex = _blobs(h, w, 1), _blobs(h, w, 2)
    rec = LesionRecord(
        "d/im", "d/im", image,
        mask_paths={"ma": _save(tmp_path / "ma.png", ma.astype(np.uint8) * 255),
                    "ex": "file://" + _save(tmp_path / "ex.png", ex.astype(np.uint8) * 255)},  # a URI, via fs
        annotated=("ma", "he", "ex"),  # he: annotated, no file -> empty but present
    )
    im = load_lesion_image(rec, ("ex", "he", "ma", "nv"))
    assert im.kinds == ("ex", "he", "ma", "nv")
    assert im.masks.dtype == bool and im.masks.shape == (4, h, w)
    assert np.array_equal(im.masks[0], ex) and np.array_equal(im.masks[2], ma)
    assert not im.masks[1].any() and not im.masks[3].any()
    assert im.present.tolist() == [True, True, True, False]  # nv: not annotated at all
    assert np.array_equal(im.image, np.asarray(Image.open(image).convert("RGB")))


def test_size_mismatch_names_the_mask_and_both_sizes(tmp_path: Path):
    image = _frame(tmp_path / "IDRiD_03.png", 64, 48)
    bad = _save(tmp_path / "IDRiD_03_HE.tif", np.zeros((24, 32), np.uint8), "TIFF")
    rec = LesionRecord("idrid/x", "idrid/x", image, {"he": bad}, ("he",))
    with pytest.raises(ValueError) as err:
        load_lesion_image(rec, ("ma", "he"))
    assert str(err.value) == f"lesion mask {bad}: size 32x24 px differs from its image {image} (64x48 px)"
    fov = _save(tmp_path / "fov.png", np.full((47, 64), 255, np.uint8))
    with pytest.raises(ValueError, match=r"FOV mask .*fov.png: size 64x47 px differs from its image .* \(64x48 px\)"):
        load_lesion_image(LesionRecord("x", "x", image, {}, ("ma",), fov_mask_path=fov), ("ma",))


@pytest.mark.parametrize("size", [100, 77, 31])
def test_resize_keeps_one_pixel_microaneurysms(tmp_path: Path, size: int):
    h, w = 800, 1000
    image = _frame(tmp_path / "im.png", w, h)
    ma = np.zeros((h, w), bool)
    spots = [(400, 500), (123, 457), (611, 873), (399, 101)]  # 1-px microaneurysms
    for y, x in spots:
        ma[y, x] = True
    he = np.zeros((h, w), bool)
    he[200:300, 600:700] = True  # a 100x100 px haemorrhage
    rec = LesionRecord("x", "x", image, {"ma": _save(tmp_path / "ma.png", ma.astype(np.uint8) * 255),
                                         "he": _save(tmp_path / "he.png", he.astype(np.uint8) * 255)}, ("ma", "he"))
    im = load_lesion_image(rec, ("ma", "he"), size=size)
    scale = size / w
    assert im.image.shape == (round(h * scale), size, 3) and im.masks.shape[1:] == im.image.shape[:2]
    from scipy import ndimage

    labels, n = ndimage.label(im.masks[0])
    assert n == len(spots)  # every microaneurysm survives, none merges
    for y, x in spots:  # each lands at its scaled position (+- one output pixel), at most 2x2 px
        near = labels[max(0, int(y * scale) - 1):int(y * scale) + 2, max(0, int(x * scale) - 1):int(x * scale) + 2]
        assert near.any()
    assert im.masks[0].sum() <= 4 * len(spots)
    # the haemorrhage scales by area, growing at most one output pixel per side
    side = 100 * scale
    assert side ** 2 <= im.masks[1].sum() <= (side + 2) ** 2
    assert im.fov.shape == im.image.shape[:2] and 0.4 < im.fov.mean() < 0.7


def test_upscaling_uses_nearest(tmp_path: Path):
    image = _frame(tmp_path / "im.png", 64, 48)
    ma = np.zeros((48, 64), bool)
    ma[20, 30] = True
    rec = LesionRecord("x", "x", image, {"ma": _save(tmp_path / "ma.png", ma.astype(np.uint8) * 255)}, ("ma",))
    im = load_lesion_image(rec, ("ma",), size=128)
    assert im.masks.shape == (1, 96, 128)
    assert np.argwhere(im.masks[0]).tolist() == [[40, 60], [40, 61], [41, 60], [41, 61]]


def test_synthetic_records_carry_make_fundus_masks(tmp_path):
    (rec,) = synthetic_lesion_records(tmp_path, [3], 128, grade=3)
    f = make_fundus(3, 128, 128, grade=3)
    im = load_lesion_image(rec, C.LESION_KINDS)
    assert np.array_equal(im.image, f.image) and np.array_equal(im.fov, f.fov_mask)
    for k, kind in enumerate(C.LESION_KINDS):
        assert np.array_equal(im.masks[k], f.lesion_masks[kind])
    assert im.present.all() and im.masks.any()
    # downscaled: no lesion component is lost (every kind with pixels keeps pixels)
    small = load_lesion_image(rec, C.LESION_KINDS, size=64)
    for k in range(len(C.LESION_KINDS)):
        assert small.masks[k].any() == im.masks[k].any()


def test_black_frame_without_fov_is_an_error(tmp_path: Path):
    image = _save(tmp_path / "black.png", np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="no field of view found"):
        load_lesion_image(LesionRecord("x", "x", image, {}, ("ma",)), ("ma",))


def test_kinds_and_size_are_checked(tmp_path):
    rec = synthetic_lesion_records(tmp_path, [0], 64)[0]
    with pytest.raises(ValueError, match="unknown lesion kind 'cws'"):
        load_lesion_image(rec, ("ma", "cws"))
    with pytest.raises(ValueError, match="repeated kind"):
        load_lesion_image(rec, ("ma", "ma"))
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_lesion_image(rec, ("ma",), size=0)


# --- records -------------------------------------------------------------------------------------


def _row(dataset: str, native: str, **masks: str | None) -> dict:
    row = {c: None for c in C.CATALOG_COLUMNS}
    row.update({C.IMAGE_ID: f"{dataset}/{native}", C.PATIENT_ID: f"{dataset}/{native}", C.DATASET: dataset,
                C.PATH: f"/d/{native}.png"})
    row.update({C.lesion_mask_column(k): v for k, v in masks.items()})
    return row


def test_records_from_catalog_annotation_rules():
    rows = [
        _row("idrid", "grading/train/IDRiD_001"),  # no lesion masks: skipped
        _row("idrid", "segmentation/train/IDRiD_01", ma="/m/1_MA.tif", se="/m/1_SE.tif"),
        _row("idrid", "segmentation/train/IDRiD_02", ma="/m/2_MA.tif"),  # no SE file: empty, annotated
        _row("fgadr", "0001_1", ma="/f/ma/1.png", nv="/f/nv/1.png"),
        _row("fgadr", "0002_1", ma="/f/ma/2.png"),  # irma column null everywhere: folder missing -> unknown
        _row("other", "x", he="/o/he.png"),  # unknown dataset: only kinds with a file
    ]
    table = pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA)
    recs = lesion_records_from_catalog(table, ("ma", "he", "se", "irma", "nv"))
    got = {r.image_id: r.annotated for r in recs}
    assert got == {
        # he: IDRiD annotates it, but no row here has a file -> treated as missing (whole-column rule)
        "idrid/segmentation/train/IDRiD_01": ("ma", "se"),
        "idrid/segmentation/train/IDRiD_02": ("ma", "se"),
        "fgadr/0001_1": ("ma", "nv"),
        "fgadr/0002_1": ("ma", "nv"),
        "other/x": ("he",),
    }
    r = recs[1]
    assert r.mask_paths == {"ma": "/m/2_MA.tif", "he": None, "se": None, "irma": None, "nv": None}
    assert r.path == "/d/segmentation/train/IDRiD_02.png" and r.fov_mask_path is None
    # explicit per-dataset annotation overrides the defaults; rows with none of the kinds are skipped
    only_nv = lesion_records_from_catalog(rows, ("nv",), annotated={"fgadr": ("nv",), "idrid": ()})
    assert [r.image_id for r in only_nv] == ["fgadr/0001_1", "fgadr/0002_1"]


def test_split_by_patient_and_hash_accept_lesion_records(tmp_path: Path):
    recs = synthetic_lesion_records(tmp_path / "set", range(8), 64)
    train, val = split_by_patient(recs, val_fraction=0.25, seed=1)
    assert len(val) == 2 and not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert lesion_data_hash(recs) == lesion_data_hash(recs[::-1]) != lesion_data_hash(recs[:7])
    p = _save(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    a = LesionRecord("a", "a", p, {"ma": p}, ("ma",))
    assert lesion_data_hash([a]) != lesion_data_hash([LesionRecord("a", "a", p, {"ma": None}, ("ma",))])


# --- patches -------------------------------------------------------------------------------------


def _sparse_image(h: int = 200, w: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """FOV = left half; one 1-px MA and a 30x30 HE on the right, further than a patch from the FOV, so a
    FOV-centred patch never contains a lesion and the lesion rate is exactly the lesion draws."""
    masks = np.zeros((3, h, w), bool)
    masks[0, 100, 280] = True  # ma
    masks[1, 20:50, 250:280] = True  # he, 900 px
    fov = np.zeros((h, w), bool)
    fov[:, :120] = True
    return masks, fov


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_patch_sampler_hits_lesions_at_the_requested_rate(fraction: float):
    masks, fov = _sparse_image()
    n, p = 3000, 32
    o = sample_lesion_patch_origins(masks, fov, n, p, np.random.default_rng(0), lesion_fraction=fraction)
    assert (o >= 0).all() and (o[:, 0] <= 200 - p).all() and (o[:, 1] <= 300 - p).all()
    hit = np.array([masks[:, y:y + p, x:x + p].any() for y, x in o])
    assert abs(hit.mean() - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / n) + 1e-9
    # lesion patches are split evenly between the kinds with pixels, however small: the 1-px MA gets ~half
    if fraction:
        ma = np.array([masks[0, y:y + p, x:x + p].any() for y, x in o])
        assert abs(ma[hit].mean() - 0.5) < 0.05
        # the lesion pixel is not always at the patch centre (placed at a uniform offset)
        ys = np.array([np.argwhere(masks[0, y:y + p, x:x + p])[0, 0] for (y, x), m in zip(o, ma) if m])
        assert ys.min() < p // 4 and ys.max() > 3 * p // 4
    # without lesions every patch is FOV-centred
    o0 = sample_lesion_patch_origins(np.zeros_like(masks), fov, 200, p, np.random.default_rng(1),
                                     lesion_fraction=fraction)
    assert (o0[:, 1] <= 120 - p // 2).all()


def test_augmentation_moves_image_and_every_mask_channel_together():
    p = 24
    marks = [(3, 5), (10, 17), (20, 2)]  # one marker pixel per mask channel, at different places
    masks = np.zeros((3, p, p), bool)
    img = np.full((p, p, 3), 0.1, np.float32)
    for k, (y, x) in enumerate(marks):
        masks[k, y, x] = True
        img[y, x] = 0.95
    fov = np.zeros((p, p), bool)
    fov[:, :6] = True
    dihedral = [lambda a, k=k, f=f: (np.rot90(a, k, axes=(-2, -1))[..., ::-1] if f else np.rot90(a, k, axes=(-2, -1)))
                for k in range(4) for f in (False, True)]
    used = set()
    for seed in range(60):
        a, m, f = augment_lesion_patch(img, masks, fov, np.random.default_rng(seed))
        assert a.dtype == np.float32 and a.shape == img.shape and 0 <= a.min() and a.max() <= 1
        assert m.dtype == bool and m.shape == masks.shape and f.shape == fov.shape
        # the one geometric transform that moved channel 0 also moved channels 1, 2 and the FOV
        matches = [i for i, t in enumerate(dihedral) if np.array_equal(t(masks), m) and np.array_equal(t(fov), f)]
        assert len(matches) == 1
        used.add(matches[0])
        grey = a.mean(axis=2)
        assert grey[m.any(axis=0)].min() > grey[~m.any(axis=0)].max()  # image markers sit on the mask pixels
    assert used == set(range(8))


def test_lesion_patch_batches_shapes_values_and_present():
    h, w = 40, 50  # smaller than the patch: padded outside the FOV
    masks = np.zeros((2, h, w), bool)
    masks[0, 10, 10] = True
    im = LesionImage("a", ("ma", "se"), np.full((h, w, 3), 128, np.uint8), masks, np.ones((h, w), bool),
                     np.array([True, False]))
    batches = list(lesion_patch_batches([im, im], patch=64, patches_per_image=5, batch_size=4, mean=(0.5,) * 3,
                                        std=(0.25,) * 3, rng=np.random.default_rng(0), augment_patches=False))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    b = batches[0]
    assert tuple(b["image"].shape[1:]) == (3, 64, 64) and tuple(b["masks"].shape[1:]) == (2, 64, 64)
    assert tuple(b["fov"].shape[1:]) == (1, 64, 64) and b["present"].tolist() == [[1.0, 0.0]] * 4
    inside = b["fov"].numpy()[:, 0] > 0
    assert np.allclose(b["image"].numpy()[:, 0][inside], (128 / 255 - 0.5) / 0.25, atol=1e-5)
    assert b["masks"].numpy()[:, 0].sum() == 4 and b["masks"].numpy()[:, 1].sum() == 0  # the MA in every patch
    n = sum(x["image"].shape[0] for x in lesion_patch_batches([im] * 3, patch=32, patches_per_image=1, batch_size=4,
                                                               mean=(0,) * 3, std=(1,) * 3,
                                                               rng=np.random.default_rng(0), num_patches=10))
    assert n == 10
    other = LesionImage("b", ("ma",), im.image, masks[:1], im.fov, np.array([True]))
    with pytest.raises(ValueError, match="has kinds"):
        next(lesion_patch_batches([im, other], patch=32, patches_per_image=1, batch_size=1, mean=(0,) * 3,
                                  std=(1,) * 3, rng=np.random.default_rng(0)))


def test_synthetic_end_to_end_batches_contain_lesions(tmp_path):
    records = synthetic_lesion_records(tmp_path, [5, 6], 256, grade=3)
    images = [load_lesion_image(r, ("ma", "he", "ex"), size=128) for r in records]
    assert all(im.masks.any(axis=(1, 2)).all() for im in images)
    batches = list(lesion_patch_batches(images, patch=32, patches_per_image=40, batch_size=16, mean=(0.5,) * 3,
                                        std=(0.25,) * 3, rng=np.random.default_rng(0), lesion_fraction=0.8))
    masks = np.concatenate([b["masks"].numpy() for b in batches])
    assert masks.shape == (80, 3, 32, 32)
    assert masks.any(axis=(1, 2, 3)).mean() >= 0.75  # >= the requested 0.8 minus sampling noise
    assert masks[:, 0].any(axis=(1, 2)).mean() > 0.2  # microaneurysms: about a third of the lesion draws
