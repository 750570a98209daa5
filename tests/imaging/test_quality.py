"""quality.py: known answers for brightness/contrast/sharpness and the gradable flag."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from dr_ray.config.schema import QualityConfig
from dr_ray.imaging import QualityMeasures, crop_fov_mask, crop_to_fov, find_fov, is_gradable, measure_quality
from dr_ray.imaging.quality import quality_issues

ALL = np.ones((64, 64), bool)


def test_constant_grey_image():
    q = measure_quality(np.full((64, 64, 3), 51, np.uint8), ALL, fov_fraction=0.5)
    assert q.fov_fraction == 0.5
    assert q.brightness == pytest.approx(0.2, abs=1e-9)
    assert q.contrast == pytest.approx(0.0, abs=1e-9)
    assert q.sharpness == pytest.approx(0.0, abs=1e-12)


def test_brightness_is_bt601_luminance():
    q = measure_quality(np.full((32, 32, 3), (200, 100, 50), np.uint8), np.ones((32, 32), bool), fov_fraction=1.0)
    assert q.brightness == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1 / 255)


def test_contrast_of_half_black_half_white_is_half():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 32:] = 255
    q = measure_quality(img, ALL, fov_fraction=1.0)
    assert q.brightness == pytest.approx(0.5, abs=1e-9)
    assert q.contrast == pytest.approx(0.5, abs=1e-9)


def test_only_fov_pixels_count():
    img = np.zeros((64, 64, 3), np.uint8)
    yy, xx = np.ogrid[:64, :64]
    disc = (xx - 31.5) ** 2 + (yy - 31.5) ** 2 <= 28 ** 2
    img[disc] = 150
    q = measure_quality(img, disc, fov_fraction=0.6)
    assert q.brightness == pytest.approx(150 / 255, abs=1e-9)
    assert q.contrast == pytest.approx(0.0, abs=1e-9)
    assert q.sharpness == pytest.approx(0.0, abs=1e-12)  # the rim step is eroded away


def test_sharpness_known_answer_and_ordering():
    # 1-px checkerboard of 0/1: the 4-neighbour Laplacian is +-4 everywhere -> variance 16
    cb = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(cb[..., None], 3, 2)
    q = measure_quality(img, ALL, fov_fraction=1.0)
    assert q.sharpness == pytest.approx(16.0, rel=1e-6)
    coarse = np.kron((np.indices((8, 8)).sum(0) % 2), np.ones((8, 8))).astype(np.uint8) * 255
    coarse = np.repeat(coarse[..., None], 3, 2)
    blurred = cv2.GaussianBlur(coarse, (0, 0), 2.0)
    s_sharp = measure_quality(coarse, ALL, fov_fraction=1.0).sharpness
    s_blur = measure_quality(blurred, ALL, fov_fraction=1.0).sharpness
    assert s_sharp > 3 * s_blur > 0


def test_log_sharpness_of_a_sinusoid_known_answer():
    """y = 0.5 + A sin(k x): the discrete Laplacian is -(2 - 2 cos k) times the (Gaussian-attenuated) sine, so
    var = A^2 (2 - 2 cos k)^2 exp(-sigma^2 k^2) / 2."""
    k, amp, sigma = 2 * np.pi / 16, 0.4, 1.0
    x = np.arange(128)
    row = np.rint((0.5 + amp * np.sin(k * x)) * 255).astype(np.uint8)
    img = np.repeat(np.tile(row, (128, 1))[..., None], 3, 2)
    expect = amp ** 2 * (2 - 2 * np.cos(k)) ** 2 * np.exp(-(sigma * k) ** 2) / 2
    q = measure_quality(img, np.ones((128, 128), bool), fov_fraction=1.0, sharpness_sigma=sigma)
    assert q.sharpness == pytest.approx(expect, rel=0.05)
    plain = measure_quality(img, np.ones((128, 128), bool), fov_fraction=1.0).sharpness
    assert plain == pytest.approx(amp ** 2 * (2 - 2 * np.cos(k)) ** 2 / 2, rel=0.05)


@pytest.mark.shared_data
def test_blurred_real_image_is_less_sharp(eyepacs_refs):
    ref = eyepacs_refs[2]
    g = find_fov(ref.image)
    crop = crop_to_fov(ref.image, g, size=512)
    fov = crop_fov_mask(g, ref.image.shape[:2], size=512)
    q = measure_quality(crop, fov, fov_fraction=g.fraction)
    qb = measure_quality(cv2.GaussianBlur(crop, (0, 0), 1.5), fov, fov_fraction=g.fraction)
    assert qb.sharpness < 0.5 * q.sharpness
    s0 = measure_quality(crop, fov, fov_fraction=g.fraction, sharpness_sigma=1.0).sharpness
    s1 = measure_quality(cv2.GaussianBlur(crop, (0, 0), 1.5), fov, fov_fraction=g.fraction,
                         sharpness_sigma=1.0).sharpness
    assert s1 < 0.5 * s0
    assert qb.brightness == pytest.approx(q.brightness, abs=0.01)
    assert 0.1 < q.brightness < 0.9 and q.contrast > 0.03 and q.sharpness > 1e-5  # a gradable photo


def test_gradable_flips_at_each_threshold():
    cfg = QualityConfig()
    good = QualityMeasures(fov_fraction=0.5, brightness=0.4, contrast=0.1, sharpness=1e-3)
    assert is_gradable(good, cfg) and quality_issues(good, cfg) == []
    eps = 1e-6
    at_limits = QualityMeasures(cfg.min_fov_fraction, cfg.min_brightness, cfg.min_contrast, cfg.min_sharpness)
    assert is_gradable(at_limits, cfg)  # bounds are inclusive
    for field, bad in [("fov_fraction", cfg.min_fov_fraction - eps), ("brightness", cfg.min_brightness - eps),
                       ("brightness", cfg.max_brightness + eps), ("contrast", cfg.min_contrast - eps),
                       ("sharpness", cfg.min_sharpness * 0.999)]:
        q = dataclasses.replace(good, **{field: bad})
        assert not is_gradable(q, cfg), field
        assert len(quality_issues(q, cfg)) == 1
    strict = QualityConfig(min_contrast=0.2)
    assert not is_gradable(good, strict)


def test_bad_arguments():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="fov: the mask is empty"):
        measure_quality(img, np.zeros((8, 8), bool), fov_fraction=0.5)
    with pytest.raises(ValueError, match="fov: expected"):
        measure_quality(img, np.ones((4, 4), bool), fov_fraction=0.5)
    with pytest.raises(ValueError, match="fov_fraction"):
        measure_quality(img, np.ones((8, 8), bool), fov_fraction=1.5)
    with pytest.raises(ValueError, match="image"):
        measure_quality(img[..., 0], np.ones((8, 8), bool), fov_fraction=0.5)
    with pytest.raises(ValueError, match="sharpness_sigma"):
        measure_quality(img, np.ones((8, 8), bool), fov_fraction=0.5, sharpness_sigma=-1)
