"""The ``preprocess`` section: how a fundus photo becomes the stored square image (FOV crop, CLAHE, optional
Graham normalisation, extra maps, decode on CPU or GPU) in :class:`PreprocessConfig`, with its nested
``clahe`` (:class:`ClaheConfig`) and ``quality`` (:class:`QualityConfig`, the ``gradable`` flag's limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dr_ray.config.schema.common import check


@dataclass(frozen=True)
class ClaheConfig:
    enabled: bool = True
    clip_limit: float = 2.0  # OpenCV clip limit (relative to the uniform histogram height)
    tile_grid: int = 8  # tiles per side
    channel: Literal["lab_l", "green"] = "lab_l"  # equalise L of CIELAB (keeps colour) or the green channel

    def __post_init__(self) -> None:
        check(0.0 < self.clip_limit <= 40.0, "preprocess.clahe.clip_limit", self.clip_limit, "must be in (0, 40]")
        check(1 <= self.tile_grid <= 64, "preprocess.clahe.tile_grid", self.tile_grid, "must be in 1..64")
        check(self.channel in ("lab_l", "green"), "preprocess.clahe.channel", self.channel, "must be lab_l or green")


@dataclass(frozen=True)
class QualityConfig:
    """Limits for the ``gradable`` flag. Measures are on the processed image inside the FOV."""

    min_fov_fraction: float = 0.25  # share of the source frame inside the fundus circle
    min_brightness: float = 0.08  # mean luminance, 0..1
    max_brightness: float = 0.85
    min_contrast: float = 0.03  # std of luminance, 0..1
    # variance of the Laplacian of Gaussian (0..1 intensities) at output size. On the six real EyePACS
    # sample photos at 512 px: 8e-6..6e-5 as taken, 0.6e-6..5e-6 after a 16-px (full-res) blur. Not calibrated
    # against graders' gradability labels: the flag is advisory and rows are kept either way.
    min_sharpness: float = 2e-6
    sharpness_sigma: float = 1.0  # Gaussian sigma (px) before the Laplacian: makes the measure independent of
    # the decode path (DCT-reduced vs full decode + area resize agree within 10%; plain Laplacian: 2x apart)

    def __post_init__(self) -> None:
        for name in ("min_fov_fraction", "min_brightness", "max_brightness", "min_contrast"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"preprocess.quality.{name}", v, "must be in 0..1")
        check(self.min_brightness < self.max_brightness, "preprocess.quality.max_brightness", self.max_brightness,
              "must be above min_brightness")
        check(self.min_sharpness >= 0.0, "preprocess.quality.min_sharpness", self.min_sharpness, "must be >= 0")
        check(0.0 <= self.sharpness_sigma <= 10.0, "preprocess.quality.sharpness_sigma", self.sharpness_sigma,
              "must be in 0..10")


DECODE_DEVICES = ("cpu", "cuda")  # preprocess.decode_device


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 512  # side of the square output image, px (512 default, 1024 for vessel work)
    reduced_decode: bool = True  # let libjpeg decode at 1/2, 1/4, 1/8 when the FOV stays >= size
    fov_threshold: float = 0.06  # FOV = pixels brighter than this fraction of the frame's max (red channel)
    fov_margin: float = 0.0  # extra border around the FOV circle in the crop, fraction of the radius
    mask_outside_fov: bool = True  # set pixels outside the FOV circle to black
    graham: bool = False  # Graham local-mean normalisation (Kaggle 2015 winner)
    graham_sigma: float = 0.033  # Gaussian sigma as a fraction of the output size
    clahe: ClaheConfig = field(default_factory=ClaheConfig)
    tophat_radius: int = 7  # structuring element radius for the vessel top-hat, px at output size
    canny_sigma: float = 1.0  # Gaussian smoothing before Canny, px at output size
    extra_maps: tuple[str, ...] = ()  # also store these maps: "canny", "tophat"
    quality: QualityConfig = field(default_factory=QualityConfig)
    max_pixels: int = 120_000_000  # larger source frames are refused as decompression bombs
    min_side: int = 64  # smaller source frames are refused
    png_compression: int = 1  # 0-9: zlib level of the stored PNGs (run-length strategy: the level barely matters)
    decode_device: str = "cpu"  # cpu (libjpeg) | cuda (nvJPEG, batched; non-JPEGs and failures decode on CPU)
    decode_gpus_per_task: float = 0.0  # GPU share per preprocess task with decode_device cuda (> 0 then); else unused

    def __post_init__(self) -> None:
        check(32 <= self.size <= 4096, "preprocess.size", self.size, "must be in 32..4096")
        check(0.0 < self.fov_threshold < 1.0, "preprocess.fov_threshold", self.fov_threshold, "must be in (0, 1)")
        check(0.0 <= self.fov_margin <= 0.5, "preprocess.fov_margin", self.fov_margin, "must be in 0..0.5")
        check(0.0 < self.graham_sigma < 0.5, "preprocess.graham_sigma", self.graham_sigma, "must be in (0, 0.5)")
        check(1 <= self.tophat_radius <= 64, "preprocess.tophat_radius", self.tophat_radius, "must be in 1..64")
        check(0.0 < self.canny_sigma <= 10.0, "preprocess.canny_sigma", self.canny_sigma, "must be in (0, 10]")
        bad = [m for m in self.extra_maps if m not in ("canny", "tophat")]
        check(not bad, "preprocess.extra_maps", list(self.extra_maps), "allowed entries are 'canny' and 'tophat'")
        check(self.max_pixels >= 10_000, "preprocess.max_pixels", self.max_pixels, "must be >= 10000")
        check(1 <= self.min_side <= 4096, "preprocess.min_side", self.min_side, "must be in 1..4096")
        check(0 <= self.png_compression <= 9, "preprocess.png_compression", self.png_compression, "must be in 0..9")
        check(self.decode_device in DECODE_DEVICES, "preprocess.decode_device", self.decode_device,
              "must be 'cpu' or 'cuda'")
        check(0.0 <= self.decode_gpus_per_task <= 8.0, "preprocess.decode_gpus_per_task", self.decode_gpus_per_task,
              "must be in 0..8")
        check(self.decode_device != "cuda" or self.decode_gpus_per_task > 0, "preprocess.decode_gpus_per_task",
              self.decode_gpus_per_task, "must be > 0 with preprocess.decode_device=cuda (each preprocess task "
              "then decodes on a GPU; e.g. 0.25 puts four tasks on one GPU)")

