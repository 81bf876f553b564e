"""Steps 2-4 of a GRPO iteration: answer every prompt ``group_size`` times, reward the answers,
turn rewards into group-relative advantages. Everything here runs without gradients.

The actor's old log-probs come from generation (as PPO's), and the reference's log-probs are
computed only when the loss has a KL term. Answers are PPO's (:func:`rlhf.stages.rollout.answer`,
KV-cached and batched, ``synced_gpus`` under ZeRO-3), and the reward model scores them exactly as
PPO's does (:func:`rlhf.stages.rollout.reward_model_scores`: the layout the reward stage trained on).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from rlhf import losses
from rlhf.config import GRPOConfig
from rlhf.engine.setup import Runtime
from rlhf.generation import Generated
from rlhf.rewards import RewardFunction, weighted_sum
from rlhf.stages.grpo_models import GRPOModels
from rlhf.stages.packed import Packed
from rlhf.stages.rollout import actor_logprobs, answer, reward_model_scores

Row = Mapping[str, Any]


@dataclass
class Rollout(Packed):
    """Answers of one or more generation batches, right-packed ``[N, T]``; per-action tensors are
    ``[N, T-1]``; a group's ``group_size`` answers are adjacent. ``rewards`` and ``advantages`` are
    per answer ``[N]``; ``advantages`` is None until :func:`with_advantages`."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None
    rewards: torch.Tensor
    advantages: torch.Tensor | None = None


def model_scores(models: GRPOModels, cfg: GRPOConfig, gen: Generated, rt: Runtime) -> torch.Tensor:
    """The frozen reward model's scores, clipped to ``+-rewards.model_score_clip``; an answer shorter
    than ``generation.min_answer_len`` gets ``-model_score_clip`` (as PPO's)."""
    clip = cfg.rewards.model_score_clip
    return reward_model_scores(models, cfg, gen, rt, -clip).clamp(-clip, clip)


def texts(models: GRPOModels, prompts: list[list[int]], gen: Generated) -> tuple[list[str], list[str]]:
    """(prompt text, answer text) of every answer, decoded without special tokens."""
    tok = models.tokenizer
    prompt_texts = [tok.decode(p, skip_special_tokens=True) for p in prompts]
    return prompt_texts, [tok.decode(a, skip_special_tokens=True) for a in gen.answers]


def rewards_of(
    models: GRPOModels,
    cfg: GRPOConfig,
    rt: Runtime,
    functions: list[RewardFunction],
    prompts: list[list[int]],
    rows: list[Row],
    gen: Generated,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 3: every answer's reward, the weighted sum of the reward functions and the reward model;
    also each source's values (``<function metric>``, ``model``) for the metrics."""
    prompt_texts, answer_texts = texts(models, prompts, gen)
    columns, weights, parts = [], [], {}
    for f in functions:
        values = f(prompt_texts, answer_texts, rows)
        columns.append(values)
        weights.append(f.weight)
        parts[f.metric] = torch.tensor(values)
    if models.reward is not None:
        scores = model_scores(models, cfg, gen, rt)
        columns.append(scores.tolist())
        weights.append(cfg.rewards.model_weight)
        parts["model"] = scores
    return torch.tensor(weighted_sum(columns, weights), dtype=torch.float32), parts


@torch.no_grad()
def make_rollout(
    models: GRPOModels,
    cfg: GRPOConfig,
    rt: Runtime,
    functions: list[RewardFunction],
    prompts: list[list[int]],
    rows: list[Row],
) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
    """Steps 2-4a for one generation batch of prompts: ``group_size`` answers each (adjacent), their
    rewards, and the reference's log-probs when the loss has a KL term."""
    g = cfg.grpo.group_size
    repeated = [p for p in prompts for _ in range(g)]
    repeated_rows = [r for r in rows for _ in range(g)]
    t0 = time.perf_counter()
    gen = answer(models, cfg, rt, repeated)  # 2. generate
    t1 = time.perf_counter()
    rewards, parts = rewards_of(models, cfg, rt, functions, repeated, repeated_rows, gen)  # 3. reward
    t2 = time.perf_counter()
    seqs, mask = gen.sequences.to(rt.device), gen.attention_mask.to(rt.device)
    logprobs = gen.logprobs
    if logprobs is None:  # a decoder that returned no scores: one actor forward
        models.actor.eval()
        logprobs = actor_logprobs(models.actor, seqs, mask).cpu()
        models.actor.train()
    ref = actor_logprobs(models.reference, seqs, mask).cpu() if models.reference is not None else None
    action = gen.action_mask.float()
    rollout = Rollout(
        gen.sequences,
        gen.attention_mask,
        action,
        logprobs * action,
        None if ref is None else ref * action,
        rewards,
    )
    t3 = time.perf_counter()
    stats = {
        "generate_seconds": t1 - t0,
        "reward_seconds": t2 - t1,
        "reference_seconds": t3 - t2,
        "generated_tokens": float(gen.answer_lens.sum()),
    }
    return rollout, parts, stats


def batch_std(rewards: torch.Tensor, device: torch.device) -> float:
    """The standard deviation of every rank's rewards together (collective; Bessel-corrected)."""
    import torch.distributed as dist

    packed = (
        torch.stack(
            [
                rewards.double().sum(),
                (rewards.double() ** 2).sum(),
                torch.tensor(float(rewards.numel()), dtype=torch.float64),
            ]
        )
        .float()
        .to(device)
    )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(packed)
    total, squares, n = packed.cpu().double().tolist()
    var = (squares - total * total / n) / max(n - 1, 1)
    return max(var, 0.0) ** 0.5


def scale_of(cfg: GRPOConfig) -> str:
    """``grpo.scale_rewards`` with auto resolved: group for GRPO, none for RLOO."""
    scale = cfg.grpo.scale_rewards
    if scale == "auto":
        return "group" if cfg.grpo.advantage == "group" else "none"
    return scale


def with_advantages(rollout: Rollout, cfg: GRPOConfig, device: torch.device) -> Rollout:
    """Step 4b: every answer's advantage against its group (:func:`rlhf.losses.group_advantages`);
    with ``scale_rewards: batch`` scaled by the standard deviation of the whole rollout, every rank's
    rewards together (a collective every rank calls once per iteration)."""
    scale = scale_of(cfg)
    std = batch_std(rollout.rewards, device) if scale == "batch" else None
    adv = losses.group_advantages(
        rollout.rewards, cfg.grpo.group_size, cfg.grpo.advantage, scale, batch_std=std
    )
    return replace(rollout, advantages=adv)
