"""Lesions: counts per ICDR grade, placement in the FOV, masks and the layers that paint them."""

from __future__ import annotations

import math

import cv2
import numpy as np

from dr_ray.io.columns import LESION_KINDS
from dr_ray.testing.fundus.geometry import Geometry
from dr_ray.testing.fundus.tubes import rasterise_tubes

# Colour multipliers (R, G, B) at full "darkness" and blend targets (RGB) of the lesions; the vessel tints
# are in render.py.
_NEOVESSEL_TINT = np.array([0.72, 0.45, 0.56], np.float32)
_HAEM_TINT = np.array([0.60, 0.30, 0.40], np.float32)
_EXUDATE_RGB = np.array([246, 226, 110], np.float32)
_COTTON_RGB = np.array([232, 208, 182], np.float32)


_LESION_COUNTS = {
    # grade: (MA, HE, EX clusters, SE, IRMA patches, NV patches) as (low, high) inclusive
    0: ((0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((1, 6), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    2: ((4, 15), (1, 8), (0, 4), (0, 2), (0, 0), (0, 0)),
    3: ((10, 30), (20, 40), (2, 8), (1, 5), (0, 3), (0, 0)),
    4: ((8, 25), (6, 30), (1, 6), (0, 4), (0, 2), (1, 3)),
}


def _sample_points(rng: np.random.Generator, geo: Geometry, n: int, margin: float, *,
                   around: tuple[float, float] | None = None, spread: float = 1.0) -> np.ndarray:
    """(n, 2) float (x, y) inside the FOV (>= margin px from its border) and clear of the disc.

    Uniform over the FOV, or, with ``around``, Gaussian (std ``spread`` px) around that point.
    """
    if n == 0:
        return np.zeros((0, 2))
    out = np.zeros((0, 2))
    clear = geo.disc_radius * 1.4 + margin
    for _ in range(50):
        m = 4 * n + 16
        if around is None:
            rr = geo.radius * np.sqrt(rng.random(m))
            ph = rng.uniform(0, 2 * math.pi, m)
            cand = np.stack([geo.cx + rr * np.cos(ph), geo.cy + rr * np.sin(ph)], 1)
        else:
            cand = np.asarray(around) + rng.normal(0.0, spread, (m, 2))
        xi, yi = np.round(cand[:, 0]).astype(np.int64), np.round(cand[:, 1]).astype(np.int64)
        ok = (xi >= 0) & (xi < geo.width) & (yi >= 0) & (yi < geo.height)
        ok[ok] = geo.fov_dist[yi[ok], xi[ok]] >= margin + 1.0
        ok &= np.hypot(cand[:, 0] - geo.disc[0], cand[:, 1] - geo.disc[1]) >= clear
        out = np.concatenate([out, cand[ok]])
        if len(out) >= n:
            return out[:n]
    raise RuntimeError(f"could not place {n} lesions in a FOV of radius {geo.radius:.0f} px")


def _random_walk(rng: np.random.Generator, geo: Geometry, start: np.ndarray, n_steps: int, step: float,
                 turn_deg: float, width: float) -> np.ndarray | None:
    """Tortuous polyline (K, 2) from ``start``; cut where it would leave the FOV or enter the disc."""
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(np.radians(rng.normal(0.0, turn_deg, n_steps)))
    pts = start + np.concatenate([[[0.0, 0.0]], np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], 1), 0)])
    xi = np.clip(np.round(pts[:, 0]).astype(np.int64), 0, geo.width - 1)
    yi = np.clip(np.round(pts[:, 1]).astype(np.int64), 0, geo.height - 1)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] <= geo.width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= geo.height - 1)
    ok &= geo.fov_dist[yi, xi] >= width / 2.0 + 2.0
    ok &= np.hypot(pts[:, 0] - geo.disc[0], pts[:, 1] - geo.disc[1]) >= geo.disc_radius + width / 2.0 + 1.0
    bad = np.flatnonzero(~ok)
    if bad.size:
        pts = pts[: bad[0]]
    return pts if len(pts) >= 2 else None


