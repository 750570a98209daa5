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

Layout (one module per topic). The API (``make_fundus``, ``encode_jpeg``, ``SyntheticFundus`` and its codes) is
re-exported here: import it from ``dr_ray.testing.fundus``; the drawing steps the modules share are public in
their own module only:

* ``result.py`` - :class:`SyntheticFundus` and the codes its arrays use (``NODE_*``, ``ARTERY`` / ``VEIN`` /
  ``CROSSING``, ``STYLES``, ``EYES``).
* ``geometry.py`` - frame and FOV geometry: the FOV circle, notch and top/bottom crop, disc and macula
  placement, eye side and the size scale.
* ``tubes.py`` - the one tube rasteriser behind vessels, IRMA and neovascularisation, and the support box
  used when compositing layers.
* ``vessels.py`` - the vessel tree: arterial and venous trees grown as chains of circular arcs.
* ``background.py`` - fundus colour, vignetting / uneven illumination, choroidal texture, macula and disc.
* ``lesions.py`` - lesion counts per grade, placement, masks and how to paint them.
* ``render.py`` - :func:`make_fundus` (argument checks, random streams, compositing, sensor noise, ground
  truth assembly) and :func:`encode_jpeg`.
"""

from dr_ray.testing.fundus.render import encode_jpeg, make_fundus
from dr_ray.testing.fundus.result import (
    ARTERY,
    CROSSING,
    EYES,
    NODE_ENDPOINT,
    NODE_JUNCTION,
    NODE_ROOT,
    STYLES,
    VEIN,
    SyntheticFundus,
)

__all__ = [
    "ARTERY",
    "CROSSING",
    "EYES",
    "NODE_ENDPOINT",
    "NODE_JUNCTION",
    "NODE_ROOT",
    "STYLES",
    "VEIN",
    "SyntheticFundus",
    "encode_jpeg",
    "make_fundus",
]
