"""Synthetic fundus photographs with known ground truth, deterministic per seed.

``make_fundus(seed, ...)`` draws a colour fundus frame together with everything a later stage may want
to check itself against: the field-of-view (FOV) mask, the vessel mask, the artery/vein map, the vessel
tree as a graph (nodes, edges, widths, lengths), one mask per lesion kind and the ICDR grade that the
lesion load implies.

Conventions (shared by every array in :class:`SyntheticFundus`):

* Coordinates are frame pixels, ``x`` to the right and ``y`` down, with pixel ``(row=i, col=j)`` centred
  at ``(x=j, y=i)`` (OpenCV's convention), so ``mask[round(y), round(x)]`` is the pixel under a point.
* The optic disc is nasal: on the image's right for a right eye, on its left for a left eye
  (anatomical orientation, as most EyePACS images are stored).
* Every mask is the exact set of pixels the renderer drew for that object: a vessel pixel is one whose
  centre lies within ``width / 2`` of its segment's centreline polyline; the image adds an
  antialiased, blurred appearance on top of the same geometry.
* ``vessel_mask`` is the vessel tree only. Neovascularisation and IRMA are drawn as fine vessels in the
  image but live in ``lesion_masks["nv"]`` / ``lesion_masks["irma"]``, not in ``vessel_mask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dr_ray.io.columns import LESION_KINDS


STYLES = ("centered", "eyepacs")
EYES = ("left", "right")

NODE_ROOT, NODE_JUNCTION, NODE_ENDPOINT = 0, 1, 2
ARTERY, VEIN, CROSSING = 1, 2, 3

# Grade drawn when make_fundus(grade=None): DR-enriched compared with EyePACS (73% grade 0) so that a
# handful of seeds already shows every grade.
_GRADE_PROBS = (0.40, 0.15, 0.25, 0.10, 0.10)

# Colour multipliers (R, G, B) at full "darkness". Vessels absorb mostly green, veins more than arteries.
_ARTERY_TINT = np.array([0.86, 0.60, 0.70], np.float32)
_VEIN_TINT = np.array([0.58, 0.34, 0.48], np.float32)
_NEOVESSEL_TINT = np.array([0.72, 0.45, 0.56], np.float32)
_HAEM_TINT = np.array([0.60, 0.30, 0.40], np.float32)
_EXUDATE_RGB = np.array([246, 226, 110], np.float32)
_COTTON_RGB = np.array([232, 208, 182], np.float32)


@dataclass(frozen=True, eq=False)
class SyntheticFundus:
    """One synthetic fundus frame and its ground truth (see the module docstring for conventions).

    ``eq=False``: instances compare by identity; compare the arrays with ``np.array_equal``.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole camera frame
    fov_mask: np.ndarray  # (H, W) bool, fundus pixels inside the frame (circle minus notch, clipped to the frame)
    vessel_mask: np.ndarray  # (H, W) bool, the vessel tree
    av_map: np.ndarray  # (H, W) uint8: 0 background, 1 artery, 2 vein, 3 crossing (both)
    lesion_masks: dict[str, np.ndarray]  # LESION_KINDS -> (H, W) bool
    grade: int  # ICDR 0-4 implied by the lesion load
    fov_center: tuple[float, float]  # (cx, cy) px; the circle may extend beyond the frame
    fov_radius: float  # px
    disc_center: tuple[float, float]  # (x, y) px
    disc_radius: float  # px
    macula_center: tuple[float, float]  # (x, y) px, the fovea
    nodes: np.ndarray  # (N, 2) float64 (x, y) px: roots at the disc, junctions, endpoints
    node_kind: np.ndarray  # (N,) uint8: 0 root, 1 junction (degree 3), 2 endpoint (degree 1)
    edges: np.ndarray  # (E, 2) int64 (parent, child) node indices, one per drawn segment
    edge_width_px: np.ndarray  # (E,) float64, drawn diameter (constant along a segment)
    edge_av: np.ndarray  # (E,) uint8, 1 artery / 2 vein
    edge_length_px: np.ndarray  # (E,) float64, centreline polyline length as drawn
    eye: str  # "left" | "right"
    # E arrays (K_e, 2) float64 (x, y): each segment's centreline as drawn, from parent to child node
    edge_polylines: tuple[np.ndarray, ...]

    @property
    def n_roots(self) -> int:
        """Number of vessel trees (one root node each)."""
        return int(np.count_nonzero(self.node_kind == NODE_ROOT))


