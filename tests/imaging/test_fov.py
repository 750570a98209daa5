"""fov.py: FOV mask, circle fit and square crop on synthetic frames with known geometry and on real EyePACS."""

from __future__ import annotations

import numpy as np
import pytest

from dr_ray.imaging import (FovGeometry, ImageDecodeError, circle_mask, crop_fov_mask, crop_to_fov, find_fov,
                            fov_mask)

# (width, height, cx, cy, radius, notch, halo): centred, EyePACS-like cut top/bottom, off-centre, square,
# portrait, very wide with cut, the synthetic-config size.
CASES = [
    (1200, 800, None, None, 380, True, False),
    (1500, 1000, 760.0, 500.0, 560, True, True),  # extends 60 px beyond top and bottom
    (1000, 700, 520.0, 330.0, 300, True, False),
    (800, 800, None, None, 390, True, False),
    (700, 1000, None, None, 330, False, False),
    (2000, 900, 990.0, 455.0, 520, True, True),  # cut by 65 px at top and bottom
    (1536, 1024, 770.3, 512.7, 600, True, True),
    (300, 200, None, None, 90, True, False),  # smaller than the work size: no downscale
]


@pytest.fixture(scope="module", params=range(len(CASES)), ids=[f"{c[0]}x{c[1]}r{c[4]}" for c in CASES])
def frame(request, make_frame):
    w, h, cx, cy, r, notch, halo = CASES[request.param]
    return make_frame(w, h, cx=cx, cy=cy, radius=r, notch=notch, halo=halo, seed=request.param)


def test_find_fov_recovers_known_geometry(frame):
    g = find_fov(frame.image)
    assert np.hypot(g.cx - frame.cx, g.cy - frame.cy) < 0.005 * frame.radius
    assert abs(g.radius - frame.radius) < 0.01 * frame.radius
    assert abs(g.fraction - frame.mask.mean()) < 0.01


def test_crop_keeps_the_fov_and_little_else(frame, fov_crop_metrics):
    g = find_fov(frame.image)
    kept, spill = fov_crop_metrics(frame.mask, g.cx, g.cy, g.radius)
    assert kept >= 0.95 and spill < 0.05, (kept, spill)


