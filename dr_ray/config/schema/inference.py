"""The sections of the stages that run trained models over a Ray Data stream on an actor pool: ``vessels``
(:class:`VesselsConfig`: vessel U-Net, then graphs and biomarkers), ``pseudo_labels``
(:class:`PseudoLabelsConfig`: lesion maps and statistics), ``label`` (:class:`LabelConfig`: both in one
stream), ``evaluate`` (:class:`EvaluateConfig`: out-of-fold report) and ``predict`` (:class:`PredictConfig`:
ensemble predictions). Their pool keys (``batch_size``, ``actors``, ``gpus_per_actor``, ``cpus_per_actor``,
``amp_bf16``) come from :class:`~dr_ray.config.schema.common.ActorPoolConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_ray.config.schema.common import ActorPoolConfig, check, plain_name, shared_fields
from dr_ray.config.schema.segmentation import LESION_KIND_NAMES

GLCM_HOMOGENEITY = ("paper", "skimage")  # = dr_ray.vessels.HOMOGENEITY_VARIANTS (config does not import vessels)


@dataclass(frozen=True)
@shared_fields(after="threshold")  # the ActorPoolConfig fields
class VesselsConfig(ActorPoolConfig):
    """``dr-ray vessels``: preprocessed shards -> vessel U-Net (actor pool) -> graph + biomarkers (CPU) -> Parquet.

    The model is a directory written by ``dr-ray train-vessels`` (``<output.dir>/train_vessels/model``). It runs
    on the preprocessed images (``preprocess.size`` px, FOV-cropped); ``input_size`` resizes them first when the
    model was trained at another vessel scale (a DRIVE model saw a ~540 px FOV: 512 px fits as is).

    Pool (:class:`ActorPoolConfig`): each actor holds the vessel model; 512 px fp32 activations take ~0.2 GB
    per image of ``batch_size``.
    """

    input: str = ""  # preprocess stage folder (holds status=ok/); "" = <output.dir>/preprocess
    model_dir: str = ""  # saved vessel model directory (local or mounted path); required
    input_size: int = 0  # side the image is resized to for the model (0 = as stored); probabilities come back
    threshold: float = 0.5  # vessel probability -> binary mask
    graph_batch_size: int = 4  # images per graph/biomarker task (~0.1-0.5 s each at 512 px)
    graph_cpus_per_task: float = 1.0  # CPU slots per graph task (skan, scipy: single-threaded)
    prune_spur_px: float = 10.0  # skeleton spurs shorter than this are pruned (px at the stored size)
    patch_px: int = 15  # node GLCM patch side (eq. 26), px, odd
    av_model: str = ""  # artery/vein classifier file; "" = the one shipped in dr_ray/vessels/data
    disc_diameter_um: float = 1800.0  # assumed optic disc diameter for the um scale (images carry no scale)
    crx_vessels: int = 6  # CRAE/CRVE over this fixed number of widest arterioles/venules (Knudtson's 6); fewer: flagged
    glcm_homogeneity: str = "paper"  # paper: eq. 20, 1 / (1 + |i - j|) | skimage: 1 / (1 + (i - j)^2)

    def __post_init__(self) -> None:
        k = "vessels."
        check(self.input_size == 0 or 32 <= self.input_size <= 4096, k + "input_size", self.input_size,
              "must be 0 (as stored) or in 32..4096")
        check(0.0 < self.threshold < 1.0, k + "threshold", self.threshold, "must be in (0, 1)")
        self.check_pool("vessels")
        check(1 <= self.graph_batch_size <= 4096, k + "graph_batch_size", self.graph_batch_size,
              "must be in 1..4096")
        check(0.0 < self.graph_cpus_per_task <= 64, k + "graph_cpus_per_task", self.graph_cpus_per_task,
              "must be in (0, 64]")
        check(0.0 <= self.prune_spur_px <= 1000.0, k + "prune_spur_px", self.prune_spur_px, "must be in 0..1000")
        check(3 <= self.patch_px <= 255 and self.patch_px % 2 == 1, k + "patch_px", self.patch_px,
              "must be an odd int in 3..255")
        check(100.0 <= self.disc_diameter_um <= 5000.0, k + "disc_diameter_um", self.disc_diameter_um,
              "must be in 100..5000 (um)")
        check(not isinstance(self.crx_vessels, bool) and isinstance(self.crx_vessels, int)
              and 2 <= self.crx_vessels <= 20, k + "crx_vessels", self.crx_vessels, "must be an int in 2..20")
        check(self.glcm_homogeneity in GLCM_HOMOGENEITY, k + "glcm_homogeneity", self.glcm_homogeneity,
              f"must be one of {', '.join(GLCM_HOMOGENEITY)}")


@dataclass(frozen=True)
@shared_fields(after="min_component_px")  # the ActorPoolConfig fields
class PseudoLabelsConfig(ActorPoolConfig):
    """``dr-ray pseudo-labels``: preprocessed shards -> lesion segmentation model (actor pool) -> per-image lesion
    maps (uint8 probabilities at ``map_size``, PNG) + per-lesion area fraction and component count -> Parquet.

    Pool (:class:`ActorPoolConfig`): each actor holds the lesion model; its CPUs also compute the lesion
    statistics and encode the maps."""

    input: str = ""  # preprocess stage folder (holds status=ok/); "" = <output.dir>/preprocess
    model_dir: str = ""  # saved lesion model directory (local or mounted path); required
    lesion_kinds: tuple[str, ...] = ("ma", "he", "ex", "se")  # output channels, when the model metadata has none
    input_size: int = 0  # side the image is resized to for the model (0 = as stored; a Swin model needs its size)
    map_size: int = 128  # side of the stored lesion maps, px
    reduce: str = "max"  # "max" keeps 1-2 px microaneurysms visible at map_size; "mean" averages
    threshold: float = 0.5  # probability -> lesion pixel, for the statistics
    min_component_px: int = 1  # smaller connected components are not counted (px at the model's resolution)

    def __post_init__(self) -> None:
        k = "pseudo_labels."
        bad = [x for x in self.lesion_kinds if x not in LESION_KIND_NAMES]
        check(bool(self.lesion_kinds) and not bad and len(set(self.lesion_kinds)) == len(self.lesion_kinds),
              k + "lesion_kinds", list(self.lesion_kinds),
              f"must be distinct entries of {', '.join(LESION_KIND_NAMES)}")
        check(self.input_size == 0 or 32 <= self.input_size <= 4096, k + "input_size", self.input_size,
              "must be 0 (as stored) or in 32..4096")
        check(8 <= self.map_size <= 4096, k + "map_size", self.map_size, "must be in 8..4096")
        check(self.reduce in ("max", "mean"), k + "reduce", self.reduce, "must be max or mean")
        check(0.0 < self.threshold < 1.0, k + "threshold", self.threshold, "must be in (0, 1)")
        check(1 <= self.min_component_px <= 100_000, k + "min_component_px", self.min_component_px,
              "must be in 1..100000")
        self.check_pool("pseudo_labels")


@dataclass(frozen=True)
@shared_fields(after="model_pools")  # the ActorPoolConfig fields
class LabelConfig(ActorPoolConfig):
    """``dr-ray label``: catalog -> preprocess -> vessel and lesion models -> graphs + biomarkers in one Ray Data
    stream, written as the preprocess/, vessels/ and pseudo_labels/ stage folders. Result settings come from the
    ``preprocess``, ``vessels`` and ``pseudo_labels`` sections (same config hashes as the single stages); this
    section sizes the model actor pool.

    Pool (:class:`ActorPoolConfig`, used with ``model_pools=one``): each actor holds both models and they share
    its GPU; ``batch_size`` is per forward pass of each model. With ``model_pools=two`` the vessel pool and the
    lesion pool are sized by ``vessels.*`` / ``pseudo_labels.*`` and ``label.*``'s pool keys are unused."""

    model_pools: str = "one"  # one: an actor holds both models (an image batch reaches the models once); two: a
    #                           vessel pool then a lesion pool, sized by vessels.* / pseudo_labels.* (label.* unused)

    def __post_init__(self) -> None:
        k = "label."
        check(self.model_pools in ("one", "two"), k + "model_pools", self.model_pools, "must be one or two")
        self.check_pool("label")


