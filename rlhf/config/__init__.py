"""Typed configs (no torch): :func:`load` a stage config from YAML plus dotted overrides."""

from rlhf.config.base import ConfigError, Section, apply_overrides, build, dump, load
from rlhf.config.parts import (
    CheckpointConfig,
    DataConfig,
    DataSource,
    DeepSpeedConfig,
    DPOAlgoConfig,
    DPOEvalConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    OptimizerConfig,
    RewardModelConfig,
)
from rlhf.config.ppo_parts import GenerationConfig, PPOAlgoConfig, PPOEnginesConfig, PPOEvalConfig, PtxConfig
from rlhf.config.stages import STAGES, DPOConfig, PPOConfig, RewardConfig, SFTConfig, StageConfig

__all__ = [
    "STAGES", "CheckpointConfig", "GenerationConfig", "PPOAlgoConfig", "PPOConfig", "PPOEnginesConfig",
    "PPOEvalConfig", "PtxConfig", "ConfigError", "DataConfig", "DataSource", "DeepSpeedConfig",
    "DPOAlgoConfig", "DPOConfig", "DPOEvalConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "OptimConfig", "OptimizerConfig", "RewardConfig", "RewardModelConfig",
    "SFTConfig", "Section", "StageConfig", "apply_overrides", "build", "dump", "load",
]
