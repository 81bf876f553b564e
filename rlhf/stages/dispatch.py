"""``rlhf train STAGE``: the stage kinds' trainers, by stage name."""

from __future__ import annotations

from typing import Any

from rlhf.config.stages import GRPOConfig, PPOConfig, StageConfig
from rlhf.stages.finished import finished_summary


def run_stage(cfg: StageConfig) -> dict[str, Any]:
    """Train one stage to completion and return its summary.

    A stage that already completed with the same config is skipped; an interrupted one resumes
    from its latest checkpoint.
    """
    from rlhf.stages.base import Stage
    from rlhf.stages.dpo import DPOStage
    from rlhf.stages.loop import Trainer
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.sft import SFTStage

    done = finished_summary(cfg)
    if done is not None:
        return dict(done, skipped=True)
    if isinstance(cfg, PPOConfig):
        from rlhf.stages.ppo import PPOTrainer

        return PPOTrainer(cfg).run()
    if isinstance(cfg, GRPOConfig):
        from rlhf.stages.grpo import GRPOTrainer

        return GRPOTrainer(cfg).run()
    stages: dict[str, type[Stage]] = {"sft": SFTStage, "reward": RewardStage, "dpo": DPOStage}
    stage_cls = stages[cfg.name]
    return Trainer(cfg, stage_cls).run()
