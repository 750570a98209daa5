"""The ``data`` section: which dataset, where its images and labels are, how folds are drawn
(:class:`DataConfig`), and the built-in synthetic sample (:class:`SyntheticConfig`). :data:`DATASETS` lists
the dataset names the catalog readers know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dr_ray.config.schema.common import check

DATASETS = ("eyepacs", "aptos", "messidor2", "idrid", "fgadr", "drive", "hrf_av", "les_av", "chase_db1", "stare",
            "synthetic")


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in sample: EyePACS-like JPEGs generated on the fly (``dr_ray.testing``)."""

    n_patients: int = 12  # both eyes each -> 2 * n_patients images
    width: int = 1536  # frame width, px (EyePACS frames are 3888-4928 wide)
    height: int = 1024  # frame height, px
    seed: int = 0
    quality: int = 90  # JPEG quality
    bad_files: bool = True  # add a few broken files (truncated, empty, missing) to show the quarantine

    def __post_init__(self) -> None:
        check(1 <= self.n_patients <= 100_000, "data.synthetic.n_patients", self.n_patients, "must be in 1..100000")
        check(64 <= self.width <= 8192, "data.synthetic.width", self.width, "must be in 64..8192")
        check(64 <= self.height <= 8192, "data.synthetic.height", self.height, "must be in 64..8192")
        check(1 <= self.quality <= 100, "data.synthetic.quality", self.quality, "must be in 1..100")


@dataclass(frozen=True)
class DataConfig:
    """Where the images and labels are, and how folds are drawn."""

    dataset: str = "synthetic"  # one of DATASETS
    root: str = ""  # dataset root: local path or s3://bucket/prefix (layout per dataset, see README)
    labels: str = ""  # label CSV; relative paths are under root; "" = the dataset's usual name
    catalog: str = ""  # a ready catalog Parquet; when set, root/labels are not read
    limit: int = 0  # keep only the first N catalog rows (0 = all): smoke runs
    folds: int = 5  # patient-level stratified K-fold
    seed: int = 0  # fold assignment seed
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        check(self.dataset in DATASETS, "data.dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        check(self.limit >= 0, "data.limit", self.limit, "must be >= 0")
        check(2 <= self.folds <= 100, "data.folds", self.folds, "must be in 2..100")
        check(self.dataset == "synthetic" or bool(self.root or self.catalog), "data.root", self.root,
              f"dataset {self.dataset!r} needs data.root (or data.catalog)")

