"""The public entry points: :func:`make_fundus` (checks, random streams, compositing, noise, ground truth) and
:func:`encode_jpeg`."""

from __future__ import annotations

import cv2
import numpy as np

from dr_ray.io.columns import LESION_KINDS
from dr_ray.testing.fundus.background import draw_background
from dr_ray.testing.fundus.geometry import draw_geometry
from dr_ray.testing.fundus.lesions import draw_lesions
from dr_ray.testing.fundus.result import (
    ARTERY,
    EYES,
    NODE_ENDPOINT,
    NODE_JUNCTION,
    NODE_ROOT,
    STYLES,
    VEIN,
    SyntheticFundus,
)
from dr_ray.testing.fundus.tubes import rasterise_tubes, support_slices
from dr_ray.testing.fundus.vessels import grow_vessel_tree

# Grade drawn when make_fundus(grade=None): DR-enriched compared with EyePACS (73% grade 0) so that a
# handful of seeds already shows every grade.
_GRADE_PROBS = (0.40, 0.15, 0.25, 0.10, 0.10)

# Colour multipliers (R, G, B) at full "darkness". Vessels absorb mostly green, veins more than arteries.
# (The lesion colours are in lesions.py.)
_ARTERY_TINT = np.array([0.86, 0.60, 0.70], np.float32)
_VEIN_TINT = np.array([0.58, 0.34, 0.48], np.float32)


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
    geo = draw_geometry(r_geo, width, height, style, notch, crop_top_bottom, eye)
    shape = (height, width)

    # vessel tree -> masks and darkness
    if vessels:
        tb = grow_vessel_tree(r_ves, geo)
        polylines, widths, av = tb.polylines, tb.widths, tb.av
    else:
        tb, polylines, widths, av = None, [], [], []
    contrast = [min(1.0, 0.35 + 0.65 * wd / (9.0 * geo.scale)) for wd in widths]
    art = [i for i, a in enumerate(av) if a == ARTERY]
    ven = [i for i, a in enumerate(av) if a == VEIN]
    art_mask, art_dark = rasterise_tubes([polylines[i] for i in art], [widths[i] for i in art],
                                         [contrast[i] * 0.9 for i in art], shape, reflex=True)
    ven_mask, ven_dark = rasterise_tubes([polylines[i] for i in ven], [widths[i] for i in ven],
                                         [contrast[i] for i in ven], shape)
    av_map = art_mask.astype(np.uint8) + 2 * ven_mask.astype(np.uint8)  # 3 where both

    # picture
    img = draw_background(r_bg, geo)
    if lesions:
        masks, darken, brighten = draw_lesions(r_les, geo, grade)
    else:
        masks, darken, brighten = {k: np.zeros(shape, bool) for k in LESION_KINDS}, [], []
    # Layers touch a small part of the frame: apply each inside the bounding box of its support only.
    for alpha, rgb in brighten:
        for sl in support_slices(alpha):
            img[sl] += alpha[sl][..., None] * (rgb - img[sl])
    for alpha, tint in [*darken, (art_dark, _ARTERY_TINT), (ven_dark, _VEIN_TINT)]:
        for sl in support_slices(alpha):
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
