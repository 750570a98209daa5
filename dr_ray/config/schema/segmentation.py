"""The segmentation training sections: ``train_vessels`` (:class:`TrainVesselsConfig`, the binary vessel
U-Net) and ``train_lesions`` (:class:`TrainLesionsConfig`, the multi-label lesion model), with the dataset,
model and scale constants they check against (``VESSEL_*``, ``LESION_*``). Their Ray Train worker fields
come from :class:`~dr_ray.config.schema.common.ScalingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_ray.config.schema.common import ScalingConfig, check, plain_name, shared_fields

VESSEL_DATASETS = ("drive", "hrf_av", "les_av", "chase_db1", "stare")  # catalog readers with vessel (or A/V) masks
VESSEL_MODELS = ("vessel_unet", "compact_vessel_unet")  # dr_ray.models registry names
# nominal field of view (degrees) of each vessel dataset's camera: images are brought to one vessel scale by
# FOV diameter per degree (train_vessels.fov_diameter is the diameter of a 45-degree field)
VESSEL_FIELD_DEGREES = {"drive": 45.0, "hrf_av": 45.0, "les_av": 30.0, "chase_db1": 30.0, "stare": 35.0}
VESSEL_FIELD_DEGREES_BY_IMAGE = {"les_av/34": 45.0}  # LES-AV's one 45-degree image (2196 x 1958; Orlando et al.)
VESSEL_INPUT_MODES = ("rgb", "green_clahe")  # = dr_ray.imaging.enhance.INPUT_MODES (config imports no image code)


@dataclass(frozen=True)
@shared_fields(after="weight_decay")  # num_workers, use_gpu (ScalingConfig)
class TrainVesselsConfig(ScalingConfig):
    """Binary vessel segmentation training (``dr-ray train-vessels``): patches from whole images, Ray Train workers.

    Data: the catalog readers of ``datasets`` at ``roots`` (same order), or, when both are empty,
    ``synthetic_images`` generated fundus frames (the demo / CI path). Validation holds out whole images
    (by patient) and is scored on whole images inside the FOV.
    """

    datasets: tuple[str, ...] = ()  # subset of VESSEL_DATASETS; HRF-AV / LES-AV vessels = A/V map > 0
    roots: tuple[str, ...] = ()  # one root per dataset, same order: local path or s3://
    synthetic_images: int = 8  # used only when datasets is empty: this many make_fundus frames
    synthetic_size: int = 256  # side of the synthetic frames, px
    model: str = "vessel_unet"  # registry name: vessel_unet (timm encoder) | compact_vessel_unet (the shipped one)
    encoder: str = "resnet18"  # timm encoder of vessel_unet (ignored by compact_vessel_unet)
    pretrained: bool = False  # ImageNet encoder weights (needs the HF hub or its local cache)
    pretrained_file: str = ""  # safetensors / torch state dict (local or s3://) for the U-Net encoder; "" = none
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # vessel_unet: one per x2 upsampling step (5 for stride 32)
    channels: tuple[int, ...] = (16, 32, 64, 128)  # compact_vessel_unet: widths of its levels (last = bottleneck)
    dropout: float = 0.1  # compact_vessel_unet: dropout2d inside each conv block
    patch_size: int = 256  # training patch side, px at the trained scale; a multiple of 32 (the U-Net's stride)
    patches_per_image: int = 8  # random patches drawn from each training image per epoch
    fov_bias: float = 0.9  # share of patches centred on a FOV pixel (the rest anywhere in the frame)
    scale: float = 1.0  # resize factor applied to images and masks before patching (fov_diameter = 0)
    fov_diameter: int = 0  # > 0: resize each image so a 45-degree FOV is this many px wide (one vessel scale across
    # datasets and cameras; VESSEL_FIELD_DEGREES); recorded in the model so `dr-ray vessels` resizes to it
    stored_input: bool = False  # train on what the preprocess stage stores (this config's preprocess section: FOV
    # crop at preprocess.size, CLAHE), masks cropped alike: the images `dr-ray vessels` is fed
    input_mode: str = "rgb"  # model input made from the RGB frame: rgb | green_clahe (dr_ray.training.data.vessel_input)
    val_fraction: float = 0.2  # share of patients held out (whole images) for validation; at least one image
    epochs: int = 10
    batch_size: int = 8  # patches per step per worker
    lr: float = 1e-3  # AdamW learning rate (cosine decay over epochs)
    weight_decay: float = 1e-4
    amp_bf16: bool = True  # bf16 autocast; applied on GPU only
    seed: int = 0  # split, patch sampling and initialisation seed
    name: str = "train_vessels"  # sub-folder of output.dir and Ray Train run name (same name = resume)

    def __post_init__(self) -> None:
        k = "train_vessels."
        check(not (self.pretrained and self.pretrained_file), k + "pretrained_file", self.pretrained_file,
              "set either train_vessels.pretrained (hub download) or train_vessels.pretrained_file, not both")
        bad = [d for d in self.datasets if d not in VESSEL_DATASETS]
        check(not bad, k + "datasets", list(self.datasets), f"allowed entries are {', '.join(VESSEL_DATASETS)}")
        check(len(set(self.datasets)) == len(self.datasets), k + "datasets", list(self.datasets), "has duplicates")
        check(len(self.roots) == len(self.datasets), k + "roots", list(self.roots),
              f"needs one root per dataset ({len(self.datasets)})")
        check(all(self.roots), k + "roots", list(self.roots), "must not contain empty paths")
        check(0 <= self.synthetic_images <= 10_000, k + "synthetic_images", self.synthetic_images,
              "must be in 0..10000")
        check(bool(self.datasets) or self.synthetic_images >= 2, k + "synthetic_images", self.synthetic_images,
              "must be >= 2 (one training, one validation image) when datasets is empty")
        check(64 <= self.synthetic_size <= 4096, k + "synthetic_size", self.synthetic_size, "must be in 64..4096")
        check(self.model in VESSEL_MODELS, k + "model", self.model, f"must be one of {', '.join(VESSEL_MODELS)}")
        check(bool(self.encoder), k + "encoder", self.encoder, "must not be empty")
        check(bool(self.decoder_channels) and all(c >= 1 for c in self.decoder_channels), k + "decoder_channels",
              list(self.decoder_channels), "must be a non-empty list of positive ints")
        check(32 <= self.patch_size <= 2048 and self.patch_size % 32 == 0, k + "patch_size", self.patch_size,
              "must be a multiple of 32 in 32..2048")
        check(1 <= self.patches_per_image <= 10_000, k + "patches_per_image", self.patches_per_image,
              "must be in 1..10000")
        check(0.0 <= self.fov_bias <= 1.0, k + "fov_bias", self.fov_bias, "must be in 0..1")
        check(0.05 <= self.scale <= 4.0, k + "scale", self.scale, "must be in 0.05..4")
        check(self.fov_diameter == 0 or 64 <= self.fov_diameter <= 4096, k + "fov_diameter", self.fov_diameter,
              "must be 0 (use scale) or in 64..4096")
        check(self.fov_diameter == 0 or self.scale == 1.0, k + "fov_diameter", self.fov_diameter,
              "set train_vessels.scale or train_vessels.fov_diameter, not both")
        check(bool(self.channels) and len(self.channels) >= 2 and all(c >= 1 for c in self.channels),
              k + "channels", list(self.channels), "must be >= 2 positive ints")
        check(0.0 <= self.dropout < 1.0, k + "dropout", self.dropout, "must be in [0, 1)")
        check(self.input_mode in VESSEL_INPUT_MODES, k + "input_mode", self.input_mode,
              f"must be one of {', '.join(VESSEL_INPUT_MODES)}")
        check(0.0 < self.val_fraction < 1.0, k + "val_fraction", self.val_fraction, "must be in (0, 1)")
        check(1 <= self.epochs <= 100_000, k + "epochs", self.epochs, "must be in 1..100000")
        check(1 <= self.batch_size <= 4096, k + "batch_size", self.batch_size, "must be in 1..4096")
        check(0.0 < self.lr < 1.0, k + "lr", self.lr, "must be in (0, 1)")
        check(0.0 <= self.weight_decay < 1.0, k + "weight_decay", self.weight_decay, "must be in [0, 1)")
        self.check_scaling("train_vessels")
        check(plain_name(self.name), k + "name", self.name, "must be a plain folder name")



LESION_KIND_NAMES = ("ma", "he", "ex", "se", "irma", "nv")  # = dr_ray.io.columns.LESION_KINDS
LESION_DATASETS = ("idrid", "fgadr")  # catalog readers with pixel-level lesion masks
LESION_MODELS = ("lesion_unet", "swin_unet")


@dataclass(frozen=True)
@shared_fields(after="focal_alpha")  # num_workers, use_gpu (ScalingConfig)
class TrainLesionsConfig(ScalingConfig):
    """Multi-label lesion segmentation training (``dr-ray train-lesions``): patches biased towards lesions, Ray
    Train workers (DDP), checkpoints each epoch, resume. Data: the catalog readers of ``datasets`` at ``roots``,
    or, when both are empty, ``synthetic_images`` generated fundus frames with known lesions."""

    datasets: tuple[str, ...] = ()  # subset of LESION_DATASETS
    roots: tuple[str, ...] = ()  # one root per dataset, same order: local path or s3://
    synthetic_images: int = 8  # used only when datasets is empty
    synthetic_size: int = 256  # side of the synthetic frames, px
    kinds: tuple[str, ...] = ("ma", "he", "ex", "se")  # output channels (FGADR adds irma, nv)
    model: str = "lesion_unet"  # lesion_unet (CNN, faster) | swin_unet (the poster's Swin U-Net)
    encoder: str = ""  # timm encoder; "" = the model's default (resnet34 / swin_tiny_patch4_window7_224)
    pretrained: bool = False  # ImageNet encoder weights (needs the HF hub or its local cache)
    pretrained_file: str = ""  # safetensors / torch state dict (local or s3://) for the encoder; "" = none
    image_size: int = 1024  # images are resized so their longer side is this (px) before patching
    patch_size: int = 256  # training patch side (px); swin_unet: its input size (a multiple of 224 for window 7)
    patches_per_image: int = 8
    lesion_fraction: float = 0.5  # share of patches centred on a lesion pixel (rare structures)
    val_fraction: float = 0.2  # share of patients held out for validation (at least one image)
    val_patches_per_image: int = 8  # validation: fixed (seeded) patches of the held-out images
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3  # AdamW, cosine decay over epochs (1e-4 suits swin_unet)
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0  # LesionLoss = soft Dice + focal
    focal_alpha: float = 0.25
    amp_bf16: bool = True  # bf16 autocast on GPU
    max_failures: int = 2  # a killed worker is replaced this often; the group resumes from the last checkpoint
    seed: int = 0
    name: str = "train_lesions"  # output.dir sub-folder and Ray Train run name (same name = resume)

    def __post_init__(self) -> None:
        k = "train_lesions."
        check(not (self.pretrained and self.pretrained_file), k + "pretrained_file", self.pretrained_file,
              "set either train_lesions.pretrained (hub download) or train_lesions.pretrained_file, not both")
        bad = [d for d in self.datasets if d not in LESION_DATASETS]
        check(not bad and len(set(self.datasets)) == len(self.datasets), k + "datasets", list(self.datasets),
              f"must be distinct entries of {', '.join(LESION_DATASETS)}")
        check(len(self.roots) == len(self.datasets) and all(self.roots), k + "roots", list(self.roots),
              f"needs one non-empty root per dataset ({len(self.datasets)})")
        check(bool(self.datasets) or self.synthetic_images >= 2, k + "synthetic_images", self.synthetic_images,
              "must be >= 2 (one training, one validation image) when datasets is empty")
        check(64 <= self.synthetic_size <= 4096, k + "synthetic_size", self.synthetic_size, "must be in 64..4096")
        badk = [x for x in self.kinds if x not in LESION_KIND_NAMES]
        check(bool(self.kinds) and not badk and len(set(self.kinds)) == len(self.kinds), k + "kinds",
              list(self.kinds), f"must be distinct entries of {', '.join(LESION_KIND_NAMES)}")
        check(self.model in LESION_MODELS, k + "model", self.model, f"must be one of {', '.join(LESION_MODELS)}")
        # Swin-T (window 7) sees stage grids of patch/4 ... patch/32 tokens: multiples of the window need
        # multiples of 224 px (see dr_ray.models.swin_unet.check_swin_input_size)
        check(self.model != "swin_unet" or self.patch_size % 224 == 0, k + "patch_size", self.patch_size,
              "must be a multiple of 224 for swin_unet (window 7), e.g. 224 or 448")
        check(64 <= self.image_size <= 8192, k + "image_size", self.image_size, "must be in 64..8192")
        check(32 <= self.patch_size <= 2048 and self.patch_size % 32 == 0, k + "patch_size", self.patch_size,
              "must be a multiple of 32 in 32..2048")
        check(1 <= self.patches_per_image <= 10_000, k + "patches_per_image", self.patches_per_image,
              "must be in 1..10000")
        check(0.0 <= self.lesion_fraction <= 1.0, k + "lesion_fraction", self.lesion_fraction, "must be in 0..1")
        check(0.0 < self.val_fraction < 1.0, k + "val_fraction", self.val_fraction, "must be in (0, 1)")
        check(1 <= self.val_patches_per_image <= 10_000, k + "val_patches_per_image", self.val_patches_per_image,
              "must be in 1..10000")
        check(1 <= self.epochs <= 100_000, k + "epochs", self.epochs, "must be in 1..100000")
        check(1 <= self.batch_size <= 4096, k + "batch_size", self.batch_size, "must be in 1..4096")
        check(0.0 < self.lr < 1.0, k + "lr", self.lr, "must be in (0, 1)")
        check(0.0 <= self.weight_decay < 1.0, k + "weight_decay", self.weight_decay, "must be in [0, 1)")
        check(0.0 <= self.focal_gamma <= 10.0, k + "focal_gamma", self.focal_gamma, "must be in 0..10")
        check(0.0 <= self.focal_alpha <= 1.0, k + "focal_alpha", self.focal_alpha, "must be in 0..1")
        self.check_scaling("train_lesions")
        check(0 <= self.max_failures <= 100, k + "max_failures", self.max_failures, "must be in 0..100")
        check(plain_name(self.name), k + "name", self.name, "must be a plain folder name")