@dataclass(frozen=True)
@shared_fields(after="uncertain_cases")  # the ActorPoolConfig fields
class EvaluateConfig(ActorPoolConfig):
    """``dr-ray evaluate``: out-of-fold predictions of every fold model of a train run (an actor pool), MC-dropout
    uncertainty, and one self-contained HTML report (ROC/PR, confusion, calibration, Grad-CAM, uncertain cases).

    Pool (:class:`ActorPoolConfig`): one pool per fold model; each actor holds that model."""

    run: str = ""  # train run name under output.dir; "" = train.name
    # external validation: a processed dataset's output.dir holding `dr-ray predict`'s <predict.name>/ folder;
    # the report scores those predictions against that dataset's grades. "" = out-of-fold evaluation of `run`
    dataset: str = ""
    mc_samples: int = 10  # Monte-Carlo dropout passes for the predictive entropy (DCAT); 1 = deterministic only
    gradcam_images: int = 8  # images with Grad-CAM overlays in the report
    uncertain_cases: int = 12  # most uncertain cases shown
    bootstrap: int = 2000  # patient-level bootstrap resamples of the pooled metrics in the report (0 = off)
    bootstrap_seed: int = 0  # seed of those resamples (same predictions + seed = same intervals)

    def __post_init__(self) -> None:
        k = "evaluate."
        check(0 <= self.bootstrap <= 100_000, k + "bootstrap", self.bootstrap, "must be in 0..100000 (resamples)")
        check(not self.run or plain_name(self.run), k + "run", self.run, "must be a train run name")
        check(1 <= self.mc_samples <= 1000, k + "mc_samples", self.mc_samples, "must be in 1..1000")
        check(0 <= self.gradcam_images <= 1000, k + "gradcam_images", self.gradcam_images, "must be in 0..1000")
        check(0 <= self.uncertain_cases <= 1000, k + "uncertain_cases", self.uncertain_cases, "must be in 0..1000")
        self.check_pool("evaluate")


