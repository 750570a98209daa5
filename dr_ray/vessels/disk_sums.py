"""Sums of an image over disks of many radii (centre-surround filters of :mod:`dr_ray.vessels.optic_disc`).

``disk_sums(arrays, r_max)(i, r)`` equals ``cv2.filter2D(arrays[i], -1, disk(r), borderType=cv2.BORDER_CONSTANT)``
up to float32 rounding (~1e-7 of the largest sum), for every ``r <= r_max``. filter2D uses a DFT for kernels
this large but transforms the (2R-padded) input and the kernel again on every call; here each array is
transformed once, each disk's spectrum is cached (the radii repeat from image to image), and a frame of
h + R px (not h + 2R) suffices: with the kernel centred at (0, 0), the wrap-around of the circular
convolution only reaches outputs beyond the image. A disk is symmetric, so its spectrum is real: the
product is an element-wise scaling of the packed (CCS) spectrum, cheaper than ``cv2.mulSpectrums``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np


def disk(radius: float) -> np.ndarray:
    """(2k + 1, 2k + 1) float32 {0, 1}, k = max(1, ceil(radius)): pixels within ``radius`` of the centre."""
    r = max(1, math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.float32)


@functools.lru_cache(maxsize=256)
def disk_area(radius: float) -> float:
    """Pixels in ``disk(radius)``."""
    return float(np.count_nonzero(disk(radius)))


def _frame(n: int) -> int:
    """Even DFT length >= n (the CCS layout below assumes even sides)."""
    return 2 * cv2.getOptimalDFTSize((n + 1) // 2)


@functools.lru_cache(maxsize=24)  # the 21 disks of one optic-disc configuration, ~0.5 MB each at 256 px
def _disk_multiplier(radius: float, ny: int, nx: int) -> np.ndarray:
    """(ny, nx) float32 that multiplies a CCS spectrum element-wise as ``cv2.mulSpectrums`` with the disk's
    spectrum would: the disk centred at (0, 0) (wrapped) has a real spectrum (imaginary parts ~1e-8 of it, float32
    rounding, dropped), so each (Re, Im) pair of the packed spectrum is scaled by the same value."""
    k = disk(radius)
    r = k.shape[0] // 2
    frame = np.zeros((ny, nx), np.float32)
    np.add.at(frame, (np.arange(-r, r + 1)[:, None] % ny, np.arange(-r, r + 1) % nx), k)  # wraps (sums) if > frame
    m = cv2.dft(frame)  # CCS: Re/Im pairs along rows in columns 1..nx-2, along columns in columns 0, nx-1
    m[:, 2:-1:2] = m[:, 1:-1:2]
    m[2:-1:2, 0] = m[1:-2:2, 0]
    m[2:-1:2, -1] = m[1:-2:2, -1]
    m.flags.writeable = False
    return m


def disk_sums(arrays: list[np.ndarray], r_max: float) -> Callable[[int, float], np.ndarray]:
    """``f(i, r)``: (h, w) float32 sums of ``arrays[i]`` (all (h, w), zero beyond the border) over
    ``disk(r)`` centred at each pixel, for any r <= ``r_max`` (module docstring)."""
    h, w = arrays[0].shape
    big = math.ceil(r_max) + 1
    ny, nx = _frame(h + big), _frame(w + big)
    specs = []
    for a in arrays:
        frame = np.zeros((ny, nx), np.float32)
        frame[:h, :w] = a
        specs.append(cv2.dft(frame, nonzeroRows=h))

    def conv(i: int, r: float) -> np.ndarray:
        if r > r_max:
            raise ValueError(f"radius {r} > r_max {r_max}")
        prod = specs[i] * _disk_multiplier(float(r), ny, nx)
        return cv2.idft(prod, flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT, nonzeroRows=h)[:h, :w]
    return conv


@functools.lru_cache(maxsize=2)
def mask_terms(key: bytes, shape: tuple[int, int], radii: tuple[float, ...], sigma: float
               ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """For the bool mask ``np.frombuffer(key, bool).reshape(shape)`` (as float32 m): ``cv2.GaussianBlur(m, (0, 0),
    sigma)`` and ``disk_sums([m], max(radii))(0, r)`` for each of ``radii``, read-only. Cached: a batch's images
    share one field of view, hence these weights of FOV-normalised filters."""
    m = np.frombuffer(key, bool).reshape(shape).astype(np.float32)
    conv = disk_sums([m], max(radii))
    out = (cv2.GaussianBlur(m, (0, 0), sigma), tuple(conv(0, r) for r in radii))
    for a in (out[0], *out[1]):
        a.flags.writeable = False
    return out
