"""decode.py: header probing, refusal of every bad-input kind with its reason, reduced JPEG decoding."""

from __future__ import annotations

import importlib
import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from dr_ray.imaging import ImageDecodeError, ImageHeader, check_header, choose_reduction, decode, find_fov, probe

decode_mod = importlib.import_module("dr_ray.imaging.decode")  # the module (the package exports the function)
LIMITS = dict(max_pixels=120_000_000, min_side=64)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height 8-bit RGB (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def colour_jpeg(make_frame) -> bytes:
    return _jpeg(make_frame(1001, 667, seed=1).image)


# --- choose_reduction --------------------------------------------------------------------------------

@pytest.mark.parametrize(("w", "h", "target", "f"), [
    (3888, 2592, 512, 4),  # 2592 / 4 = 648 >= 512, / 8 = 324 < 512
    (4752, 3168, 512, 4),  # 792 at 1/4, 396 at 1/8
    (4928, 3264, 512, 4),
    (3888, 2592, 256, 8),  # 324 >= 256
    (3888, 2592, 1024, 2),  # 1296 >= 1024, 648 < 1024
    (3888, 2592, 2592, 1),
    (1024, 1024, 512, 2),  # exactly target after reduction counts
    (1023, 2000, 512, 1),
    (5000, 5000, 512, 8),  # 625 >= 512; 8 is the largest libjpeg offers
    (800, 600, 1024, 1),  # smaller than target: never reduce
])
def test_choose_reduction_known_answers(w, h, target, f):
    assert choose_reduction(w, h, target) == f


@pytest.mark.parametrize("args", [(0, 100, 10), (100, -1, 10), (100, 100, 0), (100.5, 100, 10)])
def test_choose_reduction_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        choose_reduction(*args)


# --- real EyePACS JPEGs --------------------------------------------------------------------------------

def test_probe_real_eyepacs(eyepacs_paths):
    sizes = {"10": (4752, 3168), "15": (4928, 3264), "16": (3888, 2592)}
    for p in eyepacs_paths:
        h = probe(p.read_bytes())
        assert h == ImageHeader("JPEG", *sizes[p.stem.split("_")[0]], "RGB", 8)


def test_reduced_decode_matches_full_decode_plus_area_resize(eyepacs_paths):
    """libjpeg's scaled IDCT at 1/4 == full decode + INTER_AREA 4x4 averaging, up to JPEG rounding."""
    for p in eyepacs_paths:
        data = p.read_bytes()
        red, f, h = decode(data, target=512, **LIMITS)
        full, f1, _ = decode(data, target=512, reduced=False, **LIMITS)
        assert f == 4 and f1 == 1
        assert red.shape == (-(-h.height // 4), -(-h.width // 4), 3) and red.dtype == np.uint8
        assert full.shape == (h.height, h.width, 3)
        small = cv2.resize(full, (red.shape[1], red.shape[0]), interpolation=cv2.INTER_AREA)
        mad = np.abs(small.astype(np.int16) - red).mean()
        assert mad < 3.0, (p.name, mad)
        # RGB order: fundus is red-dominant
        assert red[..., 0].mean() > red[..., 2].mean()


def test_reduced_decode_shape_is_ceil_of_odd_sizes(make_frame):
    data = _jpeg(make_frame(1001, 667, seed=2).image)
    for target, f in ((512, 1), (300, 2), (160, 4), (64, 8)):
        img, got, _ = decode(data, target=target, **LIMITS)
        assert got == f
        assert img.shape == (-(-667 // f), -(-1001 // f), 3)
    img, got, _ = decode(data, target=64, reduced=False, **LIMITS)
    assert got == 1 and img.shape == (667, 1001, 3)


def test_png_is_decoded_at_full_resolution_in_rgb_order():
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[:, :10, 2] = 90
    data = _pil_bytes(Image.fromarray(rgb), "PNG")
    img, f, h = decode(data, target=32, **LIMITS)
    assert f == 1 and h.format == "PNG" and h.bits == 8
    np.testing.assert_array_equal(img, rgb)


def test_rgba_png_and_colour_palette_png_are_accepted():
    rgb = np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8)
    rgba = np.dstack([rgb, np.full((80, 90), 255, np.uint8)])
    img, _, _ = decode(_pil_bytes(Image.fromarray(rgba), "PNG"), **LIMITS)
    np.testing.assert_array_equal(img, rgb)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img, _, h = decode(_pil_bytes(pal, "PNG"), **LIMITS)
    assert h.mode == "P" and not h.grey_palette and img.shape == (80, 90, 3)
    np.testing.assert_array_equal(img, np.asarray(pal.convert("RGB")))


def test_trailing_bytes_after_end_of_image_are_fine(colour_jpeg):
    img, _, _ = decode(colour_jpeg + b"\x00" * 100, **LIMITS)
    assert img.shape == (667, 1001, 3)


# --- bad inputs: each kind refused with its own reason ----------------------------------------------------

def test_empty_file():
    with pytest.raises(ImageDecodeError, match=r"^empty file \(0 bytes\)$"):
        decode(b"", **LIMITS)


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_jpeg(colour_jpeg, cut):
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG \(no end-of-image marker after the last scan\)"):
        decode(colour_jpeg[: int(len(colour_jpeg) * cut)], **LIMITS)


def test_jpeg_missing_only_its_end_marker_is_truncated(colour_jpeg):
    assert colour_jpeg.endswith(b"\xff\xd9")
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode(colour_jpeg[:-2], **LIMITS)


def test_jpeg_cut_inside_its_header_is_refused(colour_jpeg):
    with pytest.raises(ImageDecodeError, match="truncated JPEG|not a decodable image"):
        decode(colour_jpeg[:300], **LIMITS)


@pytest.mark.parametrize("data", [b"hello, this is not an image", b"\x00" * 5000,
                                  bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))])
def test_not_an_image(data):
    with pytest.raises(ImageDecodeError, match=r"^not a decodable image \("):
        decode(data, **LIMITS)


def test_one_pixel_image():
    data = _pil_bytes(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"^image is 1x1 px, smaller than min_side=64$"):
        decode(data, **LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_image(fmt):
    grey = Image.fromarray(np.full((100, 100), 128, np.uint8))
    with pytest.raises(ImageDecodeError, match=r"^grayscale image \(mode L\); colour fundus photographs expected$"):
        decode(_pil_bytes(grey, fmt), **LIMITS)


def test_grey_palette_is_grayscale():
    pal = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (100, 1))).convert("P")
    data = _pil_bytes(pal, "PNG")
    assert probe(data).grey_palette
    with pytest.raises(ImageDecodeError, match=r"grayscale image \(mode P\)"):
        decode(data, **LIMITS)


def test_16_bit_png():
    ok, buf = cv2.imencode(".png", np.full((100, 100, 3), 30000, np.uint16))
    assert ok
    h = probe(buf.tobytes())
    assert h.bits == 16
    with pytest.raises(ImageDecodeError, match=r"^16-bit image; 8-bit colour expected$"):
        decode(buf.tobytes(), **LIMITS)


def test_cmyk_jpeg():
    data = _pil_bytes(Image.new("CMYK", (100, 100), (10, 200, 30, 0)), "JPEG")
    assert probe(data).mode == "CMYK"
    with pytest.raises(ImageDecodeError, match=r"^CMYK image"):
        decode(data, **LIMITS)


def test_decompression_bomb_is_refused_without_decoding(monkeypatch):
    data = _bomb_png(40000, 40000)
    assert len(data) < 200
    h = probe(data)  # PIL refuses to open it (its own global limit); our IHDR parse still reads the size
    assert (h.format, h.width, h.height, h.bits) == ("PNG", 40000, 40000, 8)

    def no_decode(*a, **k):
        raise AssertionError("cv2.imdecode must not be called for a decompression bomb")

    monkeypatch.setattr(decode_mod.cv2, "imdecode", no_decode)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError,
                           match=r"^image declares 40000x40000 = 1\.6e9 px, more than max_pixels=120000000"):
            decode(data, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # 1.6e9 px x 3 B would be 4.8 GB


def test_bomb_below_pil_limit_but_above_max_pixels():
    data = _bomb_png(12000, 11000)  # 1.32e8 px: PIL opens it lazily (warning only), our limit refuses it
    with pytest.raises(ImageDecodeError, match=r"declares 12000x11000 = 1\.3e8 px, more than max_pixels"):
        decode(data, **LIMITS)


def test_all_black_frame_decodes_but_has_no_fov():
    data = _jpeg(np.zeros((400, 600, 3), np.uint8))
    img, _, _ = decode(data, **LIMITS)
    with pytest.raises(ImageDecodeError, match=r"^no field of view found: the frame is \(almost\) all black$"):
        find_fov(img)


def test_check_header_order_and_arguments():
    ok = ImageHeader("JPEG", 3888, 2592, "RGB", 8)
    check_header(ok, **LIMITS)  # no exception
    with pytest.raises(ImageDecodeError, match="unsupported colour mode YCbCr"):
        check_header(ImageHeader("JPEG", 100, 100, "YCbCr", 8), **LIMITS)
    with pytest.raises(ImageDecodeError, match="1-bit image"):
        check_header(ImageHeader("BMP", 100, 100, "RGB", 1), **LIMITS)
    with pytest.raises(ValueError, match="max_pixels"):
        check_header(ok, max_pixels=0, min_side=1)
    with pytest.raises(ValueError, match="min_side"):
        check_header(ok, max_pixels=10**8, min_side=0)


def test_decode_error_is_a_value_error_and_bad_argument_types():
    assert issubclass(ImageDecodeError, ValueError)
    with pytest.raises(ValueError, match="data: expected bytes"):
        probe("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        decode(b"x", target=0, **LIMITS)
