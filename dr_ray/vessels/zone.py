"""CRAE / CRVE / AVR in the standard measurement zone around the optic disc (paper sect. 3.7, eqs. 23-25).

The zone is the ring 0.5-1.0 disc diameters (DD) from the disc *margin*, i.e. 1.0-1.5 DD from the disc
centre (ARIC / Hubbard et al. 1999 "zone B"; Knudtson et al. 2003). Every artery or vein segment of the
graph with skeleton pixels in the ring is measured there: its width is the mean caliber over those pixels
(``2 * EDT - 1`` of the vessel mask, the caliber :func:`vessel_graph` uses; without the mask, the segment's
whole-path mean ``caliber_mean_px``).

One vessel, counted once: the skeleton graph cuts a vessel into several segments wherever a branch or a
crossing vessel meets it, so segments of the same A/V label that share a graph node lying in (or within
one vessel width of) the ring are merged by connectivity into one vessel, whose width is that of its
widest member (the trunk: a vessel that branches inside the zone is measured before the branching, as in
the Knudtson protocol). Crossings join an artery and a vein, which are never merged. Widths skip the path
pixels within one vessel width of a junction, where the distance transform swells.

A fixed number ``n_vessels`` (6 by default: Knudtson's "big 6") of the widest arterioles and of the widest
venules are combined, by both the Parr-Hubbard formulas (eqs. 23-24, the published Hubbard 1999 constants, in
um) and the revised Knudtson formulas; AVR = CRAE / CRVE (eq. 25). The count is fixed because the iterative
pairing grows with the number of vessels combined: six equal widths give a CRAE ~40% larger than two of the
same widths, so a CRAE over "whatever was found" is not comparable across images. An image with fewer than
``n_vessels`` in the zone keeps its value, but the count used is returned (:func:`zone_measurements`, stored
as ``crae_n_vessels`` / ``crve_n_vessels``) and the value carries the reason "only k of 6 arterioles ...".
Widths are converted to um with ``um_per_px`` or, when it is None, with the scale implied by the detected
disc diameter and an assumed true diameter (``disc_diameter_um``).

Not measurable -> ``Measurement(None, reason)``: disc not found, zone mostly outside the frame, fewer than
two arterioles (CRAE, AVR) or venules (CRVE, AVR) in the zone, or widths too small for the Parr-Hubbard
arteriole formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dr_ray.vessels.biomarkers import Measurement
from dr_ray.vessels.caliber import (
    DEFAULT_DISC_DIAMETER_UM,
    avr,
    knudtson_crae,
    knudtson_crve,
    parr_hubbard_crae,
    parr_hubbard_crve,
    px_to_um,
    um_per_px_from_disc,
)
from dr_ray.vessels.graph import AV_ARTERY, AV_VEIN, VesselGraph
from dr_ray.vessels.graph_features import mask_distance_at
from dr_ray.vessels.optic_disc import OpticDisc

ZONE_KEYS = ("crae_parr_hubbard_um", "crve_parr_hubbard_um", "crae_knudtson_um", "crve_knudtson_um",
             "avr_parr_hubbard", "avr_knudtson")
# widest arterioles / venules combined into CRAE / CRVE (= dr_ray.io.columns.ZONE_VESSEL_COUNTS)
ZONE_COUNT_KEYS = ("crae_n_vessels", "crve_n_vessels")
DEFAULT_CRX_VESSELS = 6  # Knudtson et al. 2003: the six widest arterioles and venules
ZONE_INNER_DD, ZONE_OUTER_DD = 1.0, 1.5  # zone radii from the disc centre, disc diameters
_MIN_IN_IMAGE = 0.5  # fraction of the zone ring that must lie inside the frame


@dataclass(frozen=True)
class ZoneVessel:
    """One vessel crossing the zone: ``av`` 1 artery / 2 vein, ``width_px`` its measured width (px),
    ``angle_deg`` its mean direction from the disc centre (0 = +x, 90 = +y, i.e. down), ``edges`` the graph
    segments merged into it."""

    av: int
    width_px: float
    angle_deg: float
    edges: tuple[int, ...]


def zone_vessels(graph: VesselGraph, disc: OpticDisc, *, mask: np.ndarray | None = None) -> list[ZoneVessel]:
    """Artery/vein vessels crossing the 1.0-1.5 DD ring around ``disc``, deduplicated (module docstring).

    graph: VesselGraph with A/V labels; disc: a found :class:`OpticDisc`; mask: (H, W) bool vessel mask the
    graph was built from, optional (per-pixel caliber in the zone; without it, each segment's mean).
    Returns the vessels sorted by width, widest first. Raises ValueError if the disc was not found.
    """
    if not disc.found:
        raise ValueError(f"disc not found: {disc.reason}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != tuple(graph.shape):
            raise ValueError(f"mask shape {mask.shape} does not match the graph's {graph.shape}")
        mask = mask.astype(bool, copy=False)
    dd = disc.diameter_px
    r_in, r_out = ZONE_INNER_DD * dd, ZONE_OUTER_DD * dd
    cx, cy = disc.cx, disc.cy
    crop = None
    if mask is not None:
        # distance transform only over the zone's bounding box plus a margin wider than any vessel radius
        # (evaluated at the measured pixels only: :func:`mask_distance_at` equals the transform there)
        h, w = mask.shape
        m = math.ceil(r_out + 0.5 * dd)
        y0, y1 = max(0, int(cy) - m), min(h, int(cy) + m + 1)
        x0, x1 = max(0, int(cx) - m), min(w, int(cx) + m + 1)
        crop = (np.ascontiguousarray(mask[y0:y1, x0:x1]), y0, x0) if y1 > y0 and x1 > x0 else None

    # the A/V segments with path pixels in the ring (all paths at once), then each of those
    av_edges = np.flatnonzero(np.isin(graph.av_label, (AV_ARTERY, AV_VEIN)))
    lens = np.array([len(graph.edge_paths[e]) for e in av_edges], np.int64)
    rc_all = (np.concatenate([graph.edge_paths[e] for e in av_edges]) if len(av_edges)
              else np.zeros((0, 2), np.int32))
    dy_all, dx_all = rc_all[:, 0] - cy, rc_all[:, 1] - cx
    rho_all = np.hypot(dx_all, dy_all)
    inz_all = (rho_all >= r_in) & (rho_all <= r_out)
    starts = np.cumsum(lens) - lens
    hit = np.logical_or.reduceat(inz_all, starts) if len(av_edges) else np.zeros(0, bool)
    measured = []  # (edge, its slice of the paths laid end to end, in-zone pixels, pixels measured, reliable)
    for e, a, b in zip(av_edges[hit], starts[hit], (starts + lens)[hit]):
        rc, inz = rc_all[a:b], inz_all[a:b]
        # The distance transform swells where vessels meet: drop path pixels within one vessel width of a
        # junction node; a segment left without 3 such pixels keeps all of them but is "unreliable".
        reach = max(2.0, float(graph.caliber_mean_px[e]))
        clear = np.ones(len(rc), bool)
        for end, n in ((rc[0], graph.edges[e, 0]), (rc[-1], graph.edges[e, 1])):
            if graph.node_degree[int(n)] >= 3:
                clear &= np.hypot(rc[:, 0] - end[0], rc[:, 1] - end[1]) > reach
        reliable = int(np.count_nonzero(inz & clear)) >= 3
        measured.append((int(e), slice(a, b), inz, inz & clear if reliable else inz, reliable))
    if crop is not None and measured:
        d, oy, ox = crop
        sel_rc = np.concatenate([rc_all[sl][sel] for _, sl, _, sel, _ in measured]).astype(np.int64) - (oy, ox)
        ok_all = (sel_rc[:, 0] >= 0) & (sel_rc[:, 0] < d.shape[0]) & (sel_rc[:, 1] >= 0) & (sel_rc[:, 1] < d.shape[1])
        d_all = np.zeros(len(sel_rc))
        d_all[ok_all] = mask_distance_at(d, sel_rc[ok_all, 0], sel_rc[ok_all, 1])
        ends = np.cumsum([np.count_nonzero(sel) for _, _, _, sel, _ in measured])

    members: dict[int, tuple[float, float, bool]] = {}  # edge -> (width px, mean angle, width reliable)
    for k, (e, sl, inz, sel, reliable) in enumerate(measured):
        if crop is not None:
            a = ends[k - 1] if k else 0
            ok = ok_all[a:ends[k]]
            width = float(np.mean(2.0 * d_all[a:ends[k]][ok] - 1.0)) if ok.any() else float(graph.caliber_mean_px[e])
        else:
            width = float(graph.caliber_mean_px[e])
        dy, dx = dy_all[sl], dx_all[sl]
        ang = math.degrees(math.atan2(float(np.mean(np.sin(np.arctan2(dy[inz], dx[inz])))),
                                      float(np.mean(np.cos(np.arctan2(dy[inz], dx[inz]))))))
        members[e] = (width, ang, reliable)

    # union-find: same label, sharing a node in the ring (widened by one vessel width)
    parent = {e: e for e in members}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    by_node: dict[int, list[int]] = {}
    for e in members:
        for n in graph.edges[e]:
            by_node.setdefault(int(n), []).append(e)
    for n, es in by_node.items():
        if len(es) < 2:
            continue
        x, y = float(graph.pos[n, 0]), float(graph.pos[n, 1])
        rho = math.hypot(x - cx, y - cy)
        tol = max(members[e][0] for e in es)
        if not (r_in - tol <= rho <= r_out + tol):
            continue
        for a in es:
            for b in es:
                if a < b and graph.av_label[a] == graph.av_label[b]:
                    parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for e in members:
        groups.setdefault(find(e), []).append(e)
    out = []
    for es in groups.values():
        trunk = max(es, key=lambda e: (members[e][2], members[e][0]))  # widest reliable member
        out.append(ZoneVessel(av=int(graph.av_label[trunk]), width_px=members[trunk][0],
                              angle_deg=members[trunk][1], edges=tuple(sorted(es))))
    return sorted(out, key=lambda v: -v.width_px)


def _zone_in_frame(shape: tuple[int, int], disc: OpticDisc, n: int = 360) -> float:
    """Fraction of the ring's mid-circle (1.25 DD) inside the frame."""
    r = 0.5 * (ZONE_INNER_DD + ZONE_OUTER_DD) * disc.diameter_px
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    x, y = disc.cx + r * np.cos(t), disc.cy + r * np.sin(t)
    h, w = shape
    return float(np.mean((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)))


@dataclass(frozen=True)
class ZoneMeasurements:
    """``biomarkers``: {key: Measurement} for ``ZONE_KEYS``; ``counts``: {``crae_n_vessels``,
    ``crve_n_vessels``: the number of arterioles / venules combined (``min(found, n_vessels)``), None when the
    zone could not be measured at all (disc not found, zone outside the frame)}."""

    biomarkers: dict[str, Measurement]
    counts: dict[str, int | None]


def zone_calibers(graph: VesselGraph, disc: OpticDisc, *, um_per_px: float | None = None,
                  disc_diameter_um: float = DEFAULT_DISC_DIAMETER_UM, n_vessels: int = DEFAULT_CRX_VESSELS,
                  mask: np.ndarray | None = None) -> dict[str, Measurement]:
    """:func:`zone_measurements` without the counts: {key: Measurement} for ``ZONE_KEYS``."""
    return zone_measurements(graph, disc, um_per_px=um_per_px, disc_diameter_um=disc_diameter_um,
                             n_vessels=n_vessels, mask=mask).biomarkers


def zone_measurements(graph: VesselGraph, disc: OpticDisc, *, um_per_px: float | None = None,
                      disc_diameter_um: float = DEFAULT_DISC_DIAMETER_UM, n_vessels: int = DEFAULT_CRX_VESSELS,
                      mask: np.ndarray | None = None) -> ZoneMeasurements:
    """CRAE, CRVE (Parr-Hubbard and Knudtson, um) and AVR from the vessels in the 0.5-1.0 DD zone.

    Args:
        graph: VesselGraph with A/V edge labels (1 artery, 2 vein; others ignored).
        disc: optic disc; not found -> every value None with the disc's reason.
        um_per_px: image scale; None: ``disc_diameter_um / disc.diameter_px``.
        disc_diameter_um: assumed true disc diameter when the scale comes from the disc.
        n_vessels: the fixed number of widest arterioles and of widest venules combined (Knudtson's 6). With
            fewer (but >= 2) in the zone the value is kept with the reason "only k of n arterioles ...";
            with fewer than 2 it is None.
        mask: (H, W) bool vessel mask of the graph, optional: widths from its distance transform over
            the zone pixels (else each segment's whole-path mean caliber).

    Returns:
        :class:`ZoneMeasurements`: CRAE/CRVE in um (eqs. 23-24), AVRs dimensionless (eq. 25), and the
        number of vessels each combines.
    """
    if isinstance(n_vessels, bool) or not isinstance(n_vessels, (int, np.integer)) or n_vessels < 2:
        raise ValueError(f"n_vessels must be an int >= 2, got {n_vessels!r}")
    if um_per_px is not None and not (math.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"um_per_px must be finite and > 0 or None, got {um_per_px!r}")
    n_vessels = int(n_vessels)

    def none(reason: str) -> ZoneMeasurements:
        return ZoneMeasurements({k: Measurement(None, reason) for k in ZONE_KEYS},
                                {k: None for k in ZONE_COUNT_KEYS})

    if not disc.found:
        return none(f"optic disc not found: {disc.reason}")
    if not (math.isfinite(disc.diameter_px) and disc.diameter_px > 0):
        return none(f"optic disc diameter is not usable: {disc.diameter_px!r}")
    frac = _zone_in_frame(tuple(graph.shape), disc)
    if frac < _MIN_IN_IMAGE:
        return none(f"measurement zone (1.0-1.5 disc diameters from the disc centre) is mostly outside the "
                    f"image: {frac:.0%} of it inside")
    scale = um_per_px if um_per_px is not None else um_per_px_from_disc(disc.diameter_px, disc_diameter_um)
    vessels = zone_vessels(graph, disc, mask=mask)  # widest first

    out: dict[str, Measurement] = {}
    counts: dict[str, int | None] = {}
    for av, prefix, name, ph, kn in ((AV_ARTERY, "crae", "arterioles", parr_hubbard_crae, knudtson_crae),
                                     (AV_VEIN, "crve", "venules", parr_hubbard_crve, knudtson_crve)):
        w_px = [v.width_px for v in vessels if v.av == av][:n_vessels]
        counts[f"{prefix}_n_vessels"] = k = len(w_px)
        where = f"{name} in the zone (1.0-1.5 disc diameters from the disc centre)"
        if k < 2:
            reason = f"only {k} of {n_vessels} {where}, need >= 2"
            out[f"{prefix}_parr_hubbard_um"] = Measurement(None, reason)
            out[f"{prefix}_knudtson_um"] = Measurement(None, reason)
            continue
        # fewer than the fixed count: the value is kept, flagged (it is not comparable with n-vessel values)
        caveat = (f"only {k} of {n_vessels} {where}: {prefix.upper()} combines {k}, not comparable with "
                  f"{n_vessels}-vessel values") if k < n_vessels else None
        w = px_to_um(w_px, scale)
        try:
            out[f"{prefix}_parr_hubbard_um"] = Measurement(ph(w), caveat)
        except ValueError as exc:  # Parr-Hubbard arteriole radicand <= 0: implausibly thin vessels
            out[f"{prefix}_parr_hubbard_um"] = Measurement(None, str(exc))
        out[f"{prefix}_knudtson_um"] = Measurement(kn(w), caveat)
    for kind in ("parr_hubbard", "knudtson"):
        a, v = out[f"crae_{kind}_um"], out[f"crve_{kind}_um"]
        if a.ok and v.ok:
            caveat = "; ".join(r for r in (a.reason, v.reason) if r) or None
            out[f"avr_{kind}"] = Measurement(avr(a.value, v.value), caveat)
        else:
            out[f"avr_{kind}"] = Measurement(None, a.reason if not a.ok else v.reason)
    return ZoneMeasurements({k: out[k] for k in ZONE_KEYS}, counts)
