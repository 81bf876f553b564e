"""Build every stage's tokenized data caches ahead of training, with the exact configs the stages get."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.api import RLHFRun, stage_config
from rlhf.config import STAGES, StageConfig, build


@dataclass(frozen=True)
class StageData:
    """One stage's data caches: name (train, prompts, ptx) -> stats of the cache."""

    stage: str
    caches: dict[str, dict[str, Any]]

    def describe(self) -> str:
        parts = []
        for name, stats in self.caches.items():
            samples = f"{stats.get('train_samples', 0)} train / {stats.get('eval_samples', 0)} eval"
            parts.append(f"{name}: {'reused' if stats.get('reused') else 'built'} ({samples})")
        return "; ".join(parts)


def _tokenizer_for(run: RLHFRun, cfg: StageConfig) -> Any:
    """The tokenizer the stage will load, or a stand-in while it is a stage output not written yet.

    PPO tokenizes with its actor's tokenizer, which SFT's output carries: before SFT ran, that is
    the tokenizer SFT starts from (the same vocabulary, so the same cache key).
    """
    from rlhf.models.loading import load_tokenizer

    model = cfg.tokenizer_model
    if Path(model.tokenizer or model.name_or_path).exists() or cfg.name == "sft":
        return None  # prepare_stage_data loads it, exactly as the stage will
    sft = build(STAGES["sft"], stage_config(run, "sft"))
    return load_tokenizer(sft.tokenizer_model, cfg.data, cfg.tokenizer_section)


def build_caches(run: RLHFRun, stages: list[str]) -> list[StageData]:
    """Build (or find) the data caches of ``stages`` (those the trainer has) in the run's data_cache."""
    from rlhf.stages.data import prepare_stage_data

    out = []
    for stage in stages:
        if stage not in STAGES:
            continue
        cfg = build(STAGES[stage], stage_config(run, stage), f"stage {stage}")
        data = prepare_stage_data(cfg, _tokenizer_for(run, cfg))
        out.append(StageData(stage, {name: phase.stats for name, phase in data.items()}))
    return out