def test_crop_output_is_the_disc_filling_the_square(frame):
    g = find_fov(frame.image)
    out = crop_to_fov(frame.image, g, size=256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    outside = circle_mask(256) == 0
    assert not out[outside].any()  # masked outside the circle
    # middle row: the disc spans the whole width (the circle's left and right ends are never cut here)
    lit = np.nonzero(out[128, :, 0] > 20)[0]
    assert lit[0] <= 2 and lit[-1] >= 253
    # the crop's own FOV mask agrees with the true mask carried through the same crop
    truth = crop_to_fov(np.repeat(frame.mask[..., None], 3, 2).astype(np.uint8) * 255, g, size=256,
                        mask_outside=False)[..., 0] > 127
    est = crop_fov_mask(g, frame.image.shape[:2], size=256)
    iou = np.count_nonzero(truth & est) / np.count_nonzero(truth | est)
    assert iou > 0.97


def test_cut_frame_is_padded_black_and_excluded_from_the_crop_mask(make_frame):
    f = make_frame(1500, 1000, cx=760.0, cy=500.0, radius=560, seed=3)  # 60 px beyond top and bottom
    g = find_fov(f.image)
    out = crop_to_fov(f.image, g, size=560 * 2)  # 1 output px per source px
    pad = round(g.radius - g.cy)  # ~60 rows of padding at the top
    assert 55 <= pad <= 65
    assert not out[: pad - 2].any() and out[pad + 2:pad + 10, 560, 0].min() > 20
    m = crop_fov_mask(g, f.image.shape[:2], size=1120)
    assert not m[: pad - 1].any() and m[pad + 1:pad + 10, 560].all()


def test_fov_mask_matches_truth_fills_holes_and_drops_specks(make_frame):
    f = make_frame(900, 600, radius=270, seed=4)
    img = f.image.copy()
    img[280:320, 430:470] = 0  # a black blot inside the disc: a hole to fill
    img[20, 20] = img[580, 880] = 255  # hot pixels in the surround
    m = fov_mask(img)
    assert m.dtype == bool and m.shape == (600, 900)
    assert m[280:320, 430:470].all() and not m[20, 20] and not m[580, 880]
    iou = np.count_nonzero(m & f.mask) / np.count_nonzero(m | f.mask)
    assert iou > 0.98
    assert not fov_mask(np.zeros((50, 60, 3), np.uint8)).any()


def test_notch_is_rejected_from_the_fit(make_frame):
    f = make_frame(1200, 800, radius=380, notch=True, seed=5)
    g_notch = find_fov(f.image)
    g_plain = find_fov(make_frame(1200, 800, radius=380, notch=False, seed=5).image)
    assert np.hypot(g_notch.cx - g_plain.cx, g_notch.cy - g_plain.cy) < 0.5
    assert abs(g_notch.radius - g_plain.radius) < 0.5
    out = crop_to_fov(f.image, g_notch, size=400, margin=0.1, mask_outside=False)
    masked = crop_to_fov(f.image, g_notch, size=400, margin=0.1)
    # the notch centre (-45 degrees, 1.02 r) in output px; the crop's half side is 1.1 r
    k = 200 / (1.1 * g_notch.radius)
    nx = round(199.5 + 1.02 * g_notch.radius * k * np.cos(-np.pi / 4))
    ny = round(199.5 + 1.02 * g_notch.radius * k * np.sin(-np.pi / 4))
    assert out[ny, nx, 0] > 20 and masked[ny, nx].sum() == 0


def test_margin_shrinks_the_disc_in_the_output(make_frame):
    f = make_frame(1000, 800, radius=350, notch=False, seed=6)
    g = find_fov(f.image)
    out = crop_to_fov(f.image, g, size=300, margin=0.25)
    lit = np.nonzero(out[150, :, 0] > 20)[0]
    diameter = lit[-1] - lit[0] + 1
    assert abs(diameter - 300 / 1.25) <= 3


def test_disc_filling_the_frame_falls_back_to_the_frame_box(make_frame):
    img = make_frame(600, 600, radius=600, notch=False, seed=7).image  # no black surround at all
    g = find_fov(img)
    assert abs(g.cx - 299.5) < 1 and abs(g.cy - 299.5) < 1 and abs(g.radius - 300) < 2
    assert crop_to_fov(img, g, size=128).shape == (128, 128, 3)


def test_small_source_is_upscaled(make_frame):
    f = make_frame(240, 160, radius=70, seed=8)
    g = find_fov(f.image)
    out = crop_to_fov(f.image, g, size=512)
    assert out.shape == (512, 512, 3) and out[256, 256, 0] > 100


def test_black_noise_and_tiny_frames_raise(make_frame):
    with pytest.raises(ImageDecodeError, match=r"no field of view found: the frame is \(almost\) all black"):
        find_fov(np.zeros((400, 600, 3), np.uint8))
    noise = np.random.default_rng(0).integers(0, 5, (400, 600, 3), np.uint8)  # JPEG noise in a black frame
    with pytest.raises(ImageDecodeError, match="no field of view found"):
        find_fov(noise)
    speck = make_frame(600, 400, radius=12, notch=False, vessels=False, seed=9).image
    with pytest.raises(ImageDecodeError, match=r"^field of view too small: "):
        find_fov(speck)


def test_bad_arguments_name_the_parameter():
    img = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image: expected \(H, W, 3\) uint8"):
        find_fov(img.astype(np.float32))
    with pytest.raises(ValueError, match="image"):
        fov_mask(img[..., 0])
    with pytest.raises(ValueError, match="threshold"):
        find_fov(img, threshold=1.5)
    g = FovGeometry(50, 50, 40, 0.5)
    with pytest.raises(ValueError, match="size"):
        crop_to_fov(img, g, size=1)
    with pytest.raises(ValueError, match="margin"):
        crop_to_fov(img, g, size=64, margin=-0.1)
    with pytest.raises(ValueError, match="geom"):
        crop_to_fov(img, FovGeometry(50, 50, 0, 0.5), size=64)
    with pytest.raises(ValueError, match="geom: the crop square"):
        crop_to_fov(img, FovGeometry(5000, 50, 40, 0.5), size=64)


def test_geometry_scaling_known_answer():
    # decoded pixel u covers source pixels [4u, 4u + 4): its centre is source 4u + 1.5
    g = FovGeometry(10.0, 3.0, 5.0, 0.4).scaled(4)
    assert (g.cx, g.cy, g.radius, g.fraction) == (41.5, 13.5, 20.0, 0.4)


# --- the six real EyePACS frames ---------------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_eyepacs_geometry_and_crop(eyepacs_refs, fov_crop_metrics):
    """Fit on the full-resolution frame vs the reference (full-resolution threshold mask + geometric fit,
    see conftest.reference_fov): centre within 1% of the radius, radius within 2%; the crop keeps >= 95% of
    the reference FOV and its border outside the circle is < 5% fundus."""
    for ref in eyepacs_refs:
        g = find_fov(ref.image)
        assert np.hypot(g.cx - ref.cx, g.cy - ref.cy) < 0.01 * ref.radius, ref.path.name
        assert abs(g.radius - ref.radius) < 0.02 * ref.radius, ref.path.name
        assert abs(g.fraction - ref.mask.mean()) < 0.01, ref.path.name
        kept, spill = fov_crop_metrics(ref.mask, g.cx, g.cy, g.radius)
        assert kept >= 0.95 and spill < 0.05, (ref.path.name, kept, spill)
        out = crop_to_fov(ref.image, g, size=512)
        assert out.shape == (512, 512, 3) and out[256, 256].sum() > 0


# --- dr_ray.testing.make_fundus frames (another generator: intruding triangular notch, exact ground truth) -----

@pytest.mark.parametrize(("seed", "style", "kw"), [
    (0, "eyepacs", dict(crop_top_bottom=0.1, notch=True)),
    (1, "eyepacs", dict(crop_top_bottom=0.0, notch=True)),
    (2, "eyepacs", dict(crop_top_bottom=0.25, notch=False)),
    (3, "centered", dict()),
])
def test_make_fundus_frames(seed, style, kw, fov_crop_metrics):
    testing = pytest.importorskip("dr_ray.testing")
    if not hasattr(testing, "make_fundus"):
        pytest.skip("dr_ray.testing.make_fundus not available")
    w = 960 if style == "eyepacs" else 640
    f = testing.make_fundus(seed, w, 640, style=style, lesions=False, **kw)
    g = find_fov(f.image)
    cx, cy = f.fov_center
    assert np.hypot(g.cx - cx, g.cy - cy) < 0.005 * f.fov_radius
    assert abs(g.radius - f.fov_radius) < 0.01 * f.fov_radius
    assert abs(g.fraction - f.fov_mask.mean()) < 0.01
    kept, spill = fov_crop_metrics(f.fov_mask, g.cx, g.cy, g.radius)
    assert kept >= 0.95 and spill < 0.05
