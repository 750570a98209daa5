"""Typed, frozen configuration: :class:`Config`, one section per stage. ``configs/defaults.yaml`` mirrors these
defaults key for key.

Every value is checked in ``__post_init__`` so a bad value fails when the config is loaded, naming the key and
the value, not deep inside a Ray task. The sections live by stage: ``data`` (:mod:`.data`), ``preprocess``
(:mod:`.preprocess`), ``ray`` / ``output`` (:mod:`.runtime`), ``train_vessels`` / ``train_lesions``
(:mod:`.segmentation`), ``vessels`` / ``pseudo_labels`` / ``label`` / ``evaluate`` / ``predict``
(:mod:`.inference`), ``train`` / ``tune`` (:mod:`.train`); what they share (:class:`ConfigError`, the checks,
the :class:`ActorPoolConfig` and :class:`ScalingConfig` field groups) is in :mod:`.common`. Every public name
is re-exported here: ``from dr_ray.config.schema import X`` works for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dr_ray.config.schema.common import (
    ActorPoolConfig,
    ConfigError,
    FieldGroup,
    ScalingConfig,
    check,
    plain_name,
    shared_fields,
)
from dr_ray.config.schema.data import DATASETS, DataConfig, SyntheticConfig
from dr_ray.config.schema.inference import (
    GLCM_HOMOGENEITY,
    EvaluateConfig,
    LabelConfig,
    PredictConfig,
    PseudoLabelsConfig,
    VesselsConfig,
)
from dr_ray.config.schema.preprocess import DECODE_DEVICES, ClaheConfig, PreprocessConfig, QualityConfig
from dr_ray.config.schema.runtime import OutputConfig, RayConfig
from dr_ray.config.schema.segmentation import (
    LESION_DATASETS,
    LESION_KIND_NAMES,
    LESION_MODELS,
    VESSEL_DATASETS,
    VESSEL_FIELD_DEGREES,
    VESSEL_FIELD_DEGREES_BY_IMAGE,
    VESSEL_INPUT_MODES,
    VESSEL_MODELS,
    TrainLesionsConfig,
    TrainVesselsConfig,
)
from dr_ray.config.schema.train import (
    BIOMARKER_NAMES,
    CLASSIFIER_MODELS,
    GRAPH_FUSION_BLOCKS,
    IMAGE_INPUTS,
    MODALITIES,
    SEARCH_KINDS,
    TASKS,
    SearchDim,
    TrainConfig,
    TuneConfig,
)


@dataclass(frozen=True)
class Config:
    """The whole resolved config: one field per YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    train_vessels: TrainVesselsConfig = field(default_factory=TrainVesselsConfig)
    vessels: VesselsConfig = field(default_factory=VesselsConfig)
    train_lesions: TrainLesionsConfig = field(default_factory=TrainLesionsConfig)
    pseudo_labels: PseudoLabelsConfig = field(default_factory=PseudoLabelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


__all__ = [
    "BIOMARKER_NAMES", "CLASSIFIER_MODELS", "DATASETS", "DECODE_DEVICES", "GLCM_HOMOGENEITY", "GRAPH_FUSION_BLOCKS",
    "IMAGE_INPUTS", "LESION_DATASETS", "LESION_KIND_NAMES", "LESION_MODELS", "MODALITIES", "SEARCH_KINDS", "TASKS",
    "VESSEL_DATASETS", "VESSEL_FIELD_DEGREES", "VESSEL_FIELD_DEGREES_BY_IMAGE", "VESSEL_INPUT_MODES", "VESSEL_MODELS",
    "ActorPoolConfig", "ClaheConfig", "Config", "ConfigError", "DataConfig", "EvaluateConfig", "FieldGroup",
    "LabelConfig", "OutputConfig", "PredictConfig", "PreprocessConfig", "PseudoLabelsConfig", "QualityConfig",
    "RayConfig", "ScalingConfig", "SearchDim", "SyntheticConfig", "TrainConfig", "TrainLesionsConfig",
    "TrainVesselsConfig", "TuneConfig", "VesselsConfig", "check", "plain_name", "shared_fields",
]
