"""preprocess.py: the whole chain on real EyePACS JPEGs and synthetic frames; PNG round trip."""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from dr_ray.config.schema import ClaheConfig, PreprocessConfig
from dr_ray.imaging import (ImageDecodeError, circle_mask, decode_png, encode_png, measure_quality,
                            preprocess_image, preprocess_naive)


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def synthetic_jpeg(make_frame):
    f = make_frame(1536, 1024, cx=770.3, cy=512.7, radius=600, halo=True, seed=11)
    return f, _jpeg(f.image)


@pytest.mark.shared_data
def test_real_eyepacs_end_to_end(eyepacs_refs):
    """3888x2592: min side 2592 / 4 = 648 >= 512, / 8 = 324 < 512 -> scale 4. FOV in source pixels within 1% of
    the radius (centre) and 2% (radius) of the full-resolution reference; reduced and naive paths agree."""
    cfg = PreprocessConfig()
    for ref in eyepacs_refs:
        data = ref.path.read_bytes()
        res = preprocess_image(data, cfg)
        assert res.image.shape == (512, 512, 3) and res.image.dtype == np.uint8
        assert res.scale == 4
        assert (res.header.width, res.header.height) == ref.image.shape[1::-1]
        g = res.fov
        assert np.hypot(g.cx - ref.cx, g.cy - ref.cy) < 0.01 * ref.radius, ref.path.name
        assert abs(g.radius - ref.radius) < 0.02 * ref.radius, ref.path.name
        assert abs(g.fraction - ref.mask.mean()) < 0.01
        assert res.gradable and res.canny is None and res.tophat is None

        naive = preprocess_naive(data, cfg)
        assert naive.scale == 1
        assert np.hypot(naive.fov.cx - g.cx, naive.fov.cy - g.cy) < 0.003 * g.radius
        assert abs(naive.fov.radius - g.radius) < 0.003 * g.radius
        assert np.abs(naive.image.astype(np.int16) - res.image).mean() < 3.0
        qa, qb = res.quality, naive.quality
        assert abs(qa.brightness - qb.brightness) < 0.01 and abs(qa.contrast - qb.contrast) < 0.01
        # the default Laplacian of Gaussian (quality.sharpness_sigma=1) makes both paths agree
        assert abs(qa.sharpness / qb.sharpness - 1) < 0.15, ref.path.name


@pytest.mark.shared_data
def test_real_eyepacs_gradable_flag_default_thresholds(eyepacs_paths):
    """The six real photos are gradable with the defaults; grossly out-of-focus copies are flagged. (Moderate blur
    is not reliably caught: JPEG and sensor noise put a floor under the measure; see docs/benchmarks.md.)"""
    import cv2

    from dr_ray.testing import encode_jpeg

    cfg = PreprocessConfig()
    for p in eyepacs_paths:
        data = p.read_bytes()
        assert preprocess_image(data, cfg).gradable, p.name
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_4), cv2.COLOR_BGR2RGB)
        blurred = preprocess_image(encode_jpeg(cv2.GaussianBlur(rgb, (0, 0), 10), 95), cfg)  # 40 px at full res
        assert not blurred.gradable, (p.name, blurred.quality.sharpness)


@pytest.mark.shared_data
def test_real_eyepacs_log_sharpness_agrees_between_decode_paths(eyepacs_paths):
    """With a Gaussian of sigma 1 px before the Laplacian, reduced and naive crops agree within 15%."""
    cfg = PreprocessConfig(clahe=ClaheConfig(enabled=False))  # res.image is then the pre-enhancement crop
    for p in eyepacs_paths:
        data = p.read_bytes()
        a, b = preprocess_image(data, cfg), preprocess_naive(data, cfg)
        fov = circle_mask(512).astype(bool) & (a.image.max(-1) > 0) & (b.image.max(-1) > 0)
        sa = measure_quality(a.image, fov, fov_fraction=0.5, sharpness_sigma=1.0).sharpness
        sb = measure_quality(b.image, fov, fov_fraction=0.5, sharpness_sigma=1.0).sharpness
        assert abs(sa / sb - 1) < 0.15, (p.name, sa, sb)


