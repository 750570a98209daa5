"""Summary vessel calibers: CRAE / CRVE by the Parr-Hubbard and Knudtson formulas, and the AVR.

All widths are vessel diameters in micrometres (um). The Parr-Hubbard constants (-10.76, +450.02) are in
um^2, so those formulas are only valid for um inputs; convert pixel widths first with
:func:`px_to_um` (and :func:`um_per_px_from_disc` when the image has no calibrated scale). The Knudtson
formulas are scale-free (homogeneous of degree 1), so they work in any unit.

Iterative pairing ("big-6" procedure, Knudtson et al. 2003; Hubbard et al. 1999 used the same scheme
over all measured vessels): sort the widths, combine the largest with the smallest, the second largest
with the second smallest, ...; with an odd count the middle width is carried over unchanged to the next
round; repeat until one value remains. The result grows with the number of widths combined (six equal widths
give a Knudtson CRAE 1.405x that of two), so :func:`dr_ray.vessels.zone.zone_measurements` feeds both formulas a
fixed count (the 6 widest by default) and reports how many it had.

Paper discrepancy (graph-enhanced vascular fusion paper, eqs. 23-24): the text prints
``CRAE = (0.87 D1^2 + 1.01 D2^2)`` and ``CRVE = (0.72 d1^2 + 0.91 d2^2)`` (the square root was probably
lost in typesetting) and omits the cross term ``-0.22 w1 w2`` and the constants ``-10.76`` / ``+450.02``
of Hubbard et al. (1999); it also calls D1, D2 "the highest" diameters, whereas the published pairing
combines the largest with the smallest. We implement the published Hubbard formulas (below) and cite
eqs. 23-24 for where the paper uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# Disc diameter commonly assumed when a fundus image has no calibrated scale (Parr-Hubbard/ARIC use
# ~1800-1850 um); EyePACS and DRIVE carry no per-image scale.
DEFAULT_DISC_DIAMETER_UM = 1800.0


def _check_widths(widths: Sequence[float] | np.ndarray, name: str = "widths") -> np.ndarray:
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of vessel widths, got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name} is empty: at least one vessel width is needed")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {w.tolist()}")
    return w


def _pair_iteratively(widths: np.ndarray, combine: Callable[[float, float], float]) -> float:
    """Big-6 pairing: largest with smallest each round, middle carried over on odd counts."""
    w = sorted(float(x) for x in widths)
    while len(w) > 1:
        n = len(w)
        nxt = [combine(w[i], w[n - 1 - i]) for i in range(n // 2)]  # (smaller, larger)
        if n % 2:
            nxt.append(w[n // 2])
        w = sorted(nxt)
    return w[0]


def _hubbard_artery(w1: float, w2: float) -> float:
    # eq. (23) (Parr-Hubbard arterioles; Hubbard et al. 1999): w1 smaller, w2 larger, um
    v = 0.87 * w1 * w1 + 1.01 * w2 * w2 - 0.22 * w1 * w2 - 10.76
    if v <= 0:
        raise ValueError(f"widths ({w1}, {w2}) are too small for the Parr-Hubbard arteriole formula "
                         "(radicand <= 0): are they in micrometres?")
    return math.sqrt(v)


def _hubbard_vein(w1: float, w2: float) -> float:
    # eq. (24) (Parr-Hubbard venules; Hubbard et al. 1999): w1 smaller, w2 larger, um
    return math.sqrt(0.72 * w1 * w1 + 0.91 * w2 * w2 + 450.02)


def parr_hubbard_crae(widths: Sequence[float] | np.ndarray) -> float:
    """Central retinal arteriolar equivalent, Parr-Hubbard (eq. 23, constants of Hubbard et al. 1999).

    widths: (n,) arteriolar diameters in um, n >= 1 (conventionally the 6 largest in the 0.5-1 DD zone).
    Returns CRAE in um. Pair formula: W = sqrt(0.87 w1^2 + 1.01 w2^2 - 0.22 w1 w2 - 10.76).
    """
    return _pair_iteratively(_check_widths(widths), _hubbard_artery)


def parr_hubbard_crve(widths: Sequence[float] | np.ndarray) -> float:
    """Central retinal venular equivalent, Parr-Hubbard (eq. 24, constants of Hubbard et al. 1999).

    widths: (n,) venular diameters in um, n >= 1. Returns CRVE in um.
    Pair formula: W = sqrt(0.72 w1^2 + 0.91 w2^2 + 450.02).
    """
    return _pair_iteratively(_check_widths(widths), _hubbard_vein)


def knudtson_crae(widths: Sequence[float] | np.ndarray) -> float:
    """CRAE by the revised Knudtson formula (Knudtson et al. 2003): W = 0.88 sqrt(w1^2 + w2^2).

    widths: (n,) arteriolar diameters (any unit, um by convention), n >= 1. Returns CRAE in that unit.
    """
    return _pair_iteratively(_check_widths(widths), lambda a, b: 0.88 * math.hypot(a, b))


def knudtson_crve(widths: Sequence[float] | np.ndarray) -> float:
    """CRVE by the revised Knudtson formula (Knudtson et al. 2003): W = 0.95 sqrt(w1^2 + w2^2).

    widths: (n,) venular diameters (any unit, um by convention), n >= 1. Returns CRVE in that unit.
    """
    return _pair_iteratively(_check_widths(widths), lambda a, b: 0.95 * math.hypot(a, b))


def avr(crae: float, crve: float) -> float:
    """Arteriole-to-venule ratio AVR = CRAE / CRVE (eq. 25); both in the same unit, dimensionless result."""
    for name, v in (("crae", crae), ("crve", crve)):
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(crae) / float(crve)


def um_per_px_from_disc(disc_diameter_px: float, disc_diameter_um: float = DEFAULT_DISC_DIAMETER_UM) -> float:
    """Image scale in um/px from the measured optic-disc diameter (px) and an assumed true diameter (um)."""
    if not (math.isfinite(disc_diameter_px) and disc_diameter_px > 0):
        raise ValueError(f"disc_diameter_px must be finite and > 0, got {disc_diameter_px!r}")
    if not (math.isfinite(disc_diameter_um) and disc_diameter_um > 0):
        raise ValueError(f"disc_diameter_um must be finite and > 0, got {disc_diameter_um!r}")
    return float(disc_diameter_um) / float(disc_diameter_px)


def px_to_um(widths_px: Sequence[float] | np.ndarray, um_per_px: float) -> np.ndarray:
    """Convert widths from px to um: (n,) float px -> (n,) float64 um."""
    if not (math.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"um_per_px must be finite and > 0, got {um_per_px!r}")
    return np.asarray(widths_px, dtype=np.float64) * float(um_per_px)