@dataclass(frozen=True)
@shared_fields(after="mc_samples")  # the ActorPoolConfig fields
class PredictConfig(ActorPoolConfig):
    """``dr-ray predict``: a train run's fold models as an ensemble over a processed dataset (this config's
    ``output.dir``: its preprocess / vessels / pseudo_labels folders, joined as ``train`` joins them) -> Parquet
    ``<output.dir>/<name>/`` (mean probability, fold spread, MC-dropout entropy per image), streamed on an actor
    pool, resumable, quarantine with reasons.

    Pool (:class:`ActorPoolConfig`): every actor holds all fold models."""

    run_dir: str = ""  # the train run folder (holds cv.json and fold_<k>/model), local path; required
    name: str = "predictions"  # output.dir sub-folder of the predictions
    threshold: float = 0.5  # predicted_referable = p_referable >= threshold (fixed in advance, never fitted here)
    mc_samples: int = 10  # Monte-Carlo dropout passes per fold model (predictive entropy); 1 = deterministic only

    def __post_init__(self) -> None:
        k = "predict."
        check(plain_name(self.name), k + "name", self.name, "must be a plain folder name")
        check(0.0 < self.threshold < 1.0, k + "threshold", self.threshold, "must be in (0, 1)")
        check(1 <= self.mc_samples <= 1000, k + "mc_samples", self.mc_samples, "must be in 1..1000")
        self.check_pool("predict")
