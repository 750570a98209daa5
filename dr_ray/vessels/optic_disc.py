"""Optic disc localisation on a colour fundus photograph: bright compact blob + vessel convergence.

Classic two-cue detector (bright region: Sinthanayothin et al. 1999; vessel convergence: Hoover &
Goldbaum 2003; both combined e.g. by Youssif et al. 2008):

1. work on a copy whose field of view (FOV) is ~``_WORK_FOV_PX`` px across;
2. remove the dark vessels with a grey closing and divide by the large-scale background inside the FOV,
   so that uneven illumination and vignetting cancel (relative brightness, 1 = background);
3. multi-scale centre-surround contrast: mean relative brightness in a disc of radius r minus the mean in
   the annulus r..2r (both normalised over FOV pixels only, so a disc at the FOV rim still scores), for r
   from ``_R_MIN`` to ``_R_MAX`` of the FOV diameter (a flat disc of radius R0 peaks at r = R0);
   candidates are scored contrast x (0.5 + local vessel density / its FOV 90th percentile, capped), the
   vessel map being ``vessel_mask`` when given, else a black top-hat of the green channel;
4. boundary: the bright connected region around the candidate at a level a quarter of the way from the
   background to the blob's peak (raised while the region leaks), in red and in luminance; the larger
   compact region gives centre (centroid) and diameter (equal-area circle). The red channel keeps the
   neuroretinal rim around a much paler cup, which a luminance blob alone would mistake for the disc;
5. acceptance: a candidate is the disc only if its contrast is >= ``min_contrast`` and at least
   ``_MIN_RADIAL_VESSELS`` vessels leave it radially (vessel pixels on a ring at 1.25 r continued on a
   ring at 1.75 r at about the same angle). Candidates are tried best first.

Not found (``found=False`` and a reason, never a guess): empty/black FOV, no blob of enough contrast
(uniform frame, a macula-only field: its best contrast is ~0.05-0.11 against >= 0.19 for every real disc
we measured), or bright blobs without radiating vessels (exudate clusters, cotton-wool spots). Known
limits (measured in benchmarks/train_av_classifier.py, see docs/bench_av.md): a disc inside a large
bright peripapillary atrophy can be missed in favour of the atrophy (DRIVE 34); a bright lesion sitting
on a vessel bifurcation in a frame *without* a disc is occasionally accepted; below ~300 px FOV diameter
the radial-vessel check misses some discs (found=False).

Coordinates: ``cx``, ``cy`` in px of the input image, x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dr_ray.vessels.disk_sums import disk_area, disk_sums, mask_terms

_WORK_FOV_PX = 256  # FOV diameter of the working copy (px): discs are then ~20-70 px across
_R_MIN, _R_MAX, _N_SCALES = 0.035, 0.16, 10  # searched disc radii, fraction of the FOV diameter
_PEAKS_PER_SCALE = 3  # separate maxima kept per scale: a bright lesion may outscore the disc at one scale
_VESSEL_W = 0.025  # closing radius that removes the widest vessels, fraction of the FOV diameter
_V_REF_PCT, _V_CAP = 90.0, 3.0  # vessel density is scored relative to its FOV 90th percentile, capped
_REGION_LEVELS = (0.25, 0.4, 0.55)  # boundary levels tried, fraction of the way from background to peak
_SOLIDITY = 0.85  # a disc region (vessels closed) is nearly convex; leaks into pale patches are not
_MIN_CONTRAST = 0.14  # relative brightness excess of a disc over its surround (real discs: 0.19-0.94)
_RADIAL_SLACK_DEG = 10.0  # angular tolerance between the two rings for a radial vessel
_MIN_RADIAL_VESSELS = 4  # radial vessels a disc must show (real discs: 4-14)


@dataclass(frozen=True)
class OpticDisc:
    """Optic disc found in an image, or ``found=False`` with a ``reason``.

    cx, cy: centre (column, row) in px of the input image (NaN when not found); diameter_px: disc
    diameter in px (NaN when not found); score: the winning candidate's centre-surround contrast of
    relative brightness (dimensionless, ~0.1-1 for real discs; the best value seen when not found).
    """

    found: bool
    cx: float = float("nan")
    cy: float = float("nan")
    diameter_px: float = float("nan")
    score: float = float("nan")
    reason: str | None = None

    @property
    def radius_px(self) -> float:
        return self.diameter_px / 2.0


def _fov_from_red(red: np.ndarray) -> np.ndarray:
    top = float(np.percentile(red, 99.5))
    if top < 12:
        return np.zeros(red.shape, bool)
    m = (red > 0.1 * top).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(red.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _vessel_map(green: np.ndarray, fov: np.ndarray, vessel_width: float) -> np.ndarray:
    """(h, w) float32 >= 0: dark-line strength (black top-hat of green, FOV only), larger for thick vessels."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(vessel_width) + 1,) * 2)
    g = np.where(fov, green, float(np.median(green[fov]))).astype(np.float32)
    bth = cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, k)
    bth[~fov] = 0
    thr = np.percentile(bth[fov], 88)
    m = (bth > thr).astype(np.uint8)
    # vessels form large connected trees; small isolated dark blobs (haemorrhages, noise) are dropped
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] >= max(20.0, 0.002 * np.count_nonzero(fov))
    big[0] = False
    return np.where(big[labels], bth, 0).astype(np.float32)


