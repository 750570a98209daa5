"""Broken and unusual image files, one per kind, for testing decoders and the quarantine path."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from dr_ray.testing.fundus import encode_jpeg, make_fundus

log = logging.getLogger(__name__)

BAD_FILE_KINDS = ("zero_byte", "truncated_jpeg", "not_an_image", "tiny_1x1", "grayscale", "sixteen_bit",
                  "all_black", "decompression_bomb", "missing")

# Declared size of the decompression bomb: 1.6e9 pixels (4.8 GB as 8-bit RGB), above PIL's
# MAX_IMAGE_PIXELS error threshold (2 x 89.5 M) and any sane decode budget.
BOMB_SIZE = (40000, 40000)
TRUNCATE_AT = 0.6  # fraction of the JPEG's bytes kept in "truncated_jpeg"

_SUFFIX = {"sixteen_bit": ".png", "decompression_bomb": ".png"}


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int) -> bytes:
    """Bytes of a tiny PNG whose IHDR declares ``width`` x ``height`` 8-bit RGB; the IDAT holds almost nothing.

    Signature, IHDR, IDAT and IEND are well formed (correct CRCs), so readers trust the header; decoding
    fails (or would need width * height * 3 bytes) because the pixel data is missing.
    """
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ValueError(f"PNG width/height must be in 1..2^31-1, got {width}x{height}")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 (RGB), no interlace
    idat = zlib.compress(b"\x00" * 64)  # a filter byte and a few pixels of the first row only
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _imencode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    if not ok:
        raise RuntimeError(f"cv2.imencode({ext!r}) failed for an array of shape {image.shape}")
    return buf.tobytes()


def make_bad_files(directory: str | Path) -> dict[str, Path]:
    """Write one file per kind in ``BAD_FILE_KINDS`` into ``directory`` (created if needed).

    Returns ``{kind: path}`` in ``BAD_FILE_KINDS`` order; names are ``bad_<kind>.jpeg`` (``.png`` for
    sixteen_bit and decompression_bomb). The content is the same on every call:

    * zero_byte: an empty file.
    * truncated_jpeg: a synthetic fundus JPEG (384x256) cut at 60 % of its bytes, inside the entropy-coded
      data: no EOI marker after the last SOS.
    * not_an_image: a line of text.
    * tiny_1x1: a valid 1x1 3-channel JPEG.
    * grayscale: a valid single-channel JPEG of a 256x256 fundus (PIL mode "L").
    * sixteen_bit: a valid 16-bit 3-channel PNG of a 256x256 fundus (values x 257).
    * all_black: a valid 512x512 3-channel JPEG of zeros.
    * decompression_bomb: a ~100-byte PNG whose IHDR declares 40000x40000 RGB (see :func:`png_header_bomb`).
    * missing: a path in ``directory`` that does not exist (removed if a previous call left it).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {k: directory / f"bad_{k}{_SUFFIX.get(k, '.jpeg')}" for k in BAD_FILE_KINDS}

    small = make_fundus(7, 256, 256, grade=2).image
    wide = make_fundus(8, 384, 256, style="eyepacs", grade=1).image
    full = encode_jpeg(wide, 90)
    cut = full[: int(len(full) * TRUNCATE_AT)]
    if cut.rfind(b"\xff\xda") < 0 or b"\xff\xd9" in cut[cut.rfind(b"\xff\xda"):]:
        raise RuntimeError("truncated JPEG is not cut inside its scan data")  # header larger than 60 %?

    contents = {
        "zero_byte": b"",
        "truncated_jpeg": cut,
        "not_an_image": b"this is not an image, only text with a .jpeg name\n",
        "tiny_1x1": encode_jpeg(np.array([[[180, 90, 40]]], np.uint8), 90),
        "grayscale": _imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "sixteen_bit": _imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR).astype(np.uint16) * np.uint16(257)),
        "all_black": encode_jpeg(np.zeros((512, 512, 3), np.uint8), 90),
        "decompression_bomb": png_header_bomb(*BOMB_SIZE),
    }
    for kind, data in contents.items():
        paths[kind].write_bytes(data)
    paths["missing"].unlink(missing_ok=True)
    log.debug("wrote %d bad files to %s", len(contents), directory)
    return paths
