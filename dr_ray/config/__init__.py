"""Typed configs: frozen dataclasses + YAML loading (defaults, per-dataset deltas, --set overrides)."""

from dr_ray.config.loader import config_hash, dump_yaml, load_config, parse_override, to_dict
from dr_ray.config.schema import (
    DATASETS,
    ClaheConfig,
    Config,
    ConfigError,
    DataConfig,
    EvaluateConfig,
    OutputConfig,
    PreprocessConfig,
    PseudoLabelsConfig,
    QualityConfig,
    RayConfig,
    SearchDim,
    SyntheticConfig,
    TrainConfig,
    TrainLesionsConfig,
    TrainVesselsConfig,
    TuneConfig,
    VesselsConfig,
)

__all__ = [
    "DATASETS", "ClaheConfig", "Config", "ConfigError", "DataConfig", "EvaluateConfig", "OutputConfig", "PreprocessConfig", "PseudoLabelsConfig",
    "QualityConfig", "RayConfig", "SearchDim", "SyntheticConfig", "TrainConfig", "TrainLesionsConfig", "TrainVesselsConfig", "TuneConfig", "VesselsConfig", "config_hash",
    "dump_yaml", "load_config", "parse_override", "to_dict",
]
