"""Broken-file factory: every kind exists and is broken (or unusual) in exactly the promised way."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from dr_ray.testing import BAD_FILE_KINDS, make_bad_files


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad") / "sub")  # directory created on demand


def test_one_file_per_kind(bad):
    assert tuple(bad) == BAD_FILE_KINDS
    for kind, path in bad.items():
        assert path.name.startswith(f"bad_{kind}.")
        assert path.exists() == (kind != "missing"), kind
    assert len({p.parent for p in bad.values()}) == 1


def test_zero_byte_and_not_an_image(bad):
    assert bad["zero_byte"].stat().st_size == 0
    data = bad["not_an_image"].read_bytes()
    text = data.decode("ascii")  # plain text
    assert text.strip() and all(c.isprintable() or c.isspace() for c in text)
    assert not data.startswith(b"\xff\xd8")
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad["not_an_image"])
    assert cv2.imread(str(bad["not_an_image"])) is None
    assert cv2.imread(str(bad["zero_byte"])) is None


def test_truncated_jpeg_has_no_eoi_after_last_sos(bad):
    data = bad["truncated_jpeg"].read_bytes()
    assert data[:2] == b"\xff\xd8"
    sos = data.rfind(b"\xff\xda")
    assert sos > 0 and b"\xff\xd9" not in data[sos:]
    assert len(data) - sos > 1000  # cut well inside the scan data, not at its start
    with Image.open(bad["truncated_jpeg"]) as im:
        assert im.size == (384, 256)  # the header is intact
        with pytest.raises(OSError, match="truncated"):
            im.load()


def test_valid_but_unusual_images(bad):
    with Image.open(bad["tiny_1x1"]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (1, 1)
    with Image.open(bad["grayscale"]) as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (256, 256)
        grey = np.asarray(im)
    assert grey.std() > 10  # a fundus, not a flat field
    sixteen = cv2.imread(str(bad["sixteen_bit"]), cv2.IMREAD_UNCHANGED)
    assert sixteen.dtype == np.uint16 and sixteen.shape == (256, 256, 3)
    assert sixteen.max() > 255 * 100  # uses the 16-bit range
    assert sixteen[128, 128, 2] > sixteen[128, 128, 0]  # stored BGR: red channel last, red > blue
    black = cv2.imread(str(bad["all_black"]), cv2.IMREAD_UNCHANGED)
    assert black.shape == (512, 512, 3) and black.max() <= 2


def test_decompression_bomb_declares_huge_size_in_a_tiny_file(bad, monkeypatch):
    path = bad["decompression_bomb"]
    data = path.read_bytes()
    assert len(data) < 200
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # every chunk's CRC is right, so readers trust the header
    pos, tags = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos: pos + 4])
        tag, body = data[pos + 4: pos + 8], data[pos + 8: pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n: pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        tags.append(tag)
        pos += 12 + n
    assert tags == [b"IHDR", b"IDAT", b"IEND"]
    with pytest.raises(Image.DecompressionBombError):  # PIL's default guard trips on the header alone
        Image.open(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(path) as im:
        w, h = im.size
        assert im.mode == "RGB" and w * h > 1e9


def test_repeatable(bad, tmp_path):
    again = make_bad_files(tmp_path)
    for kind in BAD_FILE_KINDS:
        if kind != "missing":
            assert again[kind].read_bytes() == bad[kind].read_bytes(), kind
    leftover = again["missing"]
    leftover.write_bytes(b"x")
    assert not make_bad_files(tmp_path)["missing"].exists()
