"""Frame and FOV geometry: the FOV circle (notch, top/bottom crop), disc and macula placement, eye side, scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Frame and FOV geometry of one synthetic fundus (what :func:`draw_geometry` drew)."""

    height: int
    width: int
    cx: float
    cy: float
    radius: float
    fov_mask: np.ndarray
    fov_dist: np.ndarray  # (H, W) float32 px to the nearest non-FOV pixel
    disc: tuple[float, float]
    disc_radius: float
    macula: tuple[float, float]
    temporal_sign: float  # +1: temporal is +x (left eye), -1: temporal is -x (right eye)
    scale: float  # FOV radius / 512: sizes are specified at a 1024-px FOV diameter


def draw_geometry(rng: np.random.Generator, width: int, height: int, style: str, notch: bool | None,
                  crop_top_bottom: float | None, eye: str) -> Geometry:
    """Draw the frame geometry (FOV circle, notch, top/bottom crop, disc and macula) for ``make_fundus``."""
    # Draw every random quantity whatever the flags, so that notch/crop/eye choices don't shift the
    # stream and e.g. notch=True vs False differ only by the notch.
    r_jitter, cx_jitter, cy_jitter = rng.uniform(-1.0, 1.0, 3)
    want_notch = rng.random() < 0.5
    want_crop = rng.random() < 0.5
    crop_draw = rng.uniform(0.02, 0.12)
    notch_angle = rng.uniform(-math.pi, math.pi)
    notch_half = rng.uniform(0.035, 0.06)  # of R, half the base
    notch_depth = rng.uniform(0.03, 0.06)  # of R
    disc_dx, disc_dy = rng.uniform(0.37, 0.43), rng.uniform(-0.04, 0.02)
    mac_dx, mac_dy = rng.uniform(0.32, 0.38), rng.uniform(0.0, 0.05)
    disc_r = rng.uniform(0.08, 0.10)

    if style == "eyepacs":
        notch = want_notch if notch is None else notch
        crop = (crop_draw if want_crop else 0.0) if crop_top_bottom is None else crop_top_bottom
    else:
        notch = False if notch is None else notch
        crop = 0.0 if crop_top_bottom is None else crop_top_bottom

    cy = (height - 1) / 2.0
    cx = (width - 1) / 2.0
    if crop > 0:
        # crop = fraction of the diameter cut off (top + bottom together): visible height = 2R (1 - crop)
        radius = height / (2.0 * (1.0 - crop))
    elif style == "eyepacs":
        radius = 0.49 * height  # a thin black margin above and below
    else:
        short = min(width, height)
        radius = (0.46 + 0.01 * r_jitter) * short
        cx += 0.01 * short * cx_jitter
        cy += 0.01 * short * cy_jitter

    yy = np.arange(height, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(width, dtype=np.float32)[None, :] - np.float32(cx)
    fov = (xx * xx + yy * yy) <= np.float32(radius * radius)
    if notch:
        # EyePACS cameras leave a small dark notch intruding at the FOV border.
        c, s = math.cos(notch_angle), math.sin(notch_angle)
        half, depth = notch_half * radius, notch_depth * radius
        out = radius + 3.0
        tri = np.array([[cx + out * c - half * s, cy + out * s + half * c],
                        [cx + out * c + half * s, cy + out * s - half * c],
                        [cx + (radius - depth) * c, cy + (radius - depth) * s]])
        notch_img = np.zeros((height, width), np.uint8)
        cv2.fillPoly(notch_img, [np.round(tri * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        fov &= notch_img == 0
    fov_dist = cv2.distanceTransform(fov.astype(np.uint8), cv2.DIST_L2, 5)

    tsign = 1.0 if eye == "left" else -1.0
    disc = (cx - tsign * disc_dx * radius, cy + disc_dy * radius)
    macula = (cx + tsign * mac_dx * radius, cy + mac_dy * radius)
    return Geometry(height=height, width=width, cx=cx, cy=cy, radius=radius, fov_mask=fov, fov_dist=fov_dist,
                    disc=disc, disc_radius=disc_r * radius, macula=macula, temporal_sign=tsign,
                    scale=radius / 512.0)
