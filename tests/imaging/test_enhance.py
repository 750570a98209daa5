"""enhance.py: CLAHE, Graham normalisation, Canny edges, vessel top-hat, with known answers and properties."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.morphology import white_tophat

from dr_ray.imaging import canny_edges, clahe, graham_normalise, vessel_tophat


def _low_contrast(h: int = 256, w: int = 256, seed: int = 0) -> np.ndarray:
    """Brownish image whose texture spans only ~16 grey levels."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)
    tex = tex / np.abs(tex).max()
    img = np.stack([150 + 8 * tex, 90 + 8 * tex, 50 + 4 * tex], -1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _tile_std(channel: np.ndarray, tile: int = 32) -> np.ndarray:
    h, w = channel.shape
    t = channel[: h // tile * tile, : w // tile * tile].astype(np.float64)
    return t.reshape(h // tile, tile, w // tile, tile).std(axis=(1, 3))


# --- CLAHE -------------------------------------------------------------------------------------------------

def test_clahe_raises_local_contrast_keeps_shape_dtype_and_hue():
    img = _low_contrast()
    out = clahe(img, clip_limit=2.0, tile_grid=8, channel="lab_l")
    assert out.shape == img.shape and out.dtype == np.uint8
    l_in = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    l_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)
    ratio = _tile_std(l_out[..., 0]).mean() / _tile_std(l_in[..., 0]).mean()
    assert ratio > 1.5
    # chroma (a*, b*) is kept: only lightness is equalised
    assert np.abs(l_out[..., 1:].astype(int) - l_in[..., 1:]).mean() < 3


def test_clahe_green_changes_only_green():
    img = _low_contrast(seed=1)
    out = clahe(img, channel="green")
    np.testing.assert_array_equal(out[..., 0], img[..., 0])
    np.testing.assert_array_equal(out[..., 2], img[..., 2])
    assert _tile_std(out[..., 1]).mean() > 1.5 * _tile_std(img[..., 1]).mean()


def test_clahe_higher_clip_limit_gives_more_contrast():
    img = _low_contrast(seed=2)
    s = [_tile_std(clahe(img, clip_limit=c)[..., 1]).mean() for c in (1.0, 2.0, 4.0)]
    assert s[0] < s[1] < s[2]


@pytest.mark.parametrize(("shape", "tiles", "clip"), [((64, 64), 64, 40.0), ((20, 300), 16, 40.0),
                                                      ((512, 512), 64, 1000.0), ((3, 3), 8, 2.0)])
def test_clahe_extreme_settings_are_sane(shape, tiles, clip):
    img = _low_contrast(*shape) if min(shape) > 8 else np.full((*shape, 3), 100, np.uint8)
    out = clahe(img, clip_limit=clip, tile_grid=tiles)
    assert out.shape == img.shape and out.dtype == np.uint8
    if min(shape) > 8:
        assert out.std() > img.std()  # more contrast, not garbage/zeros


def test_clahe_of_a_constant_image_stays_flat():
    img = np.full((128, 128, 3), (120, 80, 40), np.uint8)
    out = clahe(img)
    assert (out.reshape(-1, 3) == out[0, 0]).all()


def test_clahe_bad_arguments():
    img = _low_contrast(32, 32)
    with pytest.raises(ValueError, match="clip_limit"):
        clahe(img, clip_limit=0)
    with pytest.raises(ValueError, match="tile_grid"):
        clahe(img, tile_grid=0)
    with pytest.raises(ValueError, match="channel"):
        clahe(img, channel="blue")
    with pytest.raises(ValueError, match="image"):
        clahe(img[..., 0])


# --- Graham ------------------------------------------------------------------------------------------------

def _disc_mask(size: int, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:size, :size]
    c = (size - 1) / 2
    return (xx - c) ** 2 + (yy - c) ** 2 <= r * r


def test_graham_of_a_constant_image_is_128_inside_the_mask_and_0_outside():
    mask = _disc_mask(128, 60)
    img = np.zeros((128, 128, 3), np.uint8)
    img[mask] = (180, 90, 40)  # constant disc on a black surround, as after the FOV crop
    out = graham_normalise(img, sigma_px=8.0, mask=mask)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (out[mask] == 128).all()  # also at the rim: the black surround is not averaged in
    assert (out[~mask] == 0).all()


def test_graham_without_mask_follows_the_formula():
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert (graham_normalise(flat, sigma_px=5.0) == 128).all()
    step = np.zeros((64, 64, 3), np.uint8)
    step[:, 32:] = 100
    out = graham_normalise(step, sigma_px=3.0).astype(int)
    blur = cv2.GaussianBlur(step, (0, 0), 3.0).astype(int)
    expect = np.clip(4 * step.astype(int) - 4 * blur + 128, 0, 255)
    assert np.abs(out - expect).max() <= 1
    assert out[32, 33, 0] > 128 > out[32, 30, 0]  # bright side of the edge up, dark side down


def test_graham_bad_arguments():
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="sigma_px"):
        graham_normalise(img, sigma_px=0)
    with pytest.raises(ValueError, match="mask"):
        graham_normalise(img, sigma_px=2, mask=np.ones((8, 8), bool))


# --- Canny -------------------------------------------------------------------------------------------------

def test_canny_finds_the_edges_of_a_rectangle_at_the_right_place():
    img = np.zeros((120, 160, 3), np.uint8)
    img[..., 1] = 60
    img[30:90, 40:120, 1] = 200  # rectangle in green, rows 30..89, cols 40..119
    e = canny_edges(img, sigma=1.0)
    assert e.dtype == np.uint8 and e.shape == (120, 160) and set(np.unique(e)) <= {0, 255}
    ys, xs = np.nonzero(e)
    # every edge pixel lies within 1 px of the rectangle's boundary
    d_row = np.minimum(np.abs(ys - 29.5), np.abs(ys - 89.5))
    d_col = np.minimum(np.abs(xs - 39.5), np.abs(xs - 119.5))
    on_h = (d_row <= 1.0) & (xs >= 38) & (xs <= 121)
    on_v = (d_col <= 1.0) & (ys >= 28) & (ys <= 91)
    assert (on_h | on_v).all()
    # and every side is found along its length (corners excepted)
    assert e[28:32, 60:100].any(axis=0).all() and e[88:92, 60:100].any(axis=0).all()
    assert e[50:70, 38:42].any(axis=1).all() and e[50:70, 118:122].any(axis=1).all()


def test_canny_ignores_flat_and_uses_given_thresholds():
    flat = np.full((64, 64, 3), 100, np.uint8)
    assert not canny_edges(flat).any()
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 1] = 100
    img[:, 32:, 1] = 110  # a weak step: Sobel L2 magnitude ~ 40
    assert canny_edges(img, low=10, high=20).any()
    assert not canny_edges(img, low=200, high=400).any()
    with pytest.raises(ValueError, match="low"):
        canny_edges(img, low=50, high=10)
    with pytest.raises(ValueError, match="sigma"):
        canny_edges(img, sigma=0)


