"""Overrides of a fast GRPO stage on the session's nano models (``conftest.tiny``), shared by the GRPO
tests."""

from __future__ import annotations

from pathlib import Path


def grpo_overrides(tiny, out: Path, *extra: str) -> list[str]:
    """GRPO from the untrained nano actor with the synthetic checker as reward function: fast, not
    learning."""
    return [
        f"actor.name_or_path={tiny.actor}",
        f"data.paths=[{tiny.data / 'pairs.jsonl'}]",
        "data.split=0,1,1",
        "data.max_seq_len=64",
        "data.eval_fraction=0.1",
        "optim.learning_rate=3e-3",
        "optim.lr_scheduler=constant",
        "optim.per_device_train_batch_size=8",
        "deepspeed.dtype=fp32",
        f"checkpoint.output_dir={out}",
        "logging.progress_bar=false",
        "logging.log_interval=1",
        "generation.max_prompt_len=32",
        "generation.max_answer_len=12",
        "generation.per_device_generation_batch_size=4",
        "grpo.group_size=4",
        "grpo.max_iterations=2",
        "rewards.functions=[rlhf.data.synthetic:reward]",
        "evaluation.max_prompts=6",
        "evaluation.checker=synthetic",
        f"evaluation.prompts={tiny.data / 'heldout_prompts.jsonl'}",
        *extra,
    ]
