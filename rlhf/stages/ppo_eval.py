"""PPO evaluation: greedy answers to held-out prompts, scored by the reward model and, for the
synthetic task, checked by its program — so reward hacking shows (reward up, content down)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlhf.config import GRPOConfig, PPOConfig
from rlhf.data.sources import DataError
from rlhf.engine.setup import Runtime
from rlhf.generation import Generated
from rlhf.stages.ppo_models import PPOModels
from rlhf.stages.rollout import answer, score
from rlhf.text_metrics import diversity_stats


def read_eval_prompts(cfg: PPOConfig | GRPOConfig, tokenizer, path: str) -> list[tuple[int, Any, list[int]]]:
    """The prompts of ``path`` (``evaluation.prompts``: JSONL or text), rendered and tokenized as the
    training prompts were and cut to their last ``generation.max_prompt_len`` tokens: (index in the
    file, the prompt as read, token ids) of the first ``evaluation.max_prompts`` that have tokens."""
    from rlhf.data.prompts import read_prompts
    from rlhf.data.tokenize import Encoder, keep_last

    try:
        prompts = read_prompts(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"evaluation.prompts: {e}") from None
    enc = Encoder(tokenizer, cfg.data.chat_format)
    keep = cfg.generation.max_prompt_len
    out = [
        (i, p, keep_last(ids, keep, enc.prefix))
        for i, (p, ids) in enumerate(zip(prompts, enc.prompts(prompts), strict=True))
        if ids
    ]
    if not out:
        raise DataError(f"evaluation.prompts: {path} has no prompts")
    return out[: cfg.evaluation.max_prompts]


def held_out(cfg: PPOConfig | GRPOConfig, eval_split) -> list[dict[str, Any]]:
    """The first ``evaluation.max_prompts`` rows of the prompts' eval split (none without one)."""
    if eval_split is None or len(eval_split) == 0:
        return []
    return list(eval_split.select(range(min(cfg.evaluation.max_prompts, len(eval_split)))))


def eval_prompts(cfg: PPOConfig, tokenizer, eval_split) -> list[list[int]]:
    """Token ids of the evaluation prompts: ``evaluation.prompts`` (JSONL) or the PPO eval split."""
    if cfg.evaluation.prompts:
        return [ids for _, _, ids in read_eval_prompts(cfg, tokenizer, cfg.evaluation.prompts)]
    return [list(r["prompt_ids"]) for r in held_out(cfg, eval_split)]


def _gather(rows: list[Any]) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    out: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, rows)
    return [r for part in out for r in part]


def answered(
    rt: Runtime,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int,
    answer_scored: Callable[[list[int]], tuple[Generated, torch.Tensor | None]],
) -> list[dict[str, Any]]:
    """Every rank answers its share of ``prompts``, in equal numbers of batches (ZeRO-3 ranks generate
    in lockstep): ``answer_scored(index)`` answers the prompts at ``index`` and scores the answers
    (None: no scores, as in DPO). The rows of every prompt, on every rank, in the prompts' order."""
    world, rank = rt.dist.world_size, rt.dist.rank
    per_rank = -(-len(prompts) // world)
    mine = list(range(rank, len(prompts), world))
    mine += [mine[-1] if mine else 0] * (per_rank - len(mine))  # equal work
    rows = []
    for start in range(0, per_rank, batch_size):
        index = mine[start : start + batch_size]
        gen, scores = answer_scored(index)
        for j, i in enumerate(index):
            row = {
                "index": i,
                "prompt": tokenizer.decode(prompts[i], skip_special_tokens=True),
                "answer": tokenizer.decode(gen.answers[j], skip_special_tokens=True),
                "score": None if scores is None else float(scores[j]),
                "tokens": int(gen.content_lens[j]),
                "ended": bool(gen.ended[j]),
            }
            rows.append({k: v for k, v in row.items() if v is not None})
    unique = {r["index"]: r for r in _gather(rows)}
    return [unique[i] for i in sorted(unique)]


@torch.no_grad()
def evaluate(
    models: PPOModels, cfg: PPOConfig, rt: Runtime, prompts: list[list[int]]
) -> tuple[dict[str, float], list[dict]]:
    """Metrics over ``prompts`` (every rank answers its share) and the rows."""

    def answer_scored(index: list[int]) -> tuple[Generated, torch.Tensor]:
        gen = answer(models, cfg, rt, [prompts[i] for i in index], greedy=True)
        return gen, score(models, cfg, gen, rt)

    rows = answered(
        rt, models.tokenizer, prompts, cfg.generation.per_device_generation_batch_size, answer_scored
    )
    return metrics_of(rows, cfg.evaluation.checker), rows


def metrics_of(rows: list[dict], checker: str) -> dict[str, float]:
    """Reward (when the rows carry a ``score``: not for a stage without a reward model), length and
    diversity of the answers; with the synthetic checker, property and content rates."""
    if not rows:
        return {}
    answers = [r["answer"] for r in rows]
    out: dict[str, float] = {}
    if all("score" in r for r in rows):
        scores = torch.tensor([r["score"] for r in rows])
        out.update(reward_mean=float(scores.mean()), reward_std=float(scores.std(unbiased=False)))
    out.update(
        {
            "answer_tokens": sum(r["tokens"] for r in rows) / len(rows),
            "ended_rate": sum(r["ended"] for r in rows) / len(rows),
            **diversity_stats(answers),
        }
    )
    if checker == "synthetic":
        from rlhf.data.synthetic import content_ok, has_property

        out["property_rate"] = sum(map(has_property, answers)) / len(rows)
        out["content_rate"] = sum(content_ok(r["prompt"], r["answer"]) for r in rows) / len(rows)
    return out


def comparison(baseline: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """How the final actor compares with the starting one (the SFT model): the no-hacking checks."""
    out: dict[str, float] = {}
    if "property_rate" in baseline and "property_rate" in final:
        out["property_gain_points"] = 100 * (final["property_rate"] - baseline["property_rate"])
        out["content_ratio"] = (
            final["content_rate"] / baseline["content_rate"] if baseline["content_rate"] else 0.0
        )
    for key, name in (
        ("distinct_2", "distinct_2_ratio"),
        ("mean_words", "length_ratio"),
        ("reward_mean", None),
    ):
        if key in baseline and key in final:
            if name is None:
                out["reward_gain"] = final[key] - baseline[key]
            else:
                out[name] = final[key] / baseline[key] if baseline[key] else 0.0
    return out