# --- top-hat ------------------------------------------------------------------------------------------------

def test_tophat_responds_to_a_thin_dark_line_not_to_flat_background():
    img = np.full((100, 100, 3), 150, np.uint8)
    img[:, 48:51, 1] = 90  # a dark vertical line, 3 px wide, 60 levels deep
    t = vessel_tophat(img, radius=7)
    assert t.dtype == np.uint8 and t.shape == (100, 100)
    assert (t[:, 48:51] == 60).all()
    assert (t[:, :40] == 0).all() and (t[:, 60:] == 0).all()


def test_tophat_ignores_a_dark_blob_wider_than_the_disk():
    img = np.full((160, 160, 3), 150, np.uint8)
    cv2.circle(img, (80, 80), 30, (150, 70, 150), -1)  # dark in green, radius 30 > disk radius 7
    t = vessel_tophat(img, radius=7)
    assert t[60:100, 60:100].max() <= 2
    # at the rim only the single-pixel steps of the rasterised circle respond (10 of ~190 rim pixels)
    assert np.count_nonzero(t > 10) <= 12 and t.mean() < 0.1
    # the same depth in a blob narrower than the disk is picked up
    small = np.full((160, 160, 3), 150, np.uint8)
    cv2.circle(small, (80, 80), 4, (150, 70, 150), -1)
    assert vessel_tophat(small, radius=7)[80, 80] == 80


def test_tophat_equals_white_tophat_of_the_inverted_green():
    """eq. (4): T = I' - (I' o B) on I' = 255 - green, computed with scikit-image (another implementation)."""
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), np.uint8), (0, 0), 1.5)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)).astype(bool)
    ref = white_tophat(255 - img[..., 1], footprint=disk)
    got = vessel_tophat(img, radius=5)
    inner = (slice(6, -6), slice(6, -6))  # away from the border, where the two libraries pad differently
    np.testing.assert_array_equal(got[inner], ref[inner])


def test_tophat_bad_radius():
    with pytest.raises(ValueError, match="radius"):
        vessel_tophat(np.zeros((8, 8, 3), np.uint8), radius=0)
