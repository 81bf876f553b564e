"""GRPO evaluation: greedy answers to held-out prompts, rewarded as in training (the reward
functions and/or the reward model) and, for the synthetic task, checked by its program — PPO's
metrics (:func:`rlhf.stages.ppo_eval.metrics_of`) and comparison, so ``summary.json`` carries the
same ``baseline/*``, ``eval/*`` and ``check/*`` keys as PPO's."""

from __future__ import annotations

import json
from typing import Any

import torch

from rlhf.config import GRPOConfig
from rlhf.data.sources import DataError
from rlhf.engine.setup import Runtime
from rlhf.rewards import RewardFunction, row_of
from rlhf.stages.grpo_models import GRPOModels
from rlhf.stages.grpo_rollout import Row, answer, rewards_of


def eval_set(cfg: GRPOConfig, tokenizer, eval_split) -> tuple[list[list[int]], list[Row]]:
    """Token ids and dataset rows of the evaluation prompts: ``evaluation.prompts`` (JSONL or text,
    rendered and tokenized as the training prompts) or the eval split of the prompts."""
    keep, ev = cfg.generation.max_prompt_len, cfg.evaluation
    if ev.prompts:
        from rlhf.data.prompts import read_prompts
        from rlhf.data.tokenize import Encoder, keep_last

        try:
            prompts = read_prompts(ev.prompts)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"evaluation.prompts: {e}") from None
        enc = Encoder(tokenizer, cfg.data.chat_format)
        pairs = [(keep_last(ids, keep, enc.prefix), row_of(p, source=f"{ev.prompts}: prompt {i}"))
                 for i, (p, ids) in enumerate(zip(prompts, enc.prompts(prompts), strict=True)) if ids]
        if not pairs:
            raise DataError(f"evaluation.prompts: {ev.prompts} has no prompts")
        pairs = pairs[: ev.max_prompts]
        return [p for p, _ in pairs], [r for _, r in pairs]
    if eval_split is None or len(eval_split) == 0:
        return [], []
    chosen = eval_split.select(range(min(ev.max_prompts, len(eval_split))))
    return [list(r["prompt_ids"]) for r in chosen], [json.loads(r["row"]) for r in chosen]


def _gather(rows: list[Any]) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    out: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, rows)
    return [r for part in out for r in part]


@torch.no_grad()
def evaluate(
    models: GRPOModels, cfg: GRPOConfig, rt: Runtime, functions: list[RewardFunction],
    prompts: list[list[int]], rows: list[Row],
) -> tuple[dict[str, float], list[dict]]:
    """Metrics over ``prompts`` (every rank answers its share, in equal numbers of batches: ZeRO-3
    ranks generate in lockstep) and the answered rows; ``score`` is the stage's reward."""
    from rlhf.stages.ppo_eval import metrics_of

    world, rank = rt.dist.world_size, rt.dist.rank
    bs = cfg.generation.per_device_generation_batch_size
    per_rank = -(-len(prompts) // world)
    mine = list(range(rank, len(prompts), world))
    mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
    tok = models.tokenizer
    out = []
    for start in range(0, per_rank, bs):
        index = mine[start : start + bs]
        batch = [prompts[i] for i in index]
        gen = answer(models, cfg, rt, batch, greedy=True)
        total, _ = rewards_of(models, cfg, rt, functions, batch, [rows[i] for i in index], gen)
        for j, i in enumerate(index):
            out.append({"index": i, "prompt": tok.decode(prompts[i], skip_special_tokens=True),
                        "answer": tok.decode(gen.answers[j], skip_special_tokens=True),
                        "score": float(total[j]), "tokens": int(gen.content_lens[j]), "ended": bool(gen.ended[j])})
    unique = {r["index"]: r for r in _gather(out)}
    answered = [unique[i] for i in sorted(unique)]
    return metrics_of(answered, cfg.evaluation.checker), answered
