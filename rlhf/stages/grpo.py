"""GRPO and RLOO (``rlhf train grpo``). Each iteration, in numbered steps:

1. sample ``generation_batches`` batches of prompts (PPO's share of the data, with their dataset rows);
2. the actor answers each prompt ``grpo.group_size`` times (sampling, KV cache, batched; ``synced_gpus``
   under ZeRO-3); the old log-probs are generation's own;
3. rewards: the weighted sum of the reward functions (:mod:`rlhf.rewards`) and the frozen reward
   model's clipped score; with a KL term, the reference's log-probs;
4. group-relative advantages (:func:`rlhf.losses.group_advantages`): GRPO's group mean/std
   normalisation or RLOO's leave-one-out baseline, one per answer, on every one of its tokens;
5. ``grpo.rollout_epochs`` passes over the rollout in mini-batches: the clipped policy loss plus
   ``grpo.kl_coef`` times the KL estimate to the reference (no critic);
6. metrics, checkpoint.

Before the first iteration and at the end, held-out prompts are answered greedily and rewarded
(:mod:`rlhf.stages.grpo_eval`); the summary compares the final actor with the SFT model as PPO's does.
Steps 1 and 6, resume, evaluation, export and the summary are PPO's
(:class:`rlhf.stages.rounds.RoundsTrainer`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from rlhf.config import GRPOConfig
from rlhf.config.ppo_parts import PolicyRoundsConfig
from rlhf.rewards import load_functions
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.grpo_eval import eval_set, evaluate
from rlhf.stages.grpo_models import GRPOModels, build_models, check_positions, load_tokenizers
from rlhf.stages.grpo_rollout import Rollout, Row, make_rollout, with_advantages
from rlhf.stages.grpo_train import train_minibatch
from rlhf.stages.ppo_train import collect
from rlhf.stages.rounds import RoundsTrainer, mean


class GRPOTrainer(RoundsTrainer[GRPOConfig, GRPOModels]):
    stage = "grpo"
    engines = ("actor",)
    eval_split = "the prompts' eval split"

    def __init__(self, cfg: GRPOConfig):
        self.functions = load_functions(cfg.rewards)  # user code first: a bad import path fails in seconds
        self.eval_rows: list[Row] = []
        super().__init__(cfg)

    def _tokenizers(self) -> tuple[Any, Any, bool]:
        tokenizers = load_tokenizers(self.cfg)
        check_positions(self.cfg)
        return tokenizers

    def _eval_prompts(self) -> list[list[int]]:
        prompts, self.eval_rows = eval_set(self.cfg, self.tokenizer, self.prompts.eval)
        return prompts

    def _rounds(self) -> tuple[PolicyRoundsConfig, int, int]:
        return self.cfg.grpo, self.cfg.grpo.group_size, self.cfg.grpo.rollout_epochs

    def _build_models(self, total_steps: int) -> GRPOModels:
        return build_models(self.cfg, self.rt, total_steps, self.tokenizers)

    def _evaluate(self, models: GRPOModels) -> tuple[dict[str, float], list[dict]]:
        return evaluate(models, self.cfg, self.rt, self.functions, self.eval_prompts, self.eval_rows)

    def _collate(self, rows: list[dict[str, Any]]) -> tuple[list[list[int]], list[dict[str, Any]]]:
        return [list(r["prompt_ids"]) for r in rows], [json.loads(r["row"]) for r in rows]

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, models: GRPOModels, state: dict[str, Any]) -> None:
        checkpoint.save(
            models.actor,
            self.ckpt_dirs[0],
            state["iteration"],
            state,
            self.rt.dist.rank,
            self.cfg.checkpoint.keep_last,
            {run_settings.FILE: self.settings},
        )

    def _resume(self, models: GRPOModels) -> dict[str, Any] | None:
        if self.resume_tag is None:
            return None
        return checkpoint.load(models.actor, self.ckpt_dirs[0], self.rt.dist.rank, self.resume_tag)

    # ---- an iteration -------------------------------------------------------------------------
    def _iteration(
        self,
        models: GRPOModels,
        batches: list[tuple[list[list[int]], list[Row]]],
        state: dict[str, Any],
        t0: float,
    ) -> tuple[int, float, dict[str, float]]:
        cfg, rt = self.cfg, self.rt
        # (1. the prompts come with their dataset rows)
        # 2.-3. answer each group_size times, reward; the reference's log-probs
        parts, sources, gen_stats = [], [], []
        for prompts, rows in batches:
            rollout, by_source, stats = make_rollout(models, cfg, rt, self.functions, prompts, rows)
            parts.append(rollout)
            sources.append(by_source)
            gen_stats.append(stats)
        # 4. group-relative advantages
        rollout = with_advantages(Rollout.cat(parts, self.tokenizer.pad_token_id), cfg, rt.device)
        t1 = time.perf_counter()
        # 5. policy updates over the rollout
        train_stats = self._train(models, rollout, state)
        t2 = time.perf_counter()
        return len(rollout), t2, self._metrics(rollout, sources, gen_stats, train_stats, t0, t1, t2, models)

    def _train(self, models: GRPOModels, rollout: Rollout, state: dict[str, Any]) -> dict[str, list[float]]:
        stats: dict[str, list[float]] = {}
        for index in self._minibatches(len(rollout), state["iteration"]):
            collect(stats, train_minibatch(models, rollout.select(index), self.cfg, self.rt.device))
            self.rt.accel.mark_step()
        return stats

    def _metrics(
        self, rollout: Rollout, sources, gen_stats, train_stats, t0, t1, t2, models: GRPOModels
    ) -> dict[str, float]:
        world, g = self.rt.dist.world_size, self.cfg.grpo.group_size
        rewards = rollout.rewards
        groups = rewards.view(-1, g)
        generated = sum(s["generated_tokens"] for s in gen_stats)
        gen_seconds = sum(s["generate_seconds"] for s in gen_stats)
        row = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "group_reward_std": float(groups.std(dim=1).mean()),
            "zero_std_groups": float((groups.std(dim=1) == 0).float().mean()),
            "answer_tokens": float(rollout.action_mask.sum(dim=1).mean()),
            "generate_seconds": gen_seconds,
            "reward_seconds": sum(s["reward_seconds"] for s in gen_stats),
            "reference_seconds": sum(s["reference_seconds"] for s in gen_stats),
            "train_seconds": t2 - t1,
            "iteration_seconds": t2 - t0,
            "generate_tokens_per_second": generated * world / max(gen_seconds, 1e-9),
            "samples_per_second": len(rollout) * world / max(t2 - t0, 1e-9),
            "lr": models.actor.get_lr()[0],
        }
        for name in sources[0]:
            row[f"reward/{name}"] = float(torch.cat([s[name] for s in sources]).float().mean())
        row.update({k: mean(v) for k, v in train_stats.items()})
        return row


def train(cfg: GRPOConfig) -> dict[str, Any]:
    """``rlhf train grpo``: train the stage to completion; its summary."""
    return GRPOTrainer(cfg).run()
