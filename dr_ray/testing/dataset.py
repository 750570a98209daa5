"""A small synthetic dataset in the Kaggle EyePACS layout: ``train/{patient}_{eye}.jpeg`` + ``trainLabels.csv``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dr_ray.testing.fundus import make_fundus, encode_jpeg

log = logging.getLogger(__name__)

EYE_INDEX = {"left": 0, "right": 1}  # mixed into the per-image seed

# Difference between the two eyes' grades of one patient (right - left): mostly equal, like real data.
_EYE_DELTAS = (-2, -1, 0, 1, 2)
_EYE_DELTA_PROBS = (0.05, 0.15, 0.6, 0.15, 0.05)
# Grades of patients beyond the first five (the first five get 0, 1, 2, 3, 4 in a seeded order).
_PATIENT_GRADE_PROBS = (0.40, 0.15, 0.25, 0.10, 0.10)


def eyepacs_like_grades(n_patients: int, seed: int = 0) -> dict[str, int]:
    """Grades of ``write_eyepacs_like_dataset(..., n_patients, seed=seed)``: ``{"1_left": 0, ...}`` in file order.

    The first five patients' left eyes take grades 0-4 in a seeded order, so every grade appears once
    n_patients >= 5; later patients are drawn with P = 0.40, 0.15, 0.25, 0.10, 0.10. The right eye differs
    from the left by at most 2 grades (0 with p = 0.6), clipped to 0-4.
    """
    if isinstance(n_patients, bool) or not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"n_patients must be an int >= 1, got {n_patients!r}")
    rng = np.random.default_rng([int(seed), 0xE7E])
    first = rng.permutation(5)
    grades = {}
    for p in range(1, n_patients + 1):
        left = int(first[p - 1]) if p <= 5 else int(rng.choice(5, p=_PATIENT_GRADE_PROBS))
        right = int(np.clip(left + rng.choice(_EYE_DELTAS, p=_EYE_DELTA_PROBS), 0, 4))
        grades[f"{p}_left"] = left
        grades[f"{p}_right"] = right
    return grades


def write_eyepacs_like_dataset(root: str | Path, n_patients: int, *, width: int = 1536, height: int = 1024,
                               seed: int = 0, quality: int = 90) -> Path:
    """Write ``2 * n_patients`` synthetic EyePACS-style JPEGs and their labels; return ``root`` as a Path.

    Layout (as Kaggle's EyePACS): ``root/train/{patient}_{left|right}.jpeg`` for patients 1..n and
    ``root/trainLabels.csv`` with header ``image,level`` and one row per image (``10_left,2``), ending in a
    newline. Frames use ``make_fundus(style="eyepacs", eye=...)`` with a per-image seed derived from
    ``seed``; grades come from :func:`eyepacs_like_grades`. Existing files with the same names are overwritten.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 64:
            raise ValueError(f"{name} must be an int >= 64, got {v!r}")
    if width < height:
        raise ValueError(f"EyePACS-style frames need width >= height, got width={width}, height={height}")
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    grades = eyepacs_like_grades(n_patients, seed)
    root = Path(root)
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    for i, (stem, grade) in enumerate(grades.items()):
        patient, eye = stem.split("_")
        image_seed = int(np.random.SeedSequence([int(seed), int(patient), EYE_INDEX[eye]]).generate_state(1)[0])
        fundus = make_fundus(image_seed, width, height, grade=grade, style="eyepacs", eye=eye)
        (train / f"{stem}.jpeg").write_bytes(encode_jpeg(fundus.image, quality))
        log.debug("wrote %s (grade %d) %d/%d", stem, grade, i + 1, len(grades))
    lines = ["image,level", *(f"{stem},{grade}" for stem, grade in grades.items())]
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    log.info("wrote %d synthetic EyePACS-style images (%dx%d) to %s", len(grades), width, height, train)
    return root

