"""Typed configs (no torch): :func:`load` a stage config from YAML plus dotted overrides."""

from rlhf.config.base import ConfigError, Section, apply_overrides, build, dump, load
from rlhf.config.parts import (
    CheckpointConfig,
    DataConfig,
    DataSource,
    DeepSpeedConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RewardModelConfig,
)
from rlhf.config.stages import STAGES, RewardConfig, SFTConfig, StageConfig

__all__ = [
    "STAGES", "CheckpointConfig", "ConfigError", "DataConfig", "DataSource", "DeepSpeedConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "OptimConfig", "RewardConfig", "RewardModelConfig",
    "SFTConfig", "Section", "StageConfig", "apply_overrides", "build", "dump", "load",
]
