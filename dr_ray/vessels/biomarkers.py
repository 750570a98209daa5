"""Global vascular biomarkers (vessel density, branch points, tortuosity, FD, GLCM over the vasculature) with
explicit "not measurable".

A biomarker that cannot be measured on an input (no vessels, empty field of view, no edge with a defined
chord) is returned as ``Measurement(value=None, reason="...")`` rather than a default number, so a batch job
can store the reason next to a null. Invalid *inputs* (wrong ndim, mismatched shapes) still raise
``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dr_ray.vessels.fractal import MaskTooSmallError, box_counting_fd
from dr_ray.vessels.graph import NODE_JUNCTION, VesselGraph
from dr_ray.vessels.texture import GLCM_PROPS, glcm_features


@dataclass(frozen=True)
class Measurement:
    """A measured value, or ``value=None`` with a human-readable ``reason`` why it could not be measured.

    A value can also carry a ``reason``: a caveat that makes it less comparable with other images' values
    (e.g. a CRAE combined from fewer arterioles than the fixed count); ``ok`` is still True.
    """

    value: float | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None

    def as_float(self) -> float:
        """The value, or NaN when not measured (for numeric columns)."""
        return float("nan") if self.value is None else float(self.value)


def _check_mask(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def vessel_density(mask: np.ndarray, fov: np.ndarray | None = None) -> Measurement:
    """Fraction of field-of-view pixels that are vessel (dimensionless, 0..1).

    mask: (H, W) bool vessel mask; fov: (H, W) bool field of view, None for the whole frame. Vessel pixels
    outside the FOV are ignored. Not measurable when the FOV is empty.
    """
    mask = _check_mask(mask, "mask")
    fov = np.ones_like(mask) if fov is None else _check_mask(fov, "fov")
    if fov.shape != mask.shape:
        raise ValueError(f"fov shape {fov.shape} does not match mask shape {mask.shape}")
    n_fov = int(fov.sum())
    if n_fov == 0:
        return Measurement(None, "field-of-view mask is empty")
    return Measurement(float(np.count_nonzero(mask & fov)) / n_fov)


def branch_point_count(graph: VesselGraph) -> int:
    """Number of junction nodes (degree >= 3, junction clusters contracted); 0 for an empty graph."""
    return int(np.count_nonzero(graph.node_kind == NODE_JUNCTION))


def mean_tortuosity(graph: VesselGraph, *, min_length_px: float = 10.0, length_weighted: bool = True) -> Measurement:
    """Mean edge tortuosity (arc / chord, dimensionless >= 1) over edges at least ``min_length_px`` long.

    Loops (undefined chord) are skipped. ``length_weighted``: weight each edge by its arc length, so that
    long vessels dominate over short stubs. Not measurable when no edge qualifies.
    """
    if min_length_px < 0:
        raise ValueError(f"min_length_px must be >= 0, got {min_length_px}")
    t = graph.tortuosity
    sel = np.isfinite(t) & (graph.arc_length_px >= min_length_px)
    if not sel.any():
        return Measurement(None, f"no vessel segment of at least {min_length_px} px with a defined chord")
    w = graph.arc_length_px[sel] if length_weighted else np.ones(int(sel.sum()))
    return Measurement(float(np.average(t[sel], weights=w)))


def fractal_dimension(mask: np.ndarray, **kwargs) -> Measurement:
    """:func:`box_counting_fd` (eq. 22) as a Measurement: None with a reason for an empty mask or a vessel
    bounding box too small for three box sizes."""
    mask = _check_mask(mask, "mask")
    if not mask.any():
        return Measurement(None, "no vessel pixels: fractal dimension undefined")
    try:
        return Measurement(box_counting_fd(mask, **kwargs))
    except MaskTooSmallError as e:  # a property of this mask: not measurable, not a caller error
        return Measurement(None, str(e))


def vessel_glcm(mask: np.ndarray, image: np.ndarray, fov: np.ndarray | None = None, *,
                levels: int = 32, homogeneity: str = "paper") -> dict[str, Measurement]:
    """GLCM contrast, correlation, energy, homogeneity and entropy of the green channel over the vasculature
    (paper eqs. 17-20 + entropy; the "mean GLCM descriptors computed over the vasculature" of eq. 28).

    :func:`~dr_ray.vessels.texture.glcm_features` (scikit-image) with the vessel pixels as its mask: only
    pairs of adjacent vessel pixels count (distance 1 px, 4 directions, symmetric, ``levels`` grey
    levels over the inside pixels). Energy is eq. 19's sum of squares (ASM), homogeneity eq. 20's
    sum G / (1 + |i - j|) (``homogeneity="skimage"``: sum G / (1 + (i - j)^2)), entropy -sum G log2 G in bits.

    Args:
        mask: (H, W) bool vessel mask. image: (H, W, 3) uint8 RGB. fov: (H, W) bool, optional: vessel
            pixels outside it are ignored.
        levels: grey levels (3..256; level 0 is reserved for outside pixels).
        homogeneity: ``"paper"`` (eq. 20) | ``"skimage"``.

    Returns:
        ``{"glcm_contrast": ..., "glcm_correlation": ..., "glcm_energy": ..., "glcm_homogeneity": ...,
        "glcm_entropy": ...}``; each ``Measurement(None, reason)`` when there is no vessel pixel (or no
        pair of adjacent ones).
    """
    mask = _check_mask(mask, "mask")
    image = np.asarray(image)
    if image.shape != (*mask.shape, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 matching mask {mask.shape}, got shape {image.shape} "
                         f"dtype {image.dtype}")
    if fov is not None:
        fov = _check_mask(fov, "fov")
        if fov.shape != mask.shape:
            raise ValueError(f"fov shape {fov.shape} does not match mask shape {mask.shape}")
        mask = mask & fov
    keys = [f"glcm_{k}" for k in GLCM_PROPS]
    if not mask.any():
        return {k: Measurement(None, "no vessel pixels: GLCM over the vasculature undefined") for k in keys}
    # pairs need both pixels inside the mask: its bounding box gives the same matrix for less work
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    f = glcm_features(image[box + (1,)], mask[box], levels=levels, homogeneity=homogeneity)
    if all(np.isnan(v) for v in f.values()):
        return {k: Measurement(None, "no two adjacent vessel pixels: GLCM over the vasculature undefined")
                for k in keys}
    return {f"glcm_{k}": Measurement(float(v)) for k, v in f.items()}


def global_biomarkers(mask: np.ndarray, graph: VesselGraph, fov: np.ndarray | None = None,
                      image: np.ndarray | None = None, *, glcm_homogeneity: str = "paper") -> dict[str, Measurement]:
    """The global biomarkers of one image: vessel density, fractal dimension, branch points, tortuosity, and
    with an ``image`` ((H, W, 3) uint8 RGB) the GLCM over the vasculature (:func:`vessel_glcm`:
    ``glcm_contrast``, ``glcm_correlation``, ``glcm_energy``, ``glcm_homogeneity`` (``glcm_homogeneity``
    = ``"paper"``, eq. 20, or ``"skimage"``), ``glcm_entropy`` (bits))."""
    out = {
        "vessel_density": vessel_density(mask, fov),
        "fractal_dimension": fractal_dimension(mask),
        "branch_points": Measurement(float(branch_point_count(graph))),
        "mean_tortuosity": mean_tortuosity(graph),
    }
    if image is not None:
        out.update(vessel_glcm(mask, image, fov, homogeneity=glcm_homogeneity))
    return out
