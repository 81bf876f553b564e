"""Typed configs (no torch): :func:`load` a stage config from YAML plus dotted overrides."""

from rlhf.config.base import ConfigError, Section, apply_overrides, build, dump, load
from rlhf.config.parts import (
    CheckpointConfig,
    DataConfig,
    DataSource,
    DeepSpeedConfig,
    DPOAlgoConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    OptimizerConfig,
    RewardFunctionConfig,
    RewardModelConfig,
    RewardsConfig,
)
from rlhf.config.ppo_parts import (
    GenerationConfig,
    GRPOAlgoConfig,
    PPOAlgoConfig,
    PPOEnginesConfig,
    PPOEvalConfig,
    PtxConfig,
)
from rlhf.config.stages import STAGES, DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, StageConfig

__all__ = [
    "STAGES", "CheckpointConfig", "GenerationConfig", "PPOAlgoConfig", "PPOConfig", "PPOEnginesConfig",
    "PPOEvalConfig", "PtxConfig", "ConfigError", "DataConfig", "DataSource", "DeepSpeedConfig",
    "DPOAlgoConfig", "DPOConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "OptimConfig", "OptimizerConfig", "RewardConfig", "RewardModelConfig",
    "GRPOAlgoConfig", "GRPOConfig", "RewardFunctionConfig", "RewardsConfig",
    "SFTConfig", "Section", "StageConfig", "apply_overrides", "build", "dump", "load",
]
