"""Patch sampling, augmentation alignment, splits and the DRIVE reader path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dr_ray.training import (
    VesselRecord,
    augment,
    load_vessel_images,
    patch_batches,
    sample_patch_origins,
    split_by_patient,
    train_data_hash,
)
from dr_ray.training.data import VesselImage


def _synthetic(root, seeds, size):
    from dr_ray.pipelines.train_vessels import synthetic_vessel_records

    return synthetic_vessel_records(str(root), seeds, size)


def test_patch_origins_inside_bounds_and_fov_biased():
    rng = np.random.default_rng(0)
    h, w, p = 200, 300, 64
    fov = np.zeros((h, w), bool)
    fov[150:, 250:] = True  # FOV only in the bottom-right corner: 50 x 50 px
    o = sample_patch_origins(fov, 500, p, rng, fov_bias=1.0)
    assert (o[:, 0] >= 0).all() and (o[:, 0] <= h - p).all() and (o[:, 1] >= 0).all() and (o[:, 1] <= w - p).all()
    # every patch (clipped to the frame) still covers FOV pixels
    assert all(fov[y:y + p, x:x + p].any() for y, x in o)
    unbiased = sample_patch_origins(fov, 500, p, np.random.default_rng(0), fov_bias=0.0)
    covers = np.mean([fov[y:y + p, x:x + p].any() for y, x in unbiased])
    assert covers < 0.6  # uniform placement mostly misses the corner


def test_patch_origins_reject_small_frames():
    with pytest.raises(ValueError, match="smaller than the patch"):
        sample_patch_origins(np.ones((30, 30), bool), 1, 32, np.random.default_rng(0))


def test_augment_keeps_image_and_mask_aligned():
    # a bright diagonal line drawn in the image, marked in the mask: after any flip/rot90 the mask must
    # still mark exactly the bright pixels
    p = 32
    img = np.full((p, p, 3), 0.2, np.float32)
    mask = np.zeros((p, p), bool)
    for i in range(5, 20):
        img[i, i + 3] = 0.9
        mask[i, i + 3] = True
    fov = np.ones((p, p), bool)
    fov[:, :4] = False
    seen = set()
    for seed in range(40):
        a, m, f = augment(img, mask, fov, np.random.default_rng(seed))
        assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
        grey = a.mean(axis=2)
        assert grey[m].min() > grey[~m].max(), "mask no longer marks the line"
        assert m.sum() == mask.sum() and f.sum() == fov.sum()
        seen.add(m.tobytes())
    assert len(seen) == 8  # all 4 rotations x 2 flips occur


def test_patch_batches_shapes_values_and_count():
    rng = np.random.default_rng(0)
    im = VesselImage("a", np.full((50, 70, 3), 128, np.uint8), np.eye(50, 70, dtype=bool), np.ones((50, 70), bool))
    batches = list(patch_batches([im, im], patch=64, patches_per_image=5, batch_size=4, mean=(0.5,) * 3,
                                 std=(0.25,) * 3, rng=rng, augment_patches=False))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    b = batches[0]
    assert tuple(b["image"].shape[1:]) == (3, 64, 64) and tuple(b["mask"].shape[1:]) == (1, 64, 64)
    # padded region (the frame is 50 x 70, patches 64) is outside the FOV and has no vessels
    assert set(np.unique(b["fov"].numpy())) <= {0.0, 1.0} and b["fov"].min() == 0
    inside = b["fov"].numpy() > 0
    assert np.allclose(b["image"].numpy()[:, :1][inside], (128 / 255 - 0.5) / 0.25, atol=1e-5)


def test_split_holds_out_whole_patients():
    recs = [VesselRecord(f"i{i}", f"p{i // 2}", path=f"/nowhere/{i}.png") for i in range(10)]
    train, val = split_by_patient(recs, val_fraction=0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert (train, val) == split_by_patient(recs, val_fraction=0.2, seed=3)
    with pytest.raises(ValueError, match="at least 2 patients"):
        split_by_patient(recs[:2], val_fraction=0.5, seed=0)


def test_train_data_hash_changes_with_data(tmp_path):
    recs = _synthetic(tmp_path, range(3), 64)
    assert train_data_hash(recs) == train_data_hash(recs[::-1])
    assert train_data_hash(recs) != train_data_hash(recs[:2])


@pytest.mark.shared_data
def test_drive_reader_path_loads_20_images_with_masks(shared_data):
    from dr_ray.config import load_config
    from dr_ray.pipelines.train_vessels import vessel_records

    cfg = load_config(None, ["train_vessels.datasets=[drive]", f"train_vessels.roots=[{shared_data / 'DRIVE'}]"])
    records, skipped = vessel_records(cfg)
    assert len(records) == 20 and not skipped
    images = load_vessel_images(records)
    for im in images:
        assert im.image.shape == (584, 565, 3) and im.image.dtype == np.uint8
        assert im.mask.shape == im.fov.shape == im.image.shape[:2]
        assert im.mask.dtype == bool and im.fov.dtype == bool
        assert 0.05 < im.mask[im.fov].mean() < 0.2  # DRIVE: ~12% vessel pixels inside the FOV
        assert 0.6 < im.fov.mean() < 0.75
        assert not im.mask[~im.fov].any() or im.mask[~im.fov].mean() < 0.01
    half = load_vessel_images(records[:1], scale=0.5)[0]
    assert half.image.shape == (292, 282, 3) and half.mask.shape == (292, 282)


def test_patch_batches_num_patches_gives_equal_counts_for_unequal_shards():
    im = VesselImage("a", np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), bool), np.ones((64, 64), bool))
    for shard in ([im] * 3, [im] * 2):  # two DDP workers with 3 and 2 images
        batches = list(patch_batches(shard, patch=32, patches_per_image=4, batch_size=4, mean=(0,) * 3,
                                     std=(1,) * 3, rng=np.random.default_rng(0), num_patches=10))
        assert sum(b["image"].shape[0] for b in batches) == 10 and len(batches) == 3


def test_vessel_input_green_clahe_uses_green_only_and_raises_contrast():
    from dr_ray.imaging.enhance import clahe
    from dr_ray.imaging.enhance import vessel_input

    rng = np.random.default_rng(0)
    img = np.zeros((128, 160, 3), np.uint8)
    img[..., 0] = rng.integers(0, 256, img.shape[:2])  # red: noise that must not leak into the input
    img[..., 1] = 100 + rng.integers(0, 8, img.shape[:2])  # green: low contrast (100..107)
    img[40:44, :, 1] = 90  # a dark horizontal "vessel"
    img[..., 2] = 30
    assert vessel_input(img, "rgb") is img  # unchanged
    out = vessel_input(img, "green_clahe")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.array_equal(out[..., 1], clahe(img, channel="green")[..., 1])
    other = img.copy()
    other[..., 0], other[..., 2] = 255 - img[..., 0], 200
    assert np.array_equal(vessel_input(other, "green_clahe"), out)  # red and blue are ignored
    # the vessel-to-background step is amplified (clip limit 2 caps the gain: 13.5 -> 18.5 grey levels here)
    step_in = float(img[..., 1][50:].mean()) - float(img[40:44, :, 1].mean())
    step_out = float(out[..., 1][50:].mean()) - float(out[40:44, :, 1].mean())
    assert step_out > 1.25 * step_in > 0
    with pytest.raises(ValueError, match="mode must be one of"):
        vessel_input(img, "clahe")
    with pytest.raises(ValueError, match="expected \\(H, W, 3\\) uint8"):
        vessel_input(img.astype(np.float32), "green_clahe")


def test_load_vessel_image_input_mode_changes_only_the_image(tmp_path):
    (rec,) = _synthetic(tmp_path, [3], 96)
    rgb = load_vessel_images([rec])[0]
    grey = load_vessel_images([rec], input_mode="green_clahe")[0]
    assert np.array_equal(rgb.mask, grey.mask) and np.array_equal(rgb.fov, grey.fov)
    assert (grey.image[..., 0] == grey.image[..., 2]).all() and not np.array_equal(rgb.image, grey.image)
    with pytest.raises(ValueError, match="input_mode must be one of"):
        load_vessel_images([rec], input_mode="lab")


def test_fov_diameter_brings_every_dataset_to_one_vessel_scale(tmp_path):
    """Synthetic frames drawn at two sizes (same tree, known FOV): fov_diameter resizes each so its FOV is that
    wide; a 30-degree camera's FOV is brought to 30/45 of it (equal px per degree of retina)."""
    from dr_ray.training.data import fov_diameter_px, load_vessel_image, vessel_scale_factor

    for size in (192, 320):
        (rec,) = _synthetic(tmp_path / str(size), [3], size)
        raw = load_vessel_image(rec)
        im = load_vessel_image(rec, fov_diameter=120)
        assert abs(fov_diameter_px(im.fov) - 120) <= 2, (size, fov_diameter_px(im.fov))
        assert im.image.shape[0] == round(size * 120 / fov_diameter_px(raw.fov))
        narrow = load_vessel_image(dataclasses.replace(rec, field_degrees=30.0), fov_diameter=120)
        assert abs(fov_diameter_px(narrow.fov) - 80) <= 2
    assert vessel_scale_factor(540.0, 540) == 1.0 and vessel_scale_factor(1080.0, 540, 30.0) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="field of view is empty"):
        fov_diameter_px(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="must be > 0"):
        vessel_scale_factor(0.0, 540)


