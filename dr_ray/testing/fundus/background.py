"""Background: fundus colour, vignetting and uneven illumination, choroidal texture, macula and optic disc."""

from __future__ import annotations

import math

import cv2
import numpy as np

from dr_ray.testing.fundus.geometry import Geometry


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """(H, W) float32 smooth noise, unit-ish std, features ~``cell`` px (bicubic upsampling of a coarse grid)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _local(geo: Geometry, x: float, y: float, r: float):
    """Slices of the frame box around (x, y) with half-size r, and its (dy, dx) offset grids in px; None if empty."""
    x0, x1 = max(0, int(math.floor(x - r))), min(geo.width, int(math.ceil(x + r)) + 1)
    y0, y1 = max(0, int(math.floor(y - r))), min(geo.height, int(math.ceil(y + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
    return (slice(y0, y1), slice(x0, x1)), dy, dx


def draw_background(rng: np.random.Generator, geo: Geometry) -> np.ndarray:
    """(H, W, 3) float32 RGB 0-255: fundus colour, vignetting, choroidal texture, disc and macula."""
    h, w, R = geo.height, geo.width, geo.radius
    base = np.array([rng.uniform(198, 228), rng.uniform(92, 118), rng.uniform(36, 56)], np.float32)
    vig_a, vig_p = rng.uniform(0.4, 0.55), rng.uniform(2.2, 3.2)
    grad = rng.uniform(-0.07, 0.07, 2)
    yy = (np.arange(h, dtype=np.float32)[:, None] - np.float32(geo.cy)) / np.float32(R)
    xx = (np.arange(w, dtype=np.float32)[None, :] - np.float32(geo.cx)) / np.float32(R)
    rho2 = np.minimum(xx * xx + yy * yy, np.float32(1.1))
    lum = 1.0 - np.float32(vig_a) * rho2 ** np.float32(vig_p / 2)  # vignetting: darker towards the rim
    lum *= (1.0 + np.float32(grad[0]) * xx) + np.float32(grad[1]) * yy  # uneven illumination
    lum *= 1.0 + 0.045 * _smooth_noise(rng, h, w, 0.12 * R) + 0.02 * _smooth_noise(rng, h, w, 0.03 * R)
    img = lum[..., None] * base

    # macula: darker and browner (Gaussian, sigma ~0.1 R) with a tiny foveal reflex
    sig = rng.uniform(0.09, 0.12) * R
    depth = np.float32(rng.uniform(0.25, 0.38)) * np.array([0.9, 1.0, 0.8], np.float32)
    box = _local(geo, geo.macula[0], geo.macula[1], 4.0 * sig)
    if box is not None:
        sl, dy, dx = box
        d2 = dx * dx + dy * dy
        mac = np.exp(-d2 / np.float32(2 * sig * sig))
        img[sl] *= 1.0 - mac[..., None] * depth
        reflex = 12.0 * np.exp(-d2 / np.float32(2 * (0.012 * R) ** 2))
        img[sl] += reflex[..., None] * np.array([1, 0.8, 0.5], np.float32)

    # optic disc: bright yellow-orange with a soft rim; a paler cup slightly temporal
    rd = geo.disc_radius
    disc_rgb = np.array([rng.uniform(238, 252), rng.uniform(185, 215), rng.uniform(110, 150)], np.float32)
    cup_r = rng.uniform(0.3, 0.5) * rd
    box = _local(geo, geo.disc[0], geo.disc[1], 1.3 * rd)
    if box is not None:
        sl, dy, dx = box
        a_disc = np.clip((rd - np.sqrt(dx * dx + dy * dy)) / np.float32(0.25 * rd) + 0.5, 0.0, 1.0)
        a_disc *= np.float32(0.92)
        img[sl] += a_disc[..., None] * (disc_rgb - img[sl])
        cx = dx - np.float32(geo.temporal_sign * 0.12 * rd)
        a_cup = np.clip((cup_r - np.sqrt(cx * cx + dy * dy)) / np.float32(0.4 * cup_r) + 0.5, 0.0, 1.0)
        a_cup *= np.float32(0.75)
        img[sl] += a_cup[..., None] * (np.array([252, 238, 200], np.float32) - img[sl])
    return img
