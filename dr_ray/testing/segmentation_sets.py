"""Synthetic segmentation training sets written as files, so the training code only ever reads files.

``write_synthetic_set(root, seeds, size, lesions=...)`` renders ``make_fundus(seed, size, size, ...)`` per seed and
writes, under ``root`` (local path or URI):

    images/<seed>.png              (size, size, 3) RGB
    vessels/<seed>.png             vessel tree, {0, 255}
    fov/<seed>.png                 field of view, {0, 255}
    lesions/<kind>/<seed>.png      one {0, 255} mask per lesion kind (only with ``lesions=True``)

The PNGs are lossless, so a loader sees exactly the rendered arrays. ``train-vessels`` / ``train-lesions`` with
no datasets (the demo, CI) write theirs under ``<output.dir>/<name>/synthetic_data``.
"""

from __future__ import annotations

import cv2
import numpy as np

from dr_ray.io import fs
from dr_ray.testing.fundus import make_fundus


def _png(a: np.ndarray) -> bytes:
    if a.ndim == 3:
        a = a[..., ::-1]  # RGB -> OpenCV's BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise ValueError(f"could not encode a {a.shape} {a.dtype} array as PNG")
    return buf.tobytes()


def write_synthetic_set(root: str, seeds, size: int, *, lesions: bool, grade: int | None = None) -> list[dict]:
    """Render and write one frame per seed (``lesions=False``: ``make_fundus(seed, size, size, lesions=False)``,
    else ``make_fundus(seed, size, size, grade=grade)``); returns per seed ``{"image_id": "synthetic/<seed>",
    "path", "vessel_mask_path", "fov_mask_path", "lesion_mask_paths": {kind: path}}`` (empty dict without
    lesions), in seed order."""
    root = str(root)
    out = []
    for seed in seeds:
        seed = int(seed)
        f = (make_fundus(seed, size, size, lesions=False) if not lesions
             else make_fundus(seed, size, size, grade=grade))
        paths = {"path": fs.join(root, "images", f"{seed}.png"),
                 "vessel_mask_path": fs.join(root, "vessels", f"{seed}.png"),
                 "fov_mask_path": fs.join(root, "fov", f"{seed}.png")}
        arrays = {"path": f.image, "vessel_mask_path": f.vessel_mask.astype(np.uint8) * 255,
                  "fov_mask_path": f.fov_mask.astype(np.uint8) * 255}
        lesion_paths = {}
        if lesions:
            for kind, m in f.lesion_masks.items():
                lesion_paths[kind] = fs.join(root, "lesions", kind, f"{seed}.png")
                arrays[kind] = m.astype(np.uint8) * 255
        for key, a in arrays.items():
            fs.write_bytes(paths.get(key) or lesion_paths[key], _png(a))
        out.append({"image_id": f"synthetic/{seed}", **paths, "lesion_mask_paths": lesion_paths})
    return out


__all__ = ["write_synthetic_set"]
