"""The classifier sections: ``train`` (:class:`TrainConfig`: a DR classifier, baseline or fusion model, trained
with nested patient-level cross-validation on Ray Train) and ``tune`` (:class:`TuneConfig`: an ASHA search over
``train.*`` keys, each dimension a :class:`SearchDim`), with the model, modality, task and biomarker names they
check against. ``train``'s Ray Train worker fields come from
:class:`~dr_ray.config.schema.common.ScalingConfig`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from dr_ray.config.schema.common import ScalingConfig, check, plain_name, shared_fields

CLASSIFIER_MODELS = ("graph_fusion", "cross_feature_fusion", "dcat", "resnet50", "efficientnet_b0", "swin_t", "vit_b",
                     "timm_classifier")  # dr_ray.models.classifiers
MODALITIES = ("image", "lesion", "graph", "stats")
TASKS = ("referable", "grade")  # referable DR (grade >= 2, 2 classes) | ICDR grade (5 classes)
IMAGE_INPUTS = ("clahe", "segmented", "canny")  # = dr_ray.training.fusion_data.IMAGE_INPUTS
GRAPH_FUSION_BLOCKS = ("se", "dilated", "cbam")  # = dr_ray.models.classifiers.GRAPH_FUSION_BLOCKS
BIOMARKER_NAMES = (  # = dr_ray.io.columns.BIOMARKERS
    "vessel_density", "fractal_dimension", "branch_points", "mean_tortuosity",
    "glcm_contrast", "glcm_correlation", "glcm_energy", "glcm_homogeneity", "glcm_entropy",
    "crae_parr_hubbard_um", "crve_parr_hubbard_um", "avr_parr_hubbard",
    "crae_knudtson_um", "crve_knudtson_um", "avr_knudtson",
)


@dataclass(frozen=True)
@shared_fields(after="join")  # num_workers, use_gpu (ScalingConfig)
class TrainConfig(ScalingConfig):
    """``dr-ray train``: a DR classifier (baseline or fusion model) on Ray Train from the joined stage outputs.

    Data: the preprocess stage's images joined by ``image_id`` with the pseudo-label stage's lesion maps and the
    vessel stage's graphs and biomarkers (only the stages the model's modalities need), written once to
    ``<output.dir>/fusion_data/<hash>/`` and streamed from there. Patient-level K-fold cross-validation over the
    catalog's ``fold`` column, nested: the model of outer fold k trains on the other folds minus an inner validation
    split of their patients (``inner_val_fraction``), which alone drives the LR schedule, early stopping and the
    epoch choice; fold k is scored once, after training.

    ``stats_features``: the biomarker columns of the stats token s (paper eq. 28). Its AVR is selectable by
    name: ``avr_parr_hubbard`` (the default, as eq. 28 says: Parr-Hubbard CRAE / CRVE, eqs. 23-25) or
    ``avr_knudtson`` (Knudtson et al. 2003 revised formulas, AVR by eq. 25); both over the fixed
    ``vessels.crx_vessels`` widest vessels.
    """

    name: str = "train"  # sub-folder of output.dir; Ray Train run per fold: <name>/ray/fold_<k> (same name resumes)
    task: str = "referable"  # referable (2 classes, grade >= 2) | grade (5 ICDR classes)
    model: str = "graph_fusion"  # one of CLASSIFIER_MODELS (dr_ray.models.classifiers)
    backbone: str = ""  # image backbone (timm name); "" = the model's default
    pretrained: bool = False  # ImageNet backbone weights (needs the HF hub or its local cache on every node)
    pretrained_file: str = ""  # safetensors / torch state dict (local, s3://) of the image backbone, e.g. RETFound
    modalities: tuple[str, ...] = ()  # inputs the model uses (ablations); () = all the model supports
    image_size: int = 512  # images are resized to this side (px) for the model
    lesion_size: int = 128  # lesion maps are resized to this side (px)
    hidden_dim: int = 256  # fusion width d (paper Table 3: 256)
    heads: int = 4  # attention heads (paper Table 3: 4)
    fusion_layers: int = 2  # transformer / cross-attention layers
    gnn_layers: int = 3  # GCN layers (graph_fusion)
    dropout: float = 0.1
    image_encoder_init: str = ""  # encoder.pt of a train-lesions run: initialise the image branch (poster Table 2)
    lesion_encoder_init: str = ""  # encoder.pt of a train-lesions run: initialise the lesion-map branch
    lesion_backbone: str = ""  # cross_feature_fusion lesion branch (timm name); "" = lesion_encoder_init's, else resnet34
    swin_window: int = 0  # attention window of Swin branches; 0 = the encoder.pt's / the name's (7); 8 tiles 256/512 px
    image_input: str = "clahe"  # the image branch's input: clahe (preprocess image) | segmented (vessel
    #                             probability map, graph paper 3.3) | canny (preprocess canny map, extra_maps)
    graph_fusion_blocks: tuple[str, ...] = ("se", "dilated", "cbam")  # graph_fusion image blocks (Table 6 ablations)
    # the stats token s of eq. 28: AVR (avr_parr_hubbard: eqs. 23-25, Parr-Hubbard, as eq. 28 says; avr_knudtson:
    # Knudtson 2003 revised formulas), fractal dimension (eq. 22), mean GLCM contrast (eq. 17) and entropy (bits)
    stats_features: tuple[str, ...] = ("avr_parr_hubbard", "fractal_dimension", "glcm_contrast", "glcm_entropy")
    epochs: int = 30
    batch_size: int = 32  # per worker
    lr: float = 1.0e-4  # Adam (paper 4.2)
    weight_decay: float = 1.0e-5
    plateau_patience: int = 2  # ReduceLROnPlateau on the validation loss
    plateau_factor: float = 0.5
    early_stop_patience: int = 5  # stop after this many epochs without a lower validation loss (0 = never)
    class_balance: str = "weight"  # weight: inverse-frequency class weights in the loss | none
    augment: bool = True  # random flips, 90-degree rotations and brightness/contrast jitter (training rows)
    folds: tuple[int, ...] = ()  # outer folds to score; () = every fold (K-fold CV)
    # Nested CV: the LR schedule, early stopping and the epoch choice read an inner validation split of this share
    # of the outer training folds' patients (patient-level, stratified on the worst grade, seeded by train.seed);
    # the outer test fold is scored once, by the chosen epoch's weights. One split, not inner K-fold: one model
    # per outer fold is trained and scored, at the cost of one run (inner K-fold would cost K + 1 runs per fold).
    inner_val_fraction: float = 0.15
    baseline: str = ""  # another train run under output.dir (its name) for the paired test per metric
    bootstrap: int = 2000  # patient-level bootstrap resamples of the pooled out-of-fold metrics in cv.json (0 = off)
    join: tuple[str, ...] = ()  # stages joined besides those the model needs (pseudo_labels, vessels): e.g. a
    #                             baseline joined with [vessels] is trained and scored on the images graph_fusion sees
    cpus_per_worker: float = 1.0
    amp_bf16: bool = True  # bf16 autocast + channels_last on GPU (ignored on CPU)
    max_failures: int = 2  # a killed worker is replaced this often; the group resumes from the last checkpoint
    decode_batch_size: int = 16  # rows per Ray Data decode/augment task call
    decode_cpus: float = 1.0  # CPU slots per decode/augment task
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer (0 = no shuffling)
    seed: int = 0
    preprocess_input: str = ""  # preprocess stage folder; "" = <output.dir>/preprocess
    pseudo_labels_input: str = ""  # pseudo-labels stage folder; "" = <output.dir>/pseudo_labels
    vessels_input: str = ""  # vessels stage folder; "" = <output.dir>/vessels
    mlflow_uri: str = ""  # MLflow tracking URI (e.g. file:///data/mlruns, http://mlflow:5000); "" = no MLflow
    mlflow_experiment: str = "dr-ray"

    @property
    def num_classes(self) -> int:
        return 2 if self.task == "referable" else 5

    def __post_init__(self) -> None:
        k = "train."
        check(not (self.pretrained and self.pretrained_file), k + "pretrained_file", self.pretrained_file,
              "set either train.pretrained (hub download) or train.pretrained_file, not both")
        check(not (self.pretrained_file and self.image_encoder_init), k + "pretrained_file", self.pretrained_file,
              "set either train.pretrained_file or train.image_encoder_init (both fill the image backbone)")
        check(plain_name(self.name), k + "name", self.name, "must be a plain folder name")
        check(self.task in TASKS, k + "task", self.task, f"must be one of {', '.join(TASKS)}")
        check(0 <= self.bootstrap <= 100_000, k + "bootstrap", self.bootstrap, "must be in 0..100000 (resamples)")
        check(self.model in CLASSIFIER_MODELS, k + "model", self.model,
              f"must be one of {', '.join(CLASSIFIER_MODELS)}")
        check(self.model != "timm_classifier" or bool(self.backbone), k + "backbone", self.backbone,
              "timm_classifier needs a timm backbone name")
        bad = [m for m in self.modalities if m not in MODALITIES]
        check(not bad and len(set(self.modalities)) == len(self.modalities), k + "modalities",
              list(self.modalities), f"must be distinct entries of {', '.join(MODALITIES)}")
        check(32 <= self.image_size <= 4096, k + "image_size", self.image_size, "must be in 32..4096")
        check(8 <= self.lesion_size <= 4096, k + "lesion_size", self.lesion_size, "must be in 8..4096")
        check(1 <= self.heads <= 64 and 8 <= self.hidden_dim <= 8192 and self.hidden_dim % self.heads == 0,
              k + "hidden_dim", self.hidden_dim, f"must be in 8..8192 and divisible by train.heads ({self.heads})")
        check(1 <= self.fusion_layers <= 48, k + "fusion_layers", self.fusion_layers, "must be in 1..48")
        check(1 <= self.gnn_layers <= 48, k + "gnn_layers", self.gnn_layers, "must be in 1..48")
        check(0.0 <= self.dropout < 1.0, k + "dropout", self.dropout, "must be in [0, 1)")
        check(self.swin_window == 0 or 1 <= self.swin_window <= 64, k + "swin_window", self.swin_window,
              "must be 0 (the backbone's own) or a window in 1..64")
        check(self.image_input in IMAGE_INPUTS, k + "image_input", self.image_input,
              f"must be one of {', '.join(IMAGE_INPUTS)}")
        badb = [b for b in self.graph_fusion_blocks if b not in GRAPH_FUSION_BLOCKS]
        check(not badb and len(set(self.graph_fusion_blocks)) == len(self.graph_fusion_blocks),
              k + "graph_fusion_blocks", list(self.graph_fusion_blocks),
              f"must be distinct entries of {', '.join(GRAPH_FUSION_BLOCKS)} (any subset, [] = none)")
        badf = [f for f in self.stats_features if f not in BIOMARKER_NAMES]
        check(bool(self.stats_features) and not badf and len(set(self.stats_features)) == len(self.stats_features),
              k + "stats_features", list(self.stats_features),
              f"must be distinct entries of {', '.join(BIOMARKER_NAMES)}")
        check(1 <= self.epochs <= 100_000, k + "epochs", self.epochs, "must be in 1..100000")
        check(1 <= self.batch_size <= 4096, k + "batch_size", self.batch_size, "must be in 1..4096")
        check(0.0 < self.lr < 1.0, k + "lr", self.lr, "must be in (0, 1)")
        check(0.0 <= self.weight_decay < 1.0, k + "weight_decay", self.weight_decay, "must be in [0, 1)")
        check(0 <= self.plateau_patience <= 1000, k + "plateau_patience", self.plateau_patience, "must be in 0..1000")
        check(0.0 < self.plateau_factor < 1.0, k + "plateau_factor", self.plateau_factor, "must be in (0, 1)")
        check(0 <= self.early_stop_patience <= 1000, k + "early_stop_patience", self.early_stop_patience,
              "must be in 0..1000")
        check(self.class_balance in ("weight", "none"), k + "class_balance", self.class_balance,
              "must be weight or none")
        check(all(0 <= f <= 99 for f in self.folds) and len(set(self.folds)) == len(self.folds), k + "folds",
              list(self.folds), "must be distinct fold numbers in 0..99")
        check(0.0 < self.inner_val_fraction <= 0.5, k + "inner_val_fraction", self.inner_val_fraction,
              "must be in (0, 0.5]")
        check(not self.baseline or plain_name(self.baseline), k + "baseline", self.baseline,
              "must be the name of another train run under output.dir")
        check(self.baseline != self.name, k + "baseline", self.baseline, "must differ from train.name")
        badj = [x for x in self.join if x not in ("pseudo_labels", "vessels")]
        check(not badj and len(set(self.join)) == len(self.join), k + "join", list(self.join),
              "must be distinct entries of pseudo_labels, vessels")
        self.check_scaling("train")
        check(0.0 < self.cpus_per_worker <= 64, k + "cpus_per_worker", self.cpus_per_worker, "must be in (0, 64]")
        check(0 <= self.max_failures <= 100, k + "max_failures", self.max_failures, "must be in 0..100")
        check(1 <= self.decode_batch_size <= 4096, k + "decode_batch_size", self.decode_batch_size,
              "must be in 1..4096")
        check(0.0 < self.decode_cpus <= 64, k + "decode_cpus", self.decode_cpus, "must be in (0, 64]")
        check(0 <= self.shuffle_buffer <= 1_000_000, k + "shuffle_buffer", self.shuffle_buffer,
              "must be in 0..1000000")


SEARCH_KINDS = ("choice", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SearchDim:
    """One dimension of a Ray Tune search space over a ``train.*`` key.

    kind: choice (``values``) | uniform / loguniform (float in [low, high]) | randint (int in [low, high)).
    """

    key: str = ""  # a train.* field, e.g. lr
    kind: str = "choice"
    low: float = 0.0
    high: float = 0.0
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        k = f"tune.space[{self.key}]"
        check(self.kind in SEARCH_KINDS, k + ".kind", self.kind, f"must be one of {', '.join(SEARCH_KINDS)}")
        if self.kind == "choice":
            check(len(self.values) >= 1, k + ".values", list(self.values), "a choice needs at least one value")
        else:
            check(self.low < self.high, k + ".high", self.high, f"must be above low ({self.low})")
            check(self.kind != "loguniform" or self.low > 0, k + ".low", self.low, "loguniform needs low > 0")


_TUNABLE = ("lr", "weight_decay", "hidden_dim", "heads", "fusion_layers", "gnn_layers", "dropout", "modalities",
            "backbone", "batch_size", "plateau_patience", "plateau_factor", "class_balance", "augment", "model",
            "image_size", "lesion_size", "stats_features")


@dataclass(frozen=True)
class TuneConfig:
    """``dr-ray tune``: an ASHA search over ``train.*`` settings, each trial one Ray Train run inside ``folds``.

    The trial's training is ``train`` with the sampled values replaced; a campaign rerun with the same ``name``
    resumes (finished trials are kept, unfinished ones restart from their last checkpoint).
    """

    name: str = "tune"  # sub-folder of output.dir and Ray Tune experiment name (same name resumes)
    num_samples: int = 8  # trials
    max_concurrent: int = 1  # trials at a time; each needs train.num_workers workers (+ gpus_per_worker each)
    gpus_per_worker: float = 0.0  # GPUs per Ray Train worker of a trial; fractions share a GPU (0.5: two trials)
    # Outer folds the campaign may use: each trial trains and is selected on an inner split (train.inner_val_fraction)
    # of these folds' patients; every other fold stays untouched and is what best_train.yaml cross-validates on.
    folds: tuple[int, ...] = (0,)
    max_epochs: int = 0  # epochs per trial (ASHA's max_t); 0 = train.epochs
    metric: str = "val_auc"  # a validation metric reported each epoch (val_loss, val_auc, val_qwk, val_f1, ...)
    mode: str = "max"  # max | min
    grace_period: int = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA: keep the top 1/reduction_factor at each rung
    seed: int = 0  # search-algorithm seed
    space: tuple[SearchDim, ...] = (
        SearchDim(key="lr", kind="loguniform", low=1.0e-5, high=1.0e-3),
        SearchDim(key="weight_decay", kind="loguniform", low=1.0e-6, high=1.0e-3),
        SearchDim(key="hidden_dim", kind="choice", values=(128, 256)),
        SearchDim(key="fusion_layers", kind="choice", values=(1, 2)),
        SearchDim(key="dropout", kind="uniform", low=0.0, high=0.3),
    )

    def __post_init__(self) -> None:
        k = "tune."
        check(plain_name(self.name), k + "name", self.name, "must be a plain folder name")
        check(1 <= self.num_samples <= 100_000, k + "num_samples", self.num_samples, "must be in 1..100000")
        check(1 <= self.max_concurrent <= 1024, k + "max_concurrent", self.max_concurrent, "must be in 1..1024")
        check(0.0 <= self.gpus_per_worker <= 8.0, k + "gpus_per_worker", self.gpus_per_worker, "must be in 0..8")
        check(bool(self.folds) and all(0 <= f <= 99 for f in self.folds) and len(set(self.folds)) == len(self.folds),
              k + "folds", list(self.folds), "must be one or more distinct fold numbers in 0..99")
        check(0 <= self.max_epochs <= 100_000, k + "max_epochs", self.max_epochs, "must be in 0..100000")
        check(self.metric.startswith("val_"), k + "metric", self.metric,
              "must be a validation metric such as val_auc, val_loss, val_qwk")
        check(self.mode in ("max", "min"), k + "mode", self.mode, "must be max or min")
        check(1 <= self.grace_period <= 100_000, k + "grace_period", self.grace_period, "must be >= 1")
        check(2 <= self.reduction_factor <= 100, k + "reduction_factor", self.reduction_factor, "must be in 2..100")
        keys = [d.key for d in self.space]
        check(bool(keys), k + "space", keys, "needs at least one dimension")
        check(len(set(keys)) == len(keys), k + "space", keys, "names a train key twice")
        for key in keys:
            close = difflib.get_close_matches(key, _TUNABLE, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            check(key in _TUNABLE, k + "space", key, f"is not a tunable train key{hint} (tunable: "
                  f"{', '.join(_TUNABLE)})")
