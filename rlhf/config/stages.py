"""One typed config per stage, composed from the shared parts in :mod:`rlhf.config.parts`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rlhf.config.base import Section
from rlhf.config.parts import (
    CheckpointConfig,
    DataConfig,
    DeepSpeedConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RewardModelConfig,
)


class StageConfig(Section):
    """What every training stage has."""

    phase: ClassVar[int]  # which share of data.split this stage trains on (0 SFT, 1 RM, 2 PPO)
    name: ClassVar[str]

    seed: int = Field(1234, description="Seeds data split, shuffling and initialisation (--seed)")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    checkpoint: CheckpointConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def data_cache_dir(self) -> str:
        return self.data.cache_dir or f"{self.checkpoint.output_dir.rstrip('/')}/data_cache"


class SFTConfig(StageConfig):
    """Stage 1: supervised fine-tuning of the actor on prompt -> chosen answers."""

    phase: ClassVar[int] = 0
    name: ClassVar[str] = "sft"
    model: ModelConfig
    loss_on_prompt: bool = Field(
        False, description="Also train on prompt tokens (DeepSpeed-Chat does); default: answer tokens only"
    )

    @model_validator(mode="after")
    def _check_data(self) -> SFTConfig:
        if not self.data.sft_only_paths and not (self.data.paths and self.data.split[0] > 0):
            raise ValueError("data: SFT needs data.sft_only_paths, or data.paths with a positive SFT share in data.split")
        return self


class RewardConfig(StageConfig):
    """Stage 2: reward model (base transformer + scalar head) on chosen/rejected pairs."""

    phase: ClassVar[int] = 1
    name: ClassVar[str] = "reward"
    model: RewardModelConfig
    pairwise_loss: Literal["last_token", "divergence"] = Field(
        "last_token",
        description="last_token: Bradley-Terry on the sequence scores; divergence: DeepSpeed-Chat's "
        "per-token loss over the span where chosen and rejected differ",
    )

    @model_validator(mode="after")
    def _check_data(self) -> RewardConfig:
        if not self.data.paths or self.data.split[1] <= 0:
            raise ValueError("data: the reward stage needs data.paths with a positive reward share in data.split")
        return self


STAGES: dict[str, type[StageConfig]] = {"sft": SFTConfig, "reward": RewardConfig}