def test_shared_vessel_datasets_at_one_vessel_scale(shared_data):
    """DRIVE, LES-AV (30 degrees, one 45-degree image) and HRF-AV (3504 px) land at one FOV width per degree, and
    their vessel masks at similar widths: vessel px per skeleton px within a factor 1.6 of DRIVE's."""
    from skimage.morphology import skeletonize

    from dr_ray.config import load_config
    from dr_ray.pipelines.train_vessels import vessel_records
    from dr_ray.training.data import fov_diameter_px

    data = shared_data
    cfg = load_config(None, ["train_vessels.datasets=[drive,les_av,hrf_av]", "train_vessels.fov_diameter=544",
                             f"train_vessels.roots=[{data / 'DRIVE'},{data / 'LES-AV'},{data / 'HRF-AV'}]"])
    records, _ = vessel_records(cfg)
    pick = {r.image_id: r for r in records}
    widths = {}
    for image_id, degrees in (("drive/21_training", 45), ("les_av/111", 30), ("les_av/34", 45),
                              ("hrf_av/01_h", 45)):
        assert pick[image_id].field_degrees == degrees
        im = load_vessel_images([pick[image_id]], fov_diameter=544)[0]
        assert abs(fov_diameter_px(im.fov) - 544 * degrees / 45) <= 6, image_id
        widths[image_id] = im.mask.sum() / skeletonize(im.mask).sum()
    for image_id, w in widths.items():
        assert 1 / 1.6 < w / widths["drive/21_training"] < 1.6, widths


