"""Synthetic fundus-like frames with known FOV geometry, and the real EyePACS sample paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool: true fundus (disc, cut by the frame, plus the notch)
    cx: float
    cy: float
    radius: float


def draw_frame(width: int, height: int, *, cx: float | None = None, cy: float | None = None,
               radius: float | None = None, notch: bool = True, halo: bool = False, vessels: bool = True,
               level: float = 1.0, seed: int = 0) -> Frame:
    """An EyePACS-like frame: black surround with JPEG-like noise, an orange disc with a radial falloff and a
    few dark 'vessels', an anti-aliased rim (pixel coverage), an optional notch (a small bump outside the
    rim, upper right) and an optional faint bluish halo just outside the rim."""
    rng = np.random.default_rng(seed)
    cx = (width - 1) / 2 if cx is None else cx
    cy = (height - 1) / 2 if cy is None else cy
    radius = 0.45 * min(width, height) if radius is None else radius
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy)
    cover = np.clip(radius - d + 0.5, 0, 1)  # anti-aliased disc
    inside = d <= radius
    if notch:  # a 4%-of-radius bump at -45 degrees (upper right), sticking out of the rim
        ang = np.deg2rad(-45)
        nx, ny = cx + (radius + 0.02 * radius) * np.cos(ang), cy + (radius + 0.02 * radius) * np.sin(ang)
        bump = np.hypot(xx - nx, yy - ny) <= 0.035 * radius
        cover = np.maximum(cover, bump.astype(np.float32))
        inside |= bump
    shade = 1.0 - 0.45 * (d / radius) ** 2  # vignetting towards the rim
    base = np.array([200.0, 110.0, 60.0], np.float32) * level
    img = base[None, None, :] * (shade * cover)[..., None]
    if vessels:
        lines = np.zeros((height, width), np.uint8)
        t = max(1, round(radius / 120))
        for k in range(6):
            a = k * np.pi / 3 + 0.3
            p0 = (int(cx), int(cy))
            p1 = (int(cx + 0.9 * radius * np.cos(a)), int(cy + 0.9 * radius * np.sin(a)))
            cv2.line(lines, p0, p1, 1, t, cv2.LINE_AA)
        img *= (1.0 - 0.35 * lines.astype(np.float32) * cover)[..., None]
    if halo:
        ring = np.clip(1.0 - (d - radius) / (0.02 * radius), 0, 1) * (d > radius)
        img += np.array([12.0, 14.0, 30.0], np.float32)[None, None, :] * ring[..., None]
    img += rng.normal(0, 1.2, img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Frame(image=image, mask=inside, cx=float(cx), cy=float(cy), radius=float(radius))


@pytest.fixture(scope="session")
def eyepacs_paths(shared_data: Path) -> list[Path]:
    paths = sorted((shared_data / "EyePACS_kaggle_sample" / "images").glob("*.jpeg"))
    if len(paths) != 6:
        pytest.skip(f"expected 6 EyePACS sample JPEGs, found {len(paths)}")
    return paths


@pytest.fixture(scope="session")
def make_frame():
    """The :func:`draw_frame` factory (fixtures, so test modules need not import this conftest)."""
    return draw_frame


# --- full-resolution references for the real EyePACS sample (independent of dr_ray.imaging.fov) ---------

@dataclass(frozen=True)
class RealRef:
    path: Path
    image: np.ndarray  # (H, W, 3) uint8 RGB, full resolution, decoded by PIL
    mask: np.ndarray  # (H, W) bool reference FOV
    cx: float
    cy: float
    radius: float


def reference_fov(image: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reference FOV of a full-resolution frame, built without dr_ray.imaging.fov:

    mask: red > 6% of the red 99.5th percentile (numpy), largest 8-connected component and holes filled
    (scipy.ndimage), at full resolution (no downscaling); circle: geometric least-squares fit (scipy
    least_squares, soft-L1 loss for the notch) to the mask's boundary pixels that are not on the frame edge
    (a different estimator from the algebraic Kasa fit used by find_fov).
    """
    from scipy import ndimage as ndi
    from scipy.optimize import least_squares

    red = image[..., 0]
    m = red > 0.06 * np.percentile(red, 99.5)
    lab, n = ndi.label(m, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    m = ndi.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    edge = m & ~ndi.binary_erosion(m)
    edge[:2, :] = edge[-2:, :] = False
    edge[:, :2] = edge[:, -2:] = False
    y, x = np.nonzero(edge)
    x0 = (x.mean(), y.mean(), 0.5 * (x.max() - x.min()))
    fit = least_squares(lambda p: np.hypot(x - p[0], y - p[1]) - p[2], x0, loss="soft_l1", f_scale=2.0)
    cx, cy, r = fit.x
    return m, (float(cx), float(cy), float(r) + 0.5)  # boundary pixel centres lie ~0.5 px inside the edge


@pytest.fixture(scope="session")
def eyepacs_refs(eyepacs_paths) -> list[RealRef]:
    from PIL import Image

    out = []
    for p in eyepacs_paths:
        with Image.open(p) as im:
            img = np.asarray(im.convert("RGB"))
        m, (cx, cy, r) = reference_fov(img)
        out.append(RealRef(p, img, m, cx, cy, r))
    return out


def crop_metrics(ref_mask: np.ndarray, cx: float, cy: float, radius: float, margin: float = 0.0,
                 masked: bool = True) -> tuple[float, float]:
    """(kept, spill) of a crop described by a circle, measured against a reference FOV mask in the same grid.

    kept: share of the reference FOV pixels that end up in the crop (inside the square, and inside the circle
    when pixels outside it are masked); spill: share of the crop's border (square inside the frame, outside
    the circle) that is reference fundus.
    """
    h, w = ref_mask.shape
    half = radius * (1 + margin)
    yy, xx = np.ogrid[:h, :w]
    square = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    keep_region = square & circle if masked else square
    kept = np.count_nonzero(ref_mask & keep_region) / np.count_nonzero(ref_mask)
    border = square & ~circle
    spill = np.count_nonzero(ref_mask & border) / max(1, np.count_nonzero(border))
    return kept, spill


@pytest.fixture(scope="session")
def fov_crop_metrics():
    """The :func:`crop_metrics` helper."""
    return crop_metrics
