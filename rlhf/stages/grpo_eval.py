"""GRPO evaluation: greedy answers to held-out prompts, rewarded as in training (the reward
functions and/or the reward model) and, for the synthetic task, checked by its program — PPO's
metrics (:func:`rlhf.stages.ppo_eval.metrics_of`) and comparison, so ``summary.json`` carries the
same ``baseline/*``, ``eval/*`` and ``check/*`` keys as PPO's."""

from __future__ import annotations

import json

import torch

from rlhf.config import GRPOConfig
from rlhf.engine.setup import Runtime
from rlhf.generation import Generated
from rlhf.rewards import RewardFunction, row_of
from rlhf.stages.grpo_models import GRPOModels
from rlhf.stages.grpo_rollout import Row, rewards_of
from rlhf.stages.ppo_eval import answered, held_out, metrics_of, read_eval_prompts
from rlhf.stages.rollout import answer


def eval_set(cfg: GRPOConfig, tokenizer, eval_split) -> tuple[list[list[int]], list[Row]]:
    """Token ids and dataset rows of the evaluation prompts: ``evaluation.prompts`` (JSONL or text,
    rendered and tokenized as the training prompts) or the eval split of the prompts."""
    if source := cfg.evaluation.prompts:
        read = read_eval_prompts(cfg, tokenizer, source)
        return [ids for _, _, ids in read], [row_of(p, source=f"{source}: prompt {i}") for i, p, _ in read]
    chosen = held_out(cfg, eval_split)
    return [list(r["prompt_ids"]) for r in chosen], [json.loads(r["row"]) for r in chosen]


@torch.no_grad()
def evaluate(
    models: GRPOModels,
    cfg: GRPOConfig,
    rt: Runtime,
    functions: list[RewardFunction],
    prompts: list[list[int]],
    rows: list[Row],
) -> tuple[dict[str, float], list[dict]]:
    """Metrics over ``prompts`` (every rank answers its share) and the answered rows; ``score`` is
    the stage's reward."""

    def answer_scored(index: list[int]) -> tuple[Generated, torch.Tensor]:
        batch = [prompts[i] for i in index]
        gen = answer(models, cfg, rt, batch, greedy=True)
        total, _ = rewards_of(models, cfg, rt, functions, batch, [rows[i] for i in index], gen)
        return gen, total

    bs = cfg.generation.per_device_generation_batch_size
    out = answered(rt, models.tokenizer, prompts, bs, answer_scored)
    return metrics_of(out, cfg.evaluation.checker), out