def draw_lesions(rng: np.random.Generator, geo: Geometry, grade: int):
    """Lesion masks for ``grade`` plus how to paint them: (masks, darken_list, brighten_list).

    darken_list: (alpha (H, W) float32, tint (3,)) multiplied in; brighten_list: (alpha, rgb) blended in.
    """
    h, w, s = geo.height, geo.width, geo.scale
    masks = {k: np.zeros((h, w), bool) for k in LESION_KINDS}
    counts = [int(rng.integers(lo, hi + 1)) for lo, hi in _LESION_COUNTS[grade]]
    n_ma, n_he, n_ex, n_se, n_irma, n_nv = counts
    if grade >= 3 and rng.random() < 0.5:
        n_irma = max(n_irma, 1)
    darken, brighten, tubes = [], [], []

    def blot_alpha(m: np.ndarray, sigma: float, peak: float) -> np.ndarray:
        f = m.astype(np.float32)
        return np.maximum(cv2.GaussianBlur(f, (0, 0), sigma), f) * np.float32(peak)

    # microaneurysms: radius 1-3 px (a 1024-px FOV; at least 1 px at any size)
    ma = np.zeros((h, w), np.uint8)
    for x, y in _sample_points(rng, geo, n_ma, 4.0):
        r = max(1, int(round(rng.uniform(1.0, 3.0) * max(s, 0.6))))
        cv2.circle(ma, (int(round(x)), int(round(y))), r, 1, -1, lineType=cv2.LINE_8)
    masks["ma"] = ma > 0

    # haemorrhages: dot/blot (round-ish) and flame (elongated) ellipses, some as two overlapping blobs
    he = np.zeros((h, w), np.uint8)
    big = 14.0 * s + 2.0
    for x, y in _sample_points(rng, geo, n_he, big):
        for _ in range(1 + int(rng.random() < 0.35)):
            a = rng.uniform(3.0, 12.0) * s + 1.0
            b = a * (rng.uniform(0.25, 0.45) if rng.random() < 0.3 else rng.uniform(0.6, 1.0))
            ox, oy = rng.normal(0.0, 0.3 * a, 2)
            cv2.ellipse(he, (int(round(x + ox)), int(round(y + oy))), (int(round(a)), max(1, int(round(b)))),
                        rng.uniform(0, 180), 0, 360, 1, -1, lineType=cv2.LINE_8)
    masks["he"] = he > 0

    # hard exudates: clusters of small bright yellow flecks, mostly in the posterior pole
    ex = np.zeros((h, w), np.uint8)
    centres = _sample_points(rng, geo, n_ex, 12.0 * s + 4.0, around=geo.macula, spread=0.3 * geo.radius)
    for cx, cy in centres:
        k = int(rng.integers(4, 16))
        spots = _sample_points(rng, geo, k, 4.0, around=(cx, cy), spread=10.0 * s + 2.0)
        for x, y in spots:
            a = max(1, int(round(rng.uniform(1.0, 4.0) * s)))
            b = max(1, int(round(a * rng.uniform(0.5, 1.0))))
            cv2.ellipse(ex, (int(round(x)), int(round(y))), (a, b), rng.uniform(0, 180), 0, 360, 1, -1)
    masks["ex"] = ex > 0

    # soft exudates (cotton-wool spots): larger pale fuzzy patches near the arcades
    se = np.zeros((h, w), np.uint8)
    for x, y in _sample_points(rng, geo, n_se, 22.0 * s + 4.0):
        a = rng.uniform(8.0, 20.0) * s + 1.0
        cv2.ellipse(se, (int(round(x)), int(round(y))), (int(round(a)), max(1, int(round(a * rng.uniform(0.5, 0.9))))),
                    rng.uniform(0, 180), 0, 360, 1, -1)
    masks["se"] = se > 0

    # IRMA: short tortuous fine vessels in the mid-periphery
    irma_lines = []
    for x, y in _sample_points(rng, geo, n_irma, 0.08 * geo.radius):
        for _ in range(int(rng.integers(2, 5))):
            wid = max(1.0, rng.uniform(1.3, 2.0) * s)
            pl = _random_walk(rng, geo, np.array([x, y]) + rng.normal(0, 6 * s, 2), int(rng.integers(6, 14)),
                              max(1.0, 4.0 * s), 40.0, wid)
            if pl is not None:
                irma_lines.append((pl, wid))
    # neovascularisation: fine tangles; the first patch next to the disc (NVD), others elsewhere (NVE)
    nv_lines = []
    i = 0
    while i < n_nv or (n_nv and not nv_lines):  # grade 4 must show neovascularisation
        if i > n_nv + 20:
            raise RuntimeError(f"could not draw neovascularisation in a FOV of radius {geo.radius:.0f} px")
        if i == 0:
            ang = rng.uniform(0, 2 * math.pi)
            dist = geo.disc_radius * rng.uniform(1.6, 2.2)
            centre = np.array([geo.disc[0] + dist * math.cos(ang), geo.disc[1] + dist * math.sin(ang)])
            if geo.fov_dist[int(np.clip(round(centre[1]), 0, h - 1)), int(np.clip(round(centre[0]), 0, w - 1))] < 10:
                centre = _sample_points(rng, geo, 1, 0.1 * geo.radius)[0]
        else:
            centre = _sample_points(rng, geo, 1, 0.1 * geo.radius)[0]
        for _ in range(int(rng.integers(5, 9))):
            wid = max(1.0, rng.uniform(1.0, 1.8) * s)
            pl = _random_walk(rng, geo, centre + rng.normal(0, 5 * s, 2), int(rng.integers(10, 25)),
                              max(1.0, 3.0 * s), 50.0, wid)
            if pl is not None:
                nv_lines.append((pl, wid))
        i += 1
    for kind, lines in (("irma", irma_lines), ("nv", nv_lines)):
        if lines:
            m, dark = rasterise_tubes([p for p, _ in lines], [wd for _, wd in lines], [0.8] * len(lines), (h, w))
            masks[kind] = m
            tubes.append((dark, _NEOVESSEL_TINT))

    darken.append((blot_alpha(masks["ma"], 0.6, 0.9), _HAEM_TINT))
    darken.append((blot_alpha(masks["he"], max(0.8, 1.5 * s), 0.9), _HAEM_TINT))
    darken.extend(tubes)
    brighten.append((blot_alpha(masks["ex"], 0.7, 0.9), _EXUDATE_RGB))
    soft = cv2.GaussianBlur(masks["se"].astype(np.float32), (0, 0), max(1.5, 5.0 * s))
    brighten.append((np.maximum(soft, masks["se"] * np.float32(0.5)) * np.float32(0.7), _COTTON_RGB))
    return masks, darken, brighten