@pytest.mark.shared_data
def test_real_eyepacs_smaller_output_uses_1_8(eyepacs_paths):
    data = eyepacs_paths[-1].read_bytes()  # 16_right, 3888x2592
    res = preprocess_image(data, PreprocessConfig(size=256))
    assert res.scale == 8 and res.image.shape == (256, 256, 3)
    res = preprocess_image(data, PreprocessConfig(reduced_decode=False))
    assert res.scale == 1


def test_synthetic_geometry_in_source_pixels(synthetic_jpeg):
    f, data = synthetic_jpeg
    for cfg in (PreprocessConfig(size=256), PreprocessConfig(size=512), PreprocessConfig(size=1024)):
        res = preprocess_image(data, cfg)
        assert res.scale == {256: 4, 512: 2, 1024: 1}[cfg.size]
        assert np.hypot(res.fov.cx - f.cx, res.fov.cy - f.cy) < 0.005 * f.radius
        assert abs(res.fov.radius - f.radius) < 0.01 * f.radius
        assert abs(res.fov.fraction - f.mask.mean()) < 0.01
        assert not res.image[circle_mask(cfg.size) == 0].any()


def test_options_graham_clahe_and_maps(synthetic_jpeg):
    _, data = synthetic_jpeg
    base = PreprocessConfig(size=256, clahe=ClaheConfig(enabled=False))
    plain = preprocess_image(data, base)
    full = preprocess_image(data, dataclasses.replace(base, graham=True, clahe=ClaheConfig(channel="green"),
                                                      extra_maps=("canny", "tophat")))
    # quality is measured before enhancement: options do not change it
    assert full.quality == plain.quality
    inside = circle_mask(256).astype(bool)
    assert abs(np.median(full.image[inside][:, 0]) - 128) < 20  # Graham centres the FOV on grey 128
    assert not full.image[~inside].any()
    for m in (full.canny, full.tophat):
        assert m is not None and m.shape == (256, 256) and m.dtype == np.uint8 and not m[~inside].any()
    assert set(np.unique(full.canny)) <= {0, 255} and full.canny.any()
    # the six dark synthetic vessels light up the top-hat
    assert full.tophat[inside].mean() > 0.5


def test_mask_outside_false_keeps_the_halo(synthetic_jpeg):
    _, data = synthetic_jpeg
    cfg = PreprocessConfig(size=256, fov_margin=0.1, mask_outside_fov=False, clahe=ClaheConfig(enabled=False))
    res = preprocess_image(data, cfg)
    ring = (circle_mask(256, margin=0.1) == 0) & (circle_mask(256, margin=0.07) == 1)  # just outside the rim
    assert res.image[ring.astype(bool)][:, 2].mean() > 5  # bluish halo survives


def test_dark_frame_is_processed_but_not_gradable(make_frame):
    f = make_frame(900, 600, radius=280, level=0.12, seed=12)
    res = preprocess_image(_jpeg(f.image), PreprocessConfig(size=256))
    assert res.quality.brightness < 0.08 and not res.gradable


def test_png_input_decodes_at_full_scale(make_frame):
    f = make_frame(600, 400, radius=180, seed=13)
    b = io.BytesIO()
    Image.fromarray(f.image).save(b, format="PNG")
    res = preprocess_image(b.getvalue(), PreprocessConfig(size=128))
    assert res.scale == 1 and res.header.format == "PNG" and res.image.shape == (128, 128, 3)


