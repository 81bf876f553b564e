"""DPO's evaluation by answers, as PPO's (:mod:`rlhf.stages.ppo_eval`): the policy answers held-out
prompts greedily before the first step (the SFT model) and at the end, and the synthetic task's
program checks the answers when asked — so learning the preferred property shows, and so does
losing the content. There is no reward model, so no reward score."""

from __future__ import annotations

from typing import Any

import torch

from rlhf.config import DPOConfig
from rlhf.data.tokenize import bos_prefix, keep_last
from rlhf.engine.setup import Runtime
from rlhf.generation import Generated, Sampling, generate
from rlhf.stages import ppo_eval


def eval_prompts(cfg: DPOConfig, tokenizer, eval_pairs) -> list[list[int]]:
    """Token ids of the evaluation prompts: ``evaluation.prompts`` (JSONL, rendered and cut as PPO's)
    or, by default, the distinct prompts of the eval pairs, each cut to its last
    ``generation.max_prompt_len`` tokens; ``evaluation.max_prompts`` at most."""
    if cfg.evaluation.prompts:
        return ppo_eval.eval_prompts(cfg, tokenizer, None)  # type: ignore[arg-type]  # reads the same keys
    if eval_pairs is None or len(eval_pairs) == 0:
        return []
    prefix = bos_prefix(tokenizer)
    seen: dict[tuple[int, ...], None] = {}
    for row in eval_pairs:
        prompt = tuple(
            keep_last(list(row["chosen_ids"][: row["prompt_len"]]), cfg.generation.max_prompt_len, prefix)
        )
        seen.setdefault(prompt, None)
        if len(seen) >= cfg.evaluation.max_prompts:
            break
    return [list(p) for p in seen]


@torch.no_grad()
def evaluate(
    engine: Any, cfg: DPOConfig, rt: Runtime, tokenizer, prompts: list[list[int]]
) -> tuple[dict[str, float], list[dict]]:
    """Metrics over ``prompts`` and their rows (prompt, answer, tokens, ended). Every rank answers its
    share in the same number of batches (ZeRO-3 ranks generate in lockstep); the rows are gathered."""
    gen = cfg.generation
    zero3 = engine.zero_optimization_stage() == 3
    sampling = Sampling(max_new_tokens=gen.max_answer_len)  # greedy
    module = engine.module

    def answer(index: list[int]) -> tuple[Generated, None]:
        out = generate(
            module,
            [prompts[i] for i in index],
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            sampling=sampling,
            device=rt.device,
            synced_gpus=zero3,
            static_prompt_len=gen.max_prompt_len if rt.accel.static_shapes else None,
            decoder=gen.decoder,
            cache_len=gen.max_prompt_len + gen.max_answer_len,
        )
        return out, None

    was_training = module.training
    module.eval()
    try:
        rows = ppo_eval.answered(rt, tokenizer, prompts, gen.per_device_generation_batch_size, answer)
    finally:
        module.train(was_training)
    return ppo_eval.metrics_of(rows, cfg.evaluation.checker), rows