def test_stored_input_trains_on_what_the_preprocess_stage_stores(tmp_path):
    """train_vessels.stored_input: the image is preprocess_image's output for the file, and the manual mask is
    cropped with the same geometry: vessels in the mask are dark in the stored image, and a 4-px shift of the
    mask loses most of that contrast (misalignment would show as no contrast)."""
    import cv2

    from dr_ray.config import load_config
    from dr_ray.imaging.preprocess import preprocess_image
    from dr_ray.testing import make_fundus
    from dr_ray.training.data import as_stored

    pre = load_config(None, ["preprocess.size=256"]).preprocess
    f = make_fundus(5, 640, 480, lesions=False)
    data = cv2.imencode(".png", f.image[..., ::-1])[1].tobytes()
    image, mask, fov = as_stored(f.image, f.vessel_mask, f.fov_mask, data, pre)
    assert np.array_equal(image, preprocess_image(data, pre).image)
    assert image.shape == (256, 256, 3) and mask.shape == fov.shape == (256, 256)
    assert not mask[~fov].any() and 0.6 < fov.mean() < 0.85
    g = image[..., 1].astype(float)

    def contrast(m):
        return g[fov & ~m].mean() - g[fov & m].mean()

    assert contrast(mask) > 15
    assert contrast(np.roll(mask, 4, axis=1) & fov) < 0.5 * contrast(mask)
    im = load_vessel_images(_synthetic(tmp_path, [5], 256), preprocess=pre, fov_diameter=128)[0]
    assert im.image.shape[:2] == (128, 128)  # the stored circle (256 px) brought to a 128-px FOV


def test_paired_transform_is_the_8_square_symmetries_shared_by_image_and_maps():
    from dr_ray.training.transforms import PairedTransform, jitter_intensity

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    outs = {PairedTransform(k, f)(a).tobytes() for k in range(4) for f in (False, True)}
    assert len(outs) == 8  # all distinct
    rng = np.random.default_rng(0)
    drawn = {PairedTransform.draw(rng) for _ in range(200)}
    assert len(drawn) == 8
    img = np.random.default_rng(1).random((6, 5, 3)).astype(np.float32)
    maps = img[..., :2] > 0.5
    t = PairedTransform(3, True)
    assert np.array_equal(t(img)[..., :2] > 0.5, t(maps))  # maps move with the image
    j = jitter_intensity(img, np.random.default_rng(2))
    assert j.shape == img.shape and j.dtype == np.float32 and 0 <= j.min() and j.max() <= 1
