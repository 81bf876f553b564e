"""Which tokenized data a stage reads, built ahead of training by ``rlhf prepare`` or by the stage itself.

Every stage and the prepare step call :func:`prepare_stage_data` with the same config, so the caches
they compute are the same (same keys) and a stage that finds them built does no tokenizing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf.config import StageConfig
from rlhf.data.cache import PhaseData, prepare_phase_data


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

        tokenizer = load_tokenizer(cfg.tokenizer_model, cfg.data, cfg.tokenizer_section)
    return {
        name: prepare_phase_data(cfg, tokenizer, rank=rank, barrier=barrier, **kwargs)
        for name, kwargs in cfg.data_requests().items()
    }