# --------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _Geometry:
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


def _geometry(rng: np.random.Generator, width: int, height: int, style: str, notch: bool | None,
              crop_top_bottom: float | None, eye: str) -> _Geometry:
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
    return _Geometry(height=height, width=width, cx=cx, cy=cy, radius=radius, fov_mask=fov, fov_dist=fov_dist,
                     disc=disc, disc_radius=disc_r * radius, macula=macula, temporal_sign=tsign,
                     scale=radius / 512.0)


# --------------------------------------------------------------------------------------------------
# tubes: the one rasteriser behind vessels, IRMA and neovascularisation


def _tube_pixels(pts: np.ndarray, width: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels near a polyline: (flat indices, distance px to the polyline) for distance <= width/2 + 1.

    pts: (K, 2) float (x, y), K >= 2. Distances are exact point-to-segment distances from pixel centres;
    a pixel may appear more than once (neighbouring segments); callers reduce with min/max.
    """
    h, w = shape
    a, b = pts[:-1], pts[1:]
    d = b - a
    seg_len2 = np.maximum((d * d).sum(1), 1e-12)
    reach = width / 2.0 + 1.0
    hb = int(math.ceil(math.sqrt(float(seg_len2.max())) + reach + 1.0))
    offs = np.arange(-hb, hb + 1)
    base = np.floor(a).astype(np.int64)
    xs = base[:, 0, None, None] + offs[None, None, :]  # (S, 1, B)
    ys = base[:, 1, None, None] + offs[None, :, None]  # (S, B, 1)
    px = xs - a[:, 0, None, None]
    py = ys - a[:, 1, None, None]
    t = (px * d[:, 0, None, None] + py * d[:, 1, None, None]) / seg_len2[:, None, None]
    t = np.clip(t, 0.0, 1.0)
    ex = px - t * d[:, 0, None, None]
    ey = py - t * d[:, 1, None, None]
    dist = np.sqrt(ex * ex + ey * ey)  # (S, B, B)
    xs_b = np.broadcast_to(xs, dist.shape)
    ys_b = np.broadcast_to(ys, dist.shape)
    keep = (dist <= reach) & (xs_b >= 0) & (xs_b < w) & (ys_b >= 0) & (ys_b < h)
    return (ys_b[keep] * w + xs_b[keep]), dist[keep]


def _support(alpha: np.ndarray) -> list[tuple[slice, slice]]:
    """[bounding box (row slice, col slice) of alpha's non-zero pixels], or [] when alpha is all zero."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(alpha[rows[0]: rows[-1] + 1].any(axis=0))
    return [(slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))]


def _rasterise_tubes(polylines: list[np.ndarray], widths: list[float], contrasts: list[float],
                     shape: tuple[int, int], reflex: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask and darkness map of tubes of given diameters along polylines.

    Returns ``mask`` (H, W) bool (pixel centre within width/2 of some centreline) and ``dark``
    (H, W) float32 in [0, 1]: the max over tubes of contrast x an absorption profile (chord length through
    a cylinder, antialiased over the last pixel; with ``reflex`` wide tubes get a bright central stripe).
    """
    h, w = shape
    mask = np.zeros(h * w, bool)
    dark = np.zeros(h * w, np.float32)
    if not polylines:
        return mask.reshape(h, w), dark.reshape(h, w)
    all_idx, all_val = [], []
    for pts, width, contrast in zip(polylines, widths, contrasts):
        idx, dist = _tube_pixels(pts, width, shape)
        r = width / 2.0
        mask[idx[dist <= r]] = True
        cover = np.clip(r + 0.5 - dist, 0.0, 1.0)
        chord = np.sqrt(np.clip(1.0 - (dist / (r + 0.5)) ** 2, 0.0, 1.0))
        val = contrast * cover * (0.45 + 0.55 * chord)
        if reflex and width >= 5.0:
            val *= 1.0 - 0.35 * np.exp(-((dist / (0.2 * width)) ** 2))
        all_idx.append(idx)
        all_val.append(val.astype(np.float32))
    np.maximum.at(dark, np.concatenate(all_idx), np.concatenate(all_val))
    return mask.reshape(h, w), dark.reshape(h, w)


# --------------------------------------------------------------------------------------------------
# vessel tree


def _arc(x0: float, y0: float, theta0: float, kappa: float, length: float, step: float,
         wiggle: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> tuple[np.ndarray, float]:
    """Circular arc from (x0, y0) with heading theta0 (rad, y down) and curvature kappa (1/px).

    ``wiggle = (amplitude px, wavelength px, phase rad)`` adds a sideways sinusoid tapered by
    sin^2(pi s / L), which is zero with zero slope at both ends: the end point and the end heading stay
    those of the plain arc, so children join smoothly. Returns (K, 2) points spaced ~``step`` along the
    arc and the end heading.
    """
    n = max(2, int(math.ceil(length / step)) + 1)
    s = np.linspace(0.0, length, n)
    th = theta0 + kappa * s
    if abs(kappa) * length < 1e-6:
        x = x0 + s * math.cos(theta0)
        y = y0 + s * math.sin(theta0)
    else:
        x = x0 + (np.sin(th) - math.sin(theta0)) / kappa
        y = y0 - (np.cos(th) - math.cos(theta0)) / kappa
    amp, lam, phase = wiggle
    if amp:
        off = amp * np.sin(2 * math.pi * s / lam + phase) * np.sin(math.pi * s / length) ** 2
        x = x - off * np.sin(th)
        y = y + off * np.cos(th)
    return np.stack([x, y], axis=1), theta0 + kappa * length


class _TreeBuilder:
    """Grows binary vessel trees as chains of circular arcs, in a canonical frame per tree.

    Canonical frame: origin at the disc, +x temporal, -y towards the tree's own side (superior for a
    superior tree); mapped to the frame by flipping x (right eye) and y (inferior trees). Growth stops at
    the FOV border (keeping width/2 + 2 px inside), at the foveal avascular zone and at a minimum width.
    """

    def __init__(self, rng: np.random.Generator, geo: _Geometry):
        self.rng = rng
        self.geo = geo
        self.nodes: list[tuple[float, float]] = []
        self.is_root: list[bool] = []
        self.edges: list[tuple[int, int]] = []
        self.widths: list[float] = []
        self.av: list[int] = []
        self.polylines: list[np.ndarray] = []
        self.step = max(1.5, 3.0 * geo.scale)  # sagitta of a 3-px chord on a 100-px radius: 0.01 px
        self.min_width = max(1.5, 2.2 * geo.scale)  # >= 1.5: a rounded node (<= 0.71 px off) stays in its vessel
        self.faz = 0.09 * geo.radius

    def _to_frame(self, pts: np.ndarray, flip_y: float) -> np.ndarray:
        g = self.geo
        out = np.empty_like(pts)
        out[:, 0] = g.disc[0] + g.temporal_sign * pts[:, 0]
        out[:, 1] = g.disc[1] + flip_y * pts[:, 1]
        return out

    def _segment(self, x0: float, y0: float, theta: float, kappa: float, length: float, width: float,
                 flip_y: float):
        """Arc in canonical coords, truncated where it leaves the allowed region; None when too short."""
        g = self.geo
        rng, R = self.rng, g.radius
        wiggle = (rng.uniform(0.0, 0.008) * R, rng.uniform(0.08, 0.2) * R, rng.uniform(0, 2 * math.pi))
        pts, theta_end = _arc(x0, y0, theta, kappa, length, self.step, wiggle)
        frame = self._to_frame(pts, flip_y)
        xi = np.clip(np.round(frame[:, 0]).astype(np.int64), 0, g.width - 1)
        yi = np.clip(np.round(frame[:, 1]).astype(np.int64), 0, g.height - 1)
        inside = (frame[:, 0] >= 0) & (frame[:, 0] <= g.width - 1)
        inside &= (frame[:, 1] >= 0) & (frame[:, 1] <= g.height - 1)
        ok = inside & (g.fov_dist[yi, xi] >= width / 2.0 + 2.0)
        ok &= np.hypot(frame[:, 0] - g.macula[0], frame[:, 1] - g.macula[1]) >= self.faz + width / 2.0
        ok[0] = True  # the start is the parent's end, already accepted
        bad = np.flatnonzero(~ok)
        truncated = bad.size > 0
        if truncated:  # a truncated segment ends the branch, so its end heading is never used
            pts, frame = pts[: bad[0]], frame[: bad[0]]
        if len(pts) < 2:
            return None
        seg_len = float(np.hypot(*np.diff(frame, axis=0).T).sum())
        if seg_len < max(3.0 * width, 8.0 * g.scale, 4.0):
            return None
        return pts, frame, theta_end, truncated

    def _add_edge(self, parent: int, frame_pts: np.ndarray, width: float, av: int) -> int:
        child = len(self.nodes)
        self.nodes.append((float(frame_pts[-1, 0]), float(frame_pts[-1, 1])))
        self.is_root.append(False)
        self.edges.append((parent, child))
        self.widths.append(width)
        self.av.append(av)
        self.polylines.append(frame_pts)
        return child

    def tree(self, av: int, flip_y: float, theta0: float, kappa0: float, width0: float, max_depth: int,
             arcade: bool) -> None:
        rng, R = self.rng, self.geo.radius
        rdisc = self.geo.disc_radius
        # Roots scattered a little inside the disc, so trunks don't start on one pixel.
        rx, ry = rng.uniform(-0.25, 0.25) * rdisc, rng.uniform(-0.3, 0.05) * rdisc
        width0 = max(width0, self.min_width)  # small frames: no sub-pixel trunks
        trunk = self._segment(rx, ry, theta0, kappa0, rng.uniform(0.12, 0.2) * R, width0, flip_y)
        if trunk is None:
            return
        root = len(self.nodes)
        start = self._to_frame(np.array([[rx, ry]]), flip_y)[0]
        self.nodes.append((float(start[0]), float(start[1])))
        self.is_root.append(True)
        pts, frame, theta, truncated = trunk
        child = self._add_edge(root, frame, width0, av)
        if not truncated:
            self._grow(child, pts[-1], theta, kappa0, width0, 1, max_depth, av, flip_y, arcade)

    def _grow(self, node: int, p: np.ndarray, theta: float, kappa: float, width: float, depth: int,
              max_depth: int, av: int, flip_y: float, arcade: bool) -> None:
        if depth > max_depth:
            return
        rng, R = self.rng, self.geo.radius
        ratio = rng.uniform(0.5, 0.85)
        w_major = width / (1.0 + ratio ** 3) ** (1.0 / 3.0)  # Murray's law: w^3 = w1^3 + w2^3
        w_minor = ratio * w_major
        if w_minor < self.min_width:
            return
        # Arcades send most side branches outward (to the periphery, away from the macula).
        side = -1.0 if (rng.random() < (0.7 if arcade else 0.5)) else 1.0
        th_major = theta - side * math.radians(rng.uniform(4.0, 18.0))
        th_minor = theta + side * math.radians(rng.uniform(35.0, 65.0))
        # an arcade keeps bending around the macula; other branches straighten out
        bend = rng.uniform(0.85, 1.05) if arcade else rng.uniform(0.5, 0.9)
        k_major = kappa * bend + rng.normal(0.0, 0.25) / R
        k_minor = rng.normal(0.0, 0.9) / R
        if arcade:
            l_major = R * rng.uniform(0.2, 0.3) * 0.95 ** depth
        else:
            l_major = R * rng.uniform(0.16, 0.26) * 0.9 ** depth
        l_minor = R * rng.uniform(0.18, 0.34) * 0.85 ** depth
        if arcade and side > 0:
            l_minor *= 0.6  # inward arcade branches (towards the macula) stay short
        major = self._segment(p[0], p[1], th_major, k_major, l_major, w_major, flip_y)
        minor = self._segment(p[0], p[1], th_minor, k_minor, l_minor, w_minor, flip_y)
        if major is None or minor is None:
            return  # no bifurcation here: node stays an endpoint (degree 1)
        for (pts, frame, th_end, truncated), w, k, still_arcade in ((major, w_major, k_major, arcade),
                                                                    (minor, w_minor, k_minor, False)):
            child = self._add_edge(node, frame, w, av)
            if not truncated:
                self._grow(child, pts[-1], th_end, k, w, depth + 1, max_depth, av, flip_y, still_arcade)


def _vessel_tree(rng: np.random.Generator, geo: _Geometry) -> _TreeBuilder:
    s, R = geo.scale, geo.radius
    tb = _TreeBuilder(rng, geo)
    for flip_y in (1.0, -1.0):  # superior, inferior
        for av in (ARTERY, VEIN):
            # temporal arcade: leaves the disc nearly vertically and curves around the macula
            w0 = (rng.uniform(9.5, 11.0) if av == ARTERY else rng.uniform(12.5, 14.0)) * s
            theta0 = math.radians(rng.uniform(-88.0, -62.0))
            kappa0 = rng.uniform(1.0 / 0.85, 1.0 / 0.6) / R  # ~105 deg of turn over ~1.4 R
            tb.tree(av, flip_y, theta0, kappa0, w0, max_depth=6, arcade=True)
            # nasal tree: thinner, roughly straight up/down-nasal
            w0 = (rng.uniform(6.5, 7.5) if av == ARTERY else rng.uniform(8.0, 9.5)) * s
            theta0 = math.radians(rng.uniform(-135.0, -100.0))
            tb.tree(av, flip_y, theta0, rng.normal(0.0, 0.6) / R, w0, max_depth=4, arcade=False)
        # a small papillomacular vessel heading for the macula
        av = ARTERY if rng.random() < 0.5 else VEIN
        theta0 = math.radians(rng.uniform(-25.0, -5.0))
        tb.tree(av, flip_y, theta0, rng.normal(0.0, 0.5) / R, rng.uniform(4.0, 5.0) * s, max_depth=2, arcade=False)
    return tb


# --------------------------------------------------------------------------------------------------
# background


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """(H, W) float32 smooth noise, unit-ish std, features ~``cell`` px (bicubic upsampling of a coarse grid)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _local(geo: _Geometry, x: float, y: float, r: float):
    """Slices of the frame box around (x, y) with half-size r, and its (dy, dx) offset grids in px; None if empty."""
    x0, x1 = max(0, int(math.floor(x - r))), min(geo.width, int(math.ceil(x + r)) + 1)
    y0, y1 = max(0, int(math.floor(y - r))), min(geo.height, int(math.ceil(y + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
    return (slice(y0, y1), slice(x0, x1)), dy, dx


def _background(rng: np.random.Generator, geo: _Geometry) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# lesions


_LESION_COUNTS = {
    # grade: (MA, HE, EX clusters, SE, IRMA patches, NV patches) as (low, high) inclusive
    0: ((0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    1: ((1, 6), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    2: ((4, 15), (1, 8), (0, 4), (0, 2), (0, 0), (0, 0)),
    3: ((10, 30), (20, 40), (2, 8), (1, 5), (0, 3), (0, 0)),
    4: ((8, 25), (6, 30), (1, 6), (0, 4), (0, 2), (1, 3)),
}


def _sample_points(rng: np.random.Generator, geo: _Geometry, n: int, margin: float, *,
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


def _random_walk(rng: np.random.Generator, geo: _Geometry, start: np.ndarray, n_steps: int, step: float,
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


def _lesions(rng: np.random.Generator, geo: _Geometry, grade: int):
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
            m, dark = _rasterise_tubes([p for p, _ in lines], [wd for _, wd in lines], [0.8] * len(lines), (h, w))
            masks[kind] = m
            tubes.append((dark, _NEOVESSEL_TINT))

    darken.append((blot_alpha(masks["ma"], 0.6, 0.9), _HAEM_TINT))
    darken.append((blot_alpha(masks["he"], max(0.8, 1.5 * s), 0.9), _HAEM_TINT))
    darken.extend(tubes)
    brighten.append((blot_alpha(masks["ex"], 0.7, 0.9), _EXUDATE_RGB))
    soft = cv2.GaussianBlur(masks["se"].astype(np.float32), (0, 0), max(1.5, 5.0 * s))
    brighten.append((np.maximum(soft, masks["se"] * np.float32(0.5)) * np.float32(0.7), _COTTON_RGB))
    return masks, darken, brighten


# --------------------------------------------------------------------------------------------------
# public


def make_fundus(seed: int, width: int = 1024, height: int = 1024, *, grade: int | None = None,
                style: str = "centered", notch: bool | None = None, crop_top_bottom: float | None = None,
                vessels: bool = True, lesions: bool = True, eye: str | None = None) -> SyntheticFundus:
    """Draw one synthetic fundus frame with its ground truth; identical output for identical arguments.

    Args:
        seed: non-negative int; everything is drawn from ``np.random.default_rng(seed)`` (split into
            independent streams for geometry, vessels, background, lesions and noise, so turning
            ``vessels``/``lesions`` off leaves the other parts unchanged).
        width, height: frame size in px (>= 64 each).
        grade: ICDR grade 0-4 whose lesion load to draw; None draws it from the seed
            (P = 0.40, 0.15, 0.25, 0.10, 0.10).
        style: "centered" - the whole FOV circle (radius ~0.46 of the shorter side) inside the frame;
            "eyepacs" - circle centred in a wide frame with black surround, diameter ~0.98 of the frame
            height, or larger when ``crop_top_bottom`` > 0; requires width >= height.
        notch: cut a small triangular notch into the FOV border (EyePACS cameras do). None: drawn from the
            seed (p = 0.5) in "eyepacs" style, no notch in "centered" style.
        crop_top_bottom: fraction of the FOV diameter cut off by the frame (top and bottom together), in
            [0, 0.3]; the radius becomes ``height / (2 (1 - crop))``. None: 0 or U(0.02, 0.12) (p = 0.5
            each) in "eyepacs" style, 0 in "centered" style.
        vessels: draw the vessel tree (False: empty vessel masks and graph).
        lesions: draw lesions (False: grade 0; passing grade > 0 with lesions=False is an error).
        eye: "left" or "right" (the disc is on the image's right for a right eye); None draws it from the seed.

    Returns:
        :class:`SyntheticFundus`. Sizes are specified at a 1024-px FOV diameter and scale with the FOV
        radius: trunk diameters ~10 px (arteries) / ~13 px (veins) down to ~2 px, MA radius 1-3 px.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 64:
            raise ValueError(f"{name} must be an int >= 64, got {v!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style == "eyepacs" and width < height:
        raise ValueError(f"style='eyepacs' needs width >= height, got width={width}, height={height}")
    if grade is not None and (isinstance(grade, bool) or not isinstance(grade, (int, np.integer))
                              or not 0 <= grade <= 4):
        raise ValueError(f"grade must be an int in 0..4 or None, got {grade!r}")
    if not lesions and grade not in (None, 0):
        raise ValueError(f"grade={grade} needs lesions=True (grade is implied by the lesion load)")
    if crop_top_bottom is not None and not 0.0 <= crop_top_bottom <= 0.3:
        raise ValueError(f"crop_top_bottom must be in [0, 0.3], got {crop_top_bottom!r}")
    if eye is not None and eye not in EYES:
        raise ValueError(f"eye must be one of {EYES} or None, got {eye!r}")
    width, height, seed = int(width), int(height), int(seed)

    rng = np.random.default_rng(seed)
    r_geo, r_ves, r_bg, r_les, r_noise = rng.spawn(5)
    drawn_grade = int(r_geo.choice(5, p=_GRADE_PROBS))
    drawn_eye = EYES[int(r_geo.integers(2))]
    grade = (drawn_grade if grade is None else int(grade)) if lesions else 0
    eye = drawn_eye if eye is None else eye
    geo = _geometry(r_geo, width, height, style, notch, crop_top_bottom, eye)
    shape = (height, width)

    # vessel tree -> masks and darkness
    if vessels:
        tb = _vessel_tree(r_ves, geo)
        polylines, widths, av = tb.polylines, tb.widths, tb.av
    else:
        tb, polylines, widths, av = None, [], [], []
    contrast = [min(1.0, 0.35 + 0.65 * wd / (9.0 * geo.scale)) for wd in widths]
    art = [i for i, a in enumerate(av) if a == ARTERY]
    ven = [i for i, a in enumerate(av) if a == VEIN]
    art_mask, art_dark = _rasterise_tubes([polylines[i] for i in art], [widths[i] for i in art],
                                          [contrast[i] * 0.9 for i in art], shape, reflex=True)
    ven_mask, ven_dark = _rasterise_tubes([polylines[i] for i in ven], [widths[i] for i in ven],
                                          [contrast[i] for i in ven], shape)
    av_map = art_mask.astype(np.uint8) + 2 * ven_mask.astype(np.uint8)  # 3 where both

    # picture
    img = _background(r_bg, geo)
    if lesions:
        masks, darken, brighten = _lesions(r_les, geo, grade)
    else:
        masks, darken, brighten = {k: np.zeros(shape, bool) for k in LESION_KINDS}, [], []
    # Layers touch a small part of the frame: apply each inside the bounding box of its support only.
    for alpha, rgb in brighten:
        for sl in _support(alpha):
            img[sl] += alpha[sl][..., None] * (rgb - img[sl])
    for alpha, tint in [*darken, (art_dark, _ARTERY_TINT), (ven_dark, _VEIN_TINT)]:
        for sl in _support(alpha):
            img[sl] *= 1.0 - alpha[sl][..., None] * (1.0 - tint)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    # sensor noise: a little luminance noise shared by the channels plus independent colour noise
    img += r_noise.standard_normal(shape, dtype=np.float32)[..., None] * np.float32(1.2)
    img += r_noise.standard_normal(img.shape, dtype=np.float32) * np.float32(1.5)
    fov_soft = cv2.GaussianBlur(geo.fov_mask.astype(np.float32), (0, 0), 0.8)[..., None]
    # outside the FOV: near black, 0-3 grey levels of noise
    img = img * fov_soft + np.abs(r_noise.standard_normal(shape, dtype=np.float32))[..., None] * (1.0 - fov_soft)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)

    fov = geo.fov_mask
    vessel_mask = (av_map > 0) & fov  # growth keeps vessels >= 2 px inside the FOV; the & only guards
    av_map[~fov] = 0
    for k in masks:
        masks[k] &= fov

    if tb is not None and tb.nodes:
        nodes = np.asarray(tb.nodes, np.float64)
        edges = np.asarray(tb.edges, np.int64)
        deg = np.bincount(edges.ravel(), minlength=len(nodes))
        kind = np.where(deg >= 3, NODE_JUNCTION, NODE_ENDPOINT)
        kind = np.where(np.asarray(tb.is_root), NODE_ROOT, kind).astype(np.uint8)
        lengths = np.array([float(np.hypot(*np.diff(p, axis=0).T).sum()) for p in polylines])
        edge_polylines = tuple(np.asarray(p, np.float64) for p in polylines)
    else:
        nodes, edges, kind = np.zeros((0, 2)), np.zeros((0, 2), np.int64), np.zeros(0, np.uint8)
        lengths, edge_polylines = np.zeros(0), ()
    return SyntheticFundus(
        image=image, fov_mask=fov, vessel_mask=vessel_mask, av_map=av_map, lesion_masks=masks, grade=grade,
        fov_center=(float(geo.cx), float(geo.cy)), fov_radius=float(geo.radius),
        disc_center=(float(geo.disc[0]), float(geo.disc[1])), disc_radius=float(geo.disc_radius),
        macula_center=(float(geo.macula[0]), float(geo.macula[1])),
        nodes=nodes, node_kind=kind, edges=edges, edge_width_px=np.asarray(widths, np.float64),
        edge_av=np.asarray(av, np.uint8), edge_length_px=lengths, eye=eye, edge_polylines=edge_polylines,
    )


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of ``image``: (H, W, 3) uint8 RGB or (H, W) uint8 grey; ``quality`` 1-100 (OpenCV, 4:2:0)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a non-empty (H, W, 3) or (H, W) uint8 array, got {desc}")
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for an image of shape {image.shape}")
    return buf.tobytes()
