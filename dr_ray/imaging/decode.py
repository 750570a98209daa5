"""Bytes -> RGB array, refusing bad inputs with a human-readable reason.

The header is read first (PIL opens lazily; PNG bit depth and decompression-bomb sizes come from our own
parse of the IHDR / SOF segment), checked against the limits, and only then is the image decoded by OpenCV.
JPEGs can be decoded at 1/2, 1/4 or 1/8 scale inside libjpeg (scaled inverse DCT), which skips most of the
IDCT, colour conversion and memory traffic of a full 12-16 MP decode when the output is only 512 px.

Everything that makes an input unusable raises :class:`ImageDecodeError`; its message is the reason that a
batch stage records in the quarantine table.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

__all__ = ["ImageDecodeError", "ImageHeader", "probe", "check_header", "choose_reduction", "plan_decode",
           "decoded_shape", "decode"]

REDUCTIONS = (1, 2, 4, 8)  # scales libjpeg can decode at (scaled IDCT)
JPEG_FORMATS = ("JPEG", "MPO")  # MPO = multi-picture JPEG from some cameras; the first frame is a plain JPEG

_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA")

# OpenCV >= 4.10 can hand back RGB directly (saves one cvtColor); older versions only BGR.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
# Pixel coordinates (FOV centre, crop box) refer to the stored pixel grid, which is what the header's
# width/height describe; an EXIF rotation would swap or mirror them, so it is not applied.
_IGNORE_ORIENTATION = cv2.IMREAD_IGNORE_ORIENTATION
_REDUCED_GREY_FLAG = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                      8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_REDUCED_BGR_FLAG = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageDecodeError(ValueError):
    """The bytes are not a usable colour fundus image. ``str(err)`` is the reason, e.g.
    ``"truncated JPEG (no end-of-image marker after the last scan)"``."""


@dataclass(frozen=True)
class ImageHeader:
    """What the file header declares; nothing is decoded to get it.

    format: PIL format name ("JPEG", "PNG", "TIFF", ...); width, height: px; mode: PIL mode ("RGB", "L",
    "CMYK", "P", ...); bits: bits per sample (8 for ordinary images, 16 for 16-bit PNG/TIFF);
    grey_palette: a palette ("P") image whose palette has only grey entries (R == G == B).
    """

    format: str
    width: int
    height: int
    mode: str
    bits: int
    grey_palette: bool = False


# --- header parsing -----------------------------------------------------------------------------------

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_GREY_TYPES = (0, 4)  # IHDR colour types: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames


def _png_ihdr(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG IHDR chunk, or None when it is not a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_SIG) or data[12:16] != b"IHDR":
        return None
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, ctype


def _jpeg_sof(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, precision, components) from the first JPEG frame header, or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers: no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            precision, height, width, ncomp = struct.unpack(">BHHB", data[i + 4:i + 10])
            return width, height, precision, ncomp
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _header_without_pil(data: bytes) -> ImageHeader | None:
    """Dimensions from our own parse, used when PIL refuses to open a file it thinks is a bomb."""
    ihdr = _png_ihdr(data)
    if ihdr is not None:
        w, h, depth, ctype = ihdr
        mode = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}.get(ctype, f"colour type {ctype}")
        return ImageHeader("PNG", w, h, mode, depth)
    sof = _jpeg_sof(data)
    if sof is not None:
        w, h, precision, ncomp = sof
        mode = {1: "L", 3: "RGB", 4: "CMYK"}.get(ncomp, f"{ncomp} components")
        return ImageHeader("JPEG", w, h, mode, precision)
    return None


def _bits_of(im: Image.Image, data: bytes) -> int:
    ihdr = _png_ihdr(data)
    if ihdr is not None:
        return ihdr[2]
    if im.format == "TIFF":
        bps = im.tag_v2.get(258)  # BitsPerSample
        if bps:
            return int(max(bps) if isinstance(bps, tuple) else bps)
    if hasattr(im, "bits"):  # JPEG: sample precision from SOF
        return int(im.bits)
    if im.mode.startswith("I;16"):
        return 16
    if im.mode in ("I", "F"):
        return 32
    return 1 if im.mode == "1" else 8


def _palette_is_grey(im: Image.Image) -> bool:
    pal = im.palette
    if pal is None or pal.mode != "RGB":
        return False
    raw = np.frombuffer(bytes(pal.palette), np.uint8)
    raw = raw[: raw.size // 3 * 3].reshape(-1, 3)
    return bool(raw.size) and bool(np.all(raw[:, 0] == raw[:, 1]) and np.all(raw[:, 1] == raw[:, 2]))


def probe(data: bytes) -> ImageHeader:
    """Read the image header without decoding pixels.

    data: the encoded file, bytes. Returns :class:`ImageHeader`.
    Raises ImageDecodeError: "empty file (0 bytes)" or "not a decodable image (...)".
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    data = bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError:
        # PIL's own (global, 179 MP) limit; our limit is max_pixels, checked in check_header.
        h = _header_without_pil(data)
        if h is None:
            raise ImageDecodeError("not a decodable image (header declares an enormous size)") from None
        return h
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a decodable image (unknown format; {len(data)} bytes starting "
                               f"{data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageDecodeError(f"not a decodable image ({type(e).__name__}: {e})") from None
    with im:
        fmt = im.format or "unknown"
        w, h = im.size
        mode = im.mode
        bits = _bits_of(im, data)
        grey_pal = mode in ("P", "PA") and _palette_is_grey(im)
    return ImageHeader(fmt, int(w), int(h), mode, int(bits), grey_pal)


def _sci(n: float) -> str:
    """1.6e9-style number (no '+', no leading zeros in the exponent)."""
    mant, exp = f"{n:.2g}".split("e") if "e" in f"{n:.2g}" else (f"{n:.2g}", "0")
    return f"{mant}e{int(exp)}" if int(exp) else mant


def check_header(h: ImageHeader, *, max_pixels: int, min_side: int) -> None:
    """Refuse headers that cannot be a usable colour fundus photograph, before any pixel is decoded.

    h: from :func:`probe`; max_pixels: largest width*height accepted (decompression-bomb guard);
    min_side: smallest accepted width or height, px. Raises ImageDecodeError with the reason.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels: must be >= 1, got {max_pixels!r}")
    if min_side < 1:
        raise ValueError(f"min_side: must be >= 1, got {min_side!r}")
    n = h.width * h.height
    if n > max_pixels:
        raise ImageDecodeError(f"image declares {h.width}x{h.height} = {_sci(n)} px, more than "
                               f"max_pixels={max_pixels} (decompression bomb?)")
    if min(h.width, h.height) < min_side:
        raise ImageDecodeError(f"image is {h.width}x{h.height} px, smaller than min_side={min_side}")
    if h.bits > 8:
        raise ImageDecodeError(f"{h.bits}-bit image; 8-bit colour expected")
    if h.mode in _GREY_MODES or (h.mode in ("P", "PA") and h.grey_palette):
        raise ImageDecodeError(f"grayscale image (mode {h.mode}); colour fundus photographs expected")
    if h.mode == "CMYK":
        raise ImageDecodeError("CMYK image; RGB colour fundus photographs expected")
    if h.mode not in _COLOUR_MODES:
        raise ImageDecodeError(f"unsupported colour mode {h.mode}; RGB colour fundus photographs expected")
    if h.bits < 8:
        raise ImageDecodeError(f"{h.bits}-bit image; 8-bit colour expected")


def choose_reduction(width: int, height: int, target: int) -> int:
    """Largest libjpeg reduction f in (1, 2, 4, 8) with ``min(width, height) / f >= target``.

    The fundus circle's diameter is about the frame height (EyePACS frames are landscape and the circle is
    often cut at the top and bottom), so the FOV keeps at least ~``target`` px across after reduction.
    width, height: source frame, px; target: output side, px.
    """
    for name, v in (("width", width), ("height", height), ("target", target)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    side = min(width, height)
    return max(f for f in REDUCTIONS if side / f >= target or f == 1)


def _check_jpeg_complete(data: bytes) -> None:
    # OpenCV/libjpeg only warn on a truncated stream (older builds fill the rest with grey), so look at the
    # bytes: entropy-coded data byte-stuffs 0xFF, so FF DA / FF D9 there are real markers. The last scan
    # must be followed by an end-of-image marker. (Markers inside an EXIF thumbnail come before the main
    # image's scans and do not matter.)
    sos = data.rfind(b"\xff\xda")
    if sos < 0:
        raise ImageDecodeError("truncated JPEG (no start-of-scan marker: no image data)")
    if data.rfind(b"\xff\xd9") < sos:
        raise ImageDecodeError("truncated JPEG (no end-of-image marker after the last scan)")


def _imdecode_rgb(buf: np.ndarray, factor: int) -> np.ndarray | None:
    if _RGB_FLAG is not None:
        flags = (_REDUCED_GREY_FLAG[factor] | _RGB_FLAG) if factor > 1 else _RGB_FLAG
        return cv2.imdecode(buf, flags | _IGNORE_ORIENTATION)
    flags = _REDUCED_BGR_FLAG[factor] if factor > 1 else cv2.IMREAD_COLOR
    bgr = cv2.imdecode(buf, flags | _IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def plan_decode(data: bytes, *, target: int | None = None, reduced: bool = True, max_pixels: int,
                min_side: int) -> tuple[ImageHeader, int]:
    """Everything :func:`decode` does before it decodes a pixel: probe, check the header, refuse a truncated
    JPEG, pick the reduction. A batched decoder calls this first so that bad files get the same reasons.

    data, target, reduced, max_pixels, min_side: as for :func:`decode`.
    Returns ``(header, factor)``: header from :func:`probe`; factor in (1, 2, 4, 8), the libjpeg reduction the
    CPU decode uses (1 unless ``reduced``, a JPEG and a ``target``). Raises ImageDecodeError.
    """
    if target is not None and (int(target) != target or target < 1):
        raise ValueError(f"target: must be a positive integer or None, got {target!r}")
    header = probe(data)
    check_header(header, max_pixels=max_pixels, min_side=min_side)
    is_jpeg = header.format in JPEG_FORMATS
    if is_jpeg:
        _check_jpeg_complete(bytes(data))
    factor = 1
    if reduced and is_jpeg and target is not None:
        factor = choose_reduction(header.width, header.height, int(target))
    return header, factor


def decoded_shape(header: ImageHeader, factor: int) -> tuple[int, int]:
    """(height, width) of the image decoded from ``header``'s frame at 1/``factor``: libjpeg's scaled IDCT
    rounds up, ``(ceil(H / factor), ceil(W / factor))``."""
    if factor not in REDUCTIONS:
        raise ValueError(f"factor: must be one of {REDUCTIONS}, got {factor!r}")
    return -(-header.height // factor), -(-header.width // factor)


def decode(data: bytes, *, target: int | None = None, reduced: bool = True, max_pixels: int,
           min_side: int) -> tuple[np.ndarray, int, ImageHeader]:
    """Probe, check and decode an image to RGB.

    data: encoded bytes (JPEG, PNG, TIFF, ... anything OpenCV reads).
    target: output side the caller will resize to, px; with ``reduced`` a JPEG is decoded at the scale
    :func:`choose_reduction` picks for it (None = full resolution).
    max_pixels, min_side: limits for :func:`check_header`.
    Returns ``(image, factor, header)``: image (ceil(H/factor), ceil(W/factor), 3) uint8 RGB; factor in
    (1, 2, 4, 8), source px per decoded px; header from :func:`probe`.
    Raises ImageDecodeError for every unusable input.
    """
    header, factor = plan_decode(data, target=target, reduced=reduced, max_pixels=max_pixels, min_side=min_side)
    buf = np.frombuffer(data, np.uint8)
    try:
        image = _imdecode_rgb(buf, factor)
    except cv2.error as e:
        raise ImageDecodeError(f"OpenCV could not decode the {header.format} data ({str(e).strip()[-120:]})") from None
    if image is None:
        raise ImageDecodeError(f"OpenCV could not decode the {header.format} data (corrupt or truncated file)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageDecodeError(f"decoded to {image.shape} {image.dtype}; 8-bit RGB expected")
    expect = decoded_shape(header, factor)
    if image.shape[:2] != expect:
        raise ImageDecodeError(f"decoded size {image.shape[1]}x{image.shape[0]} does not match the header "
                               f"({header.width}x{header.height} at 1/{factor})")
    return image, factor, header
