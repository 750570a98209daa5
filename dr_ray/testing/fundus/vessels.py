"""The vessel tree: superior/inferior, arterial/venous trees grown as chains of circular arcs from the disc."""

from __future__ import annotations

import math

import numpy as np

from dr_ray.testing.fundus.geometry import Geometry
from dr_ray.testing.fundus.result import ARTERY, VEIN


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

    def __init__(self, rng: np.random.Generator, geo: Geometry):
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


def grow_vessel_tree(rng: np.random.Generator, geo: Geometry) -> _TreeBuilder:
    """Grow the arterial and venous trees (temporal arcades, nasal trees, papillomacular vessels) from the disc;
    the builder holds their nodes, edges, polylines, widths and artery/vein labels."""
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
