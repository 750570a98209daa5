"""Lesion maps: quantisation round trip, reduction that keeps tiny lesions, stacked PNG, hand-counted statistics."""

from __future__ import annotations

import numpy as np
import pytest

from dr_ray.imaging import decode_lesion_maps, encode_lesion_maps, lesion_statistics, quantise, reduce_maps


def test_quantised_maps_decode_within_half_a_level_of_the_probabilities():
    rng = np.random.default_rng(0)
    prob = rng.random((4, 64, 64), dtype=np.float32)
    prob[0, :5, :5] = 0.0
    prob[1, :5, :5] = 1.0
    back = decode_lesion_maps(encode_lesion_maps(quantise(prob)), 4).astype(np.float32) / 255.0
    assert back.shape == (4, 64, 64)
    assert np.abs(back - prob).max() <= 0.5 / 255 + 1e-7
    assert back[0, :5, :5].max() == 0.0 and back[1, :5, :5].min() == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantise(np.array([1.5]))
    with pytest.raises(ValueError, match="does not hold 3 stacked"):
        decode_lesion_maps(encode_lesion_maps(quantise(prob)), 3)


def test_max_reduction_keeps_a_one_pixel_lesion_mean_dilutes_it():
    maps = np.zeros((2, 512, 512), np.uint8)
    maps[0, 301, 77] = 255  # a 1-px microaneurysm
    maps[1, 100:140, 200:260] = 128  # a blot
    for size in (128, 100):  # integer and non-integer factors
        mx = reduce_maps(maps, size, how="max")
        assert mx.shape == (2, size, size)
        assert mx[0].max() == 255 and np.count_nonzero(mx[0]) <= 4
        r, c = np.unravel_index(np.argmax(mx[0]), mx[0].shape)
        assert abs(r - 301 * size / 512) <= 1.5 and abs(c - 77 * size / 512) <= 1.5
        assert mx[1].max() == 128
    mean = reduce_maps(maps, 128, how="mean")
    assert 0 < mean[0].max() <= 255 // 16 + 1  # a 4x4 footprint averages the dot away
    assert reduce_maps(maps, 512).tobytes() == maps.tobytes()


def test_statistics_match_hand_counted_components():
    m = np.zeros((3, 40, 40), np.uint8)
    m[0, 2:5, 2:5] = 200  # 9 px
    m[0, 10, 10] = 200  # 1 px
    m[0, 20:22, 30:34] = 255  # 8 px
    m[0, 30, 30] = 100  # below the 0.5 threshold (100 < 128)
    m[0, 12, 11] = 200  # 1 px, two rows below (10, 10): not touching it
    m[1, 5:7, 5:7] = 255  # 4 px
    m[1, 7, 7] = 255  # touches (6, 6) diagonally: 8-connected, same component
    fov = np.ones((40, 40), bool)
    area, count = lesion_statistics(m, threshold=0.5, fov=fov)
    assert count.tolist() == [4, 1, 0]
    assert area.tolist() == pytest.approx([(9 + 1 + 8 + 1) / 1600, 5 / 1600, 0.0])
    area, count = lesion_statistics(m, threshold=0.5, fov=fov, min_component_px=2)
    assert count.tolist() == [2, 1, 0]  # the two single pixels no longer count; their area still does
    assert area[0] == pytest.approx(19 / 1600)
    fov[:, :10] = False  # hides the 9-px blob (columns 2-4); column 10 stays inside
    area, count = lesion_statistics(m, threshold=0.5, fov=fov)
    assert count[0] == 3 and area[0] == pytest.approx((1 + 8 + 1) / (40 * 30))
    area, _ = lesion_statistics(m, fov=np.zeros((40, 40), bool))
    assert np.isnan(area).all()
    with pytest.raises(ValueError, match="fov shape"):
        lesion_statistics(m, fov=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"\(K, H, W\) uint8"):
        lesion_statistics(m.astype(np.float32))
