"""Which tokenized data a stage reads, built ahead of training by ``rlhf prepare`` or by the stage itself.

Every stage and the prepare step call :func:`prepare_stage_data` with the same config, so the caches
they compute are the same (same keys) and a stage that finds them built does no tokenizing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf.config import ModelConfig, StageConfig
from rlhf.data.cache import PhaseData, prepare_phase_data


def tokenizer_model(cfg: StageConfig) -> ModelConfig:
    """The model section whose tokenizer tokenizes the stage's data (PPO: the actor's)."""
    model = getattr(cfg, "model", None) or getattr(cfg, "actor", None)
    if model is None:
        raise TypeError(f"stage config {type(cfg).__name__} has neither a model nor an actor section")
    return model


def tokenizer_key(cfg: StageConfig) -> str:
    """The config section of :func:`tokenizer_model` ("model" or "actor"), for messages."""
    return "model" if getattr(cfg, "model", None) is not None else "actor"


def data_requests(cfg: StageConfig) -> dict[str, dict[str, Any]]:
    """Named phase-data requests of the stage: name -> keyword arguments of prepare_phase_data."""
    if cfg.phase == 2:
        requests: dict[str, dict[str, Any]] = {
            "prompts": {"phase": 2, "max_prompt_len": cfg.generation.max_prompt_len}  # type: ignore[attr-defined]
        }
        if cfg.ptx.coef > 0:  # type: ignore[attr-defined]
            requests["ptx"] = {"phase": 0}
        return requests
    return {"train": {"phase": cfg.phase}}


def prepare_stage_data(
    cfg: StageConfig,
    tokenizer: Any = None,
    *,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> dict[str, PhaseData]:
    """Build (rank 0) or load every phase-data cache the stage reads; tokenizer loaded when not given."""
    if tokenizer is None:
        from rlhf.models.loading import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_model(cfg), cfg.data, tokenizer_key(cfg))
    return {
        name: prepare_phase_data(cfg, tokenizer, rank=rank, barrier=barrier, **kwargs)
        for name, kwargs in data_requests(cfg).items()
    }
