"""The one paired augmentation of the training loops: a random geometric transform that an image and every map
aligned with it (vessel masks, lesion masks, FOV, lesion probability maps) share, plus intensity jitter of the
image alone. Used by vessel patches (``data.augment``), lesion patches (``lesion_data.augment_lesion_patch``) and
the fusion classifier's rows (``fusion_data.decode_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedTransform:
    """Rotate by ``k`` x 90 degrees, then flip left-right when ``flip``: the 8 symmetries of the square.

    Apply the same instance to the image and to each of its maps, so they move together."""

    k: int = 0
    flip: bool = False

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "PairedTransform":
        """One of the 8, uniformly (draws ``k`` then ``flip`` from ``rng``)."""
        return cls(int(rng.integers(4)), bool(rng.integers(2)))

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """(H, W, ...) array -> the transformed (W or H first, ...) contiguous array; axes 0 and 1 are the image's."""
        a = np.rot90(a, self.k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if self.flip else a)


def jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma 0.8..1.25 (log-uniform), contrast 0.8..1.2 about the mean, brightness -0.1..0.1 (drawn in that
    order). image: float in 0..1 -> float32 in 0..1, same shape."""
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    contrast = float(rng.uniform(0.8, 1.2))
    brightness = float(rng.uniform(-0.1, 0.1))
    image = np.clip(image, 0.0, 1.0) ** gamma
    image = (image - image.mean()) * contrast + image.mean() + brightness
    return np.clip(image, 0.0, 1.0).astype(np.float32)


__all__ = ["PairedTransform", "jitter_intensity"]