@pytest.mark.parametrize(("kind", "reason"), [
    ("empty", "empty file"),
    ("truncated", "truncated JPEG"),
    ("text", "not a decodable image"),
    ("black", "no field of view found"),
    ("tiny", "smaller than min_side"),
])
def test_bad_inputs_raise_image_decode_error(kind, reason, synthetic_jpeg):
    _, good = synthetic_jpeg
    data = {"empty": b"", "truncated": good[: len(good) // 3], "text": b"<html>404</html>",
            "black": _jpeg(np.zeros((400, 600, 3), np.uint8)),
            "tiny": _jpeg(np.full((40, 40, 3), 128, np.uint8))}[kind]
    with pytest.raises(ImageDecodeError, match=reason):
        preprocess_image(data, PreprocessConfig())


def test_bad_config_type():
    with pytest.raises(ValueError, match="cfg"):
        preprocess_image(b"x", {"size": 512})  # type: ignore[arg-type]


def test_png_round_trip_rgb_and_grey():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (33, 47, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    for level in (0, 1, 9):
        data = encode_png(rgb, level)
        np.testing.assert_array_equal(decode_png(data), rgb)
        # an independent decoder sees the same RGB order
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    grey = rng.integers(0, 256, (20, 30), np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(grey)), grey)
    assert len(encode_png(np.zeros((256, 256, 3), np.uint8), 9)) < len(encode_png(rgb, 0))
    with pytest.raises(ValueError, match="compression"):
        encode_png(rgb, 10)
    with pytest.raises(ValueError, match="image"):
        encode_png(rgb.astype(np.float32))
    with pytest.raises(ImageDecodeError):
        decode_png(b"not a png")


def test_odd_frames_either_work_or_raise_image_decode_error():
    """Whatever lit shape a frame holds, the stage sees a result or an ImageDecodeError, never another error."""
    h, w = 300, 450
    frames = {}
    a = np.zeros((h, w, 3), np.uint8)
    a[100:200, 50:400] = 180
    frames["rectangle"] = a
    frames["all lit"] = np.full((h, w, 3), 150, np.uint8)
    a = np.zeros((h, w, 3), np.uint8)
    a[150] = 200
    frames["one lit row"] = a
    a = np.zeros((h, w, 3), np.uint8)
    cv2.circle(a, (225, -100), 260, (200, 100, 50), -1)
    frames["arc from above"] = a
    a = np.zeros((h, w, 3), np.uint8)
    cv2.circle(a, (0, 0), 100, (200, 100, 50), -1)
    cv2.circle(a, (449, 299), 100, (200, 100, 50), -1)
    frames["two corners"] = a
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 2] = 200
    frames["blue only"] = a
    frames["noise"] = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    cfg = PreprocessConfig(size=128, graham=True, extra_maps=("canny", "tophat"))
    outcomes = {}
    for name, img in frames.items():
        ok, buf = cv2.imencode(".png", img[..., ::-1])
        try:
            res = preprocess_image(buf.tobytes(), cfg)
        except ImageDecodeError as e:
            outcomes[name] = str(e)
        else:
            assert res.image.shape == (128, 128, 3)
            assert all(isinstance(v, float) and np.isfinite(v) for v in dataclasses.astuple(res.fov))
            outcomes[name] = "ok"
    assert outcomes["rectangle"] == outcomes["all lit"] == outcomes["arc from above"] == "ok"
    assert outcomes["one lit row"].startswith("field of view too small")
    assert outcomes["blue only"].startswith("no field of view found")


def test_bad_files_from_dr_ray_testing_are_quarantined_with_their_reason(tmp_path):
    testing = pytest.importorskip("dr_ray.testing")
    if not hasattr(testing, "make_bad_files"):
        pytest.skip("dr_ray.testing.make_bad_files not available")
    expected = {
        "zero_byte": r"^empty file \(0 bytes\)$",
        "truncated_jpeg": r"^truncated JPEG \(no end-of-image marker after the last scan\)$",
        "not_an_image": r"^not a decodable image \(",
        "tiny_1x1": r"^image is 1x1 px, smaller than min_side=64$",
        "grayscale": r"^grayscale image \(mode L\)",
        "sixteen_bit": r"^16-bit image; 8-bit colour expected$",
        "all_black": r"^no field of view found: the frame is \(almost\) all black$",
        "decompression_bomb": r"^image declares 40000x40000 = 1\.6e9 px, more than max_pixels=",
    }
    paths = testing.make_bad_files(tmp_path)
    for kind, pattern in expected.items():
        with pytest.raises(ImageDecodeError, match=pattern):
            preprocess_image(paths[kind].read_bytes(), PreprocessConfig())