def detect_optic_disc(image: np.ndarray, fov: np.ndarray | None = None, *, vessel_mask: np.ndarray | None = None,
                      min_contrast: float = _MIN_CONTRAST) -> OpticDisc:
    """Find the optic disc: centre and diameter in px, or ``found=False`` with a reason.

    Args:
        image: (H, W, 3) uint8 RGB fundus photograph.
        fov: (H, W) bool field of view; None: the largest component of red > 10 % of its robust maximum.
        vessel_mask: (H, W) bool vessel segmentation, optional; when given it is the vessel map for the
            convergence score and the radial-vessel check, otherwise a black top-hat of the green channel
            (thresholded at its FOV 88th percentile, small components dropped) stands in.
        min_contrast: minimum centre-surround contrast of relative brightness for a disc to be reported.

    Cost: ~0.03 s per image whatever its size (the work is done on a ~256-px copy).

    Returns:
        :class:`OpticDisc`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    if h < 32 or w < 32:
        raise ValueError(f"image must be at least 32x32 px, got {w}x{h}")
    if fov is not None:
        fov = np.asarray(fov)
        if fov.shape != (h, w):
            raise ValueError(f"fov shape {fov.shape} does not match image {(h, w)}")
        fov = fov.astype(bool, copy=False)
    if vessel_mask is not None:
        vessel_mask = np.asarray(vessel_mask)
        if vessel_mask.shape != (h, w):
            raise ValueError(f"vessel_mask shape {vessel_mask.shape} does not match image {(h, w)}")
    if not (math.isfinite(min_contrast) and min_contrast > 0):
        raise ValueError(f"min_contrast must be finite and > 0, got {min_contrast!r}")

    if fov is None:
        fov = _fov_from_red(np.ascontiguousarray(image[..., 0]))
    n_fov = int(np.count_nonzero(fov))
    if n_fov < 0.01 * h * w:
        return OpticDisc(False, reason=f"field of view is empty or tiny ({n_fov} px of {h * w})")
    fov_d = 2.0 * math.sqrt(n_fov / math.pi)  # diameter of a circle with the FOV's area, px
    s = min(1.0, _WORK_FOV_PX / fov_d)  # downscale factor
    ww, hh = max(8, round(w * s)), max(8, round(h * s))
    sx, sy = w / ww, h / hh
    img = cv2.resize(image, (ww, hh), interpolation=cv2.INTER_AREA).astype(np.float32)
    f = cv2.resize(fov.astype(np.uint8), (ww, hh), interpolation=cv2.INTER_NEAREST) > 0
    f = cv2.erode(f.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # drop the dark rim transition
    if not f.any():
        return OpticDisc(False, reason="field of view vanishes at the working resolution")
    d = fov_d * s  # FOV diameter at working scale

    # Brightness: luminance-like mix; the disc is bright in all channels, the red channel alone saturates.
    vessel_w = max(2.0, _VESSEL_W * d)
    radii = np.geomspace(_R_MIN * d, _R_MAX * d, _N_SCALES)
    scales = (0.06 * d, *radii, *(2.0 * radii))  # vessel density, disk, disk + annulus
    wf = f.astype(np.float32)
    wf_bg, w_disk = mask_terms(f.tobytes(), (hh, ww), scales, 0.2 * d)  # the same for a batch: cached
    w_disk = dict(zip(scales, w_disk))
    lum = 0.3 * img[..., 0] + 0.6 * img[..., 1] + 0.1 * img[..., 2]
    rel = _relative(lum, f, vessel_w, d, wf_bg)
    if rel is None:
        return OpticDisc(False, reason="image is black inside the field of view")

    # vessel convergence map (thick vessels weigh more)
    if vessel_mask is not None:
        vm = cv2.resize(vessel_mask.astype(np.float32), (ww, hh), interpolation=cv2.INTER_AREA)
        vmap = (vm * f).astype(np.float32)
    else:
        vmap = _vessel_map(img[..., 1], f, vessel_w)

    # means over FOV pixels only: disk sums of value x FOV weight / disk sums of the weight
    conv = disk_sums([rel * wf, vmap * wf], max(scales))
    # vessel density at a fixed scale (~ a DRIVE disc radius): where the trunks converge
    v_den = conv(1, 0.06 * d) / np.maximum(w_disk[0.06 * d], 1e-6)
    v_ref = float(np.percentile(v_den[f], _V_REF_PCT)) + 1e-6
    v_weight = 0.5 + np.minimum(v_den / v_ref, _V_CAP)
    cands = []  # (score, contrast, x, y, r): the best position at each scale
    for r in radii:
        n_in, n_out, w_in, w_out = conv(0, r), conv(0, 2.0 * r), w_disk[r], w_disk[2.0 * r]
        w_ann = w_out - w_in  # the annulus r..2r is disk(2r) minus disk(r)
        contrast = n_in / np.maximum(w_in, 1e-6) - (n_out - n_in) / np.maximum(w_ann, 1e-6)
        # the disc must be mostly inside the FOV and have a measurable surround
        valid = f & (w_in >= 0.5 * disk_area(r)) & (w_ann >= 0.25 * (disk_area(2.0 * r) - disk_area(r)))
        if not valid.any():
            continue
        score = np.where(valid, contrast * v_weight, -np.inf)
        for _ in range(_PEAKS_PER_SCALE):  # a few separate maxima: a bright lesion may outscore the disc
            i = int(np.argmax(score))
            if not np.isfinite(score.flat[i]):
                break
            y, x = divmod(i, ww)
            cands.append((float(score.flat[i]), float(contrast.flat[i]), x, y, float(r)))
            rr = math.ceil(2 * r)
            y0, y1, x0, x1 = max(0, y - rr), min(hh, y + rr + 1), max(0, x - rr), min(ww, x + rr + 1)
            yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)
            score[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= rr * rr] = -np.inf
    if not cands:
        return OpticDisc(False, reason="field of view too small for a disc-sized window")
    cands.sort(key=lambda c: -c[0])
    best_contrast = max(c[1] for c in cands)
    if best_contrast < min_contrast:
        return OpticDisc(False, score=best_contrast,
                         reason=f"no compact bright region: best disc contrast {best_contrast:.3f} < {min_contrast}")

    rel_chans = [c for c in (_relative(img[..., 0], f, vessel_w, d, wf_bg), rel) if c is not None]
    vessels = vmap > (0.25 if vessel_mask is not None else 0.0)
    tried: list[tuple[int, int, float]] = []
    rejected = []
    for _, contrast, x, y, r in cands:
        if contrast < min_contrast or any(math.hypot(x - tx, y - ty) < tr for tx, ty, tr in tried):
            continue
        tried.append((x, y, r))
        fx, fy, fr = _boundary(rel_chans, f, x, y, r, d)
        n_radial = _radial_vessels(vessels, f, fx, fy, fr)
        if n_radial < _MIN_RADIAL_VESSELS:
            rejected.append(f"({(fx + 0.5) * sx - 0.5:.0f}, {(fy + 0.5) * sy - 0.5:.0f}): contrast {contrast:.2f}, "
                            f"{n_radial} radial vessels")
            continue
        cx, cy = (fx + 0.5) * sx - 0.5, (fy + 0.5) * sy - 0.5
        return OpticDisc(True, cx=float(cx), cy=float(cy), diameter_px=float(2.0 * fr * math.sqrt(sx * sy)),
                         score=contrast)
    return OpticDisc(False, score=best_contrast,
                     reason=f"no bright blob with vessels radiating from it (need >= {_MIN_RADIAL_VESSELS}); "
                            f"candidates: {'; '.join(rejected[:3])}")


def _boundary(rel_chans: list[np.ndarray], fov: np.ndarray, x: int, y: int, r: float, d: float
              ) -> tuple[float, float, float]:
    """Disc centre and radius (working px) from the bright region around a blob at (x, y) of radius r.

    The region is taken in red (shows the whole disc, but saturates in some cameras) and in luminance
    (where a pale cup dominates); the larger compact one wins; without one the blob itself is returned.
    The window allows a disc ~3x wider than the blob (the blob may be the cup only).
    """
    r_max = min(max(2.5 * r, 0.17 * d), 0.2 * d)
    regions = []
    for rel_c in rel_chans:
        for frac in _REGION_LEVELS:  # raise the level until the region stops leaking
            reg = _disc_region(rel_c, fov, x, y, r, r_max, frac)
            if reg is not None:
                regions.append(reg)
                break
    return max(regions, key=lambda t: t[2]) if regions else (float(x), float(y), r)


def _relative(chan: np.ndarray, fov: np.ndarray, vessel_w: float, d: float, wf_bg: np.ndarray) -> np.ndarray | None:
    """Vessel-free brightness relative to the FOV's large-scale background (1 = background), or None if black.

    chan: (h, w) float32 working-scale channel; grey closing with a disc wider than the widest vessel
    removes them; background = FOV-normalised Gaussian (sigma 0.2 FOV diameters; ``wf_bg``: the FOV so blurred).
    """
    fill = float(np.median(chan[fov]))
    if fill < 1.0:
        return None
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(vessel_w) + 1,) * 2)
    c = cv2.morphologyEx(np.where(fov, chan, fill).astype(np.float32), cv2.MORPH_CLOSE, k)
    bg = cv2.GaussianBlur(c * fov.astype(np.float32), (0, 0), 0.2 * d) / np.maximum(wf_bg, 1e-6)
    return np.where(fov, c / np.maximum(bg, 1.0), 1.0).astype(np.float32)


def _disc_region(rel: np.ndarray, fov: np.ndarray, x: int, y: int, r0: float, r_max: float,
                 frac: float, crop: bool = True) -> tuple[float, float, float] | None:
    """Disc as the bright connected region around (x, y) in one relative-brightness map, or None.

    Threshold: ``frac`` of the way from the background (rel = 1) to the blob's bright level (95th
    percentile within r0); a low fraction keeps the neuroretinal rim around a much brighter cup. The region is
    limited to a window of radius ``r_max``; one that fills it (leaks into bright surroundings) or is not
    compact (solidity < ``_SOLIDITY`` = 0.85) or whose centroid lies more than 0.6 radii from (x, y) is
    rejected. Returns (x, y, radius) in working px: centroid and the radius of
    the circle with the same area. ``crop``: work on the window's bounding box (the same result, cheaper).
    """
    # all of it happens in the window: work on its bounding box (even offsets: same 2 x 2 blocks of the
    # labelling, hence the same label order; the label order only matters for the tie below)
    big = math.ceil(max(r0, r_max)) + 2
    y0, x0 = max(0, y - big) // 2 * 2 if crop else 0, max(0, x - big) // 2 * 2 if crop else 0
    full = (rel, fov)
    rel, fov = (a[y0:y + big + 1, x0:x + big + 1] if crop else a for a in full)
    yy, xx = np.arange(y0, y0 + rel.shape[0])[:, None], np.arange(x0, x0 + rel.shape[1])
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    core = fov & (d2 <= r0 * r0)
    if not core.any():
        return None
    peak = float(np.percentile(rel[core], 95))
    if peak <= 1.02:
        return None
    thr = 1.0 + frac * (peak - 1.0)
    window = fov & (d2 <= r_max * r_max)
    m = (window & (rel > thr)).astype(np.uint8)
    n, labels = cv2.connectedComponents(m, connectivity=8)
    lab = labels[y - y0, x - x0]
    if lab == 0:
        # the centre pixel itself may sit on a dark gap: take the component with most pixels in the core
        counts = np.bincount(labels[core], minlength=n)
        counts[0] = 0
        lab = int(np.argmax(counts))
        if counts[lab] == 0:
            return None
        if crop and np.count_nonzero(counts == counts[lab]) > 1:  # a tie: decided by the full frame's label order
            return _disc_region(*full, x, y, r0, r_max, frac, crop=False)
    reg = labels == lab
    area = float(np.count_nonzero(reg))
    # touching the window's border means the region continues beyond it: not a bounded disc
    ring = window & (d2 >= (r_max - 1.5) ** 2)
    if np.count_nonzero(reg & ring) > 0.05 * max(1, np.count_nonzero(ring)):
        return None
    cnts, _ = cv2.findContours(reg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = max(float(cv2.contourArea(cv2.convexHull(np.concatenate(cnts)))), 1.0)
    if area / hull_area < _SOLIDITY or area < 4:
        return None
    ry, rx = np.nonzero(reg)
    cx, cy, rad = float((rx + x0).mean()), float((ry + y0).mean()), math.sqrt(area / math.pi)
    # The blob sits inside the disc (a pale cup lies off-centre, but within ~half the radius); a region
    # whose centre is far from it is mostly something else (a pale patch beside the disc).
    if math.hypot(cx - x, cy - y) > 0.6 * rad:
        return None
    return cx, cy, rad


def _radial_vessels(vessels: np.ndarray, fov: np.ndarray, x: float, y: float, r: float) -> int:
    """Vessels leaving a disc of radius r at (x, y): runs of vessel pixels on the ring at 1.25 r that have
    vessel pixels on the ring at 1.75 r within +-_RADIAL_SLACK_DEG (a vessel passing by crosses at an angle)."""
    n = 180  # 2 degrees per sample
    ang = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    hits = []
    for rho in (1.25 * r, 1.75 * r):
        xs = np.round(x + rho * np.cos(ang)).astype(np.int64)
        ys = np.round(y + rho * np.sin(ang)).astype(np.int64)
        ok = (xs >= 0) & (xs < vessels.shape[1]) & (ys >= 0) & (ys < vessels.shape[0])
        h = np.zeros(n, bool)
        h[ok] = vessels[ys[ok], xs[ok]] & fov[ys[ok], xs[ok]]
        hits.append(h)
    inner, outer = hits
    k = int(_RADIAL_SLACK_DEG // 2)
    near = np.zeros(n, bool)
    for sh in range(-k, k + 1):
        near |= np.roll(outer, sh)
    if inner.all():
        return 1
    starts = np.flatnonzero(inner & ~np.roll(inner, 1))
    count = 0
    for st in starts:  # each run of the inner ring is one vessel; keep it if it continues outwards
        run = [st]
        j = (st + 1) % n
        while inner[j] and j != st:
            run.append(j)
            j = (j + 1) % n
        count += bool(near[run].any())
    return count
