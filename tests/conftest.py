"""Shared fixtures: a small synthetic dataset and nano models built offline once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# One thread per process, DeepSpeed on its CPU accelerator, no hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions")
)


@dataclass(frozen=True)
class TinySetup:
    data: Path
    actor: Path
    reward: Path

    def _common(self, out: Path) -> list[str]:
        return [
            f"data.paths=[{self.data / 'pairs.jsonl'}]",
            "data.split=0,1,1",
            "data.max_seq_len=64",
            "data.eval_fraction=0.1",
            "optim.learning_rate=3e-3",
            "optim.per_device_train_batch_size=8",
            "optim.per_device_eval_batch_size=16",
            "optim.lr_scheduler=constant",
            "deepspeed.dtype=fp32",
            f"checkpoint.output_dir={out}",
            "logging.progress_bar=false",
            "logging.log_interval=2",
        ]

    def sft_overrides(self, out: Path, *extra: str) -> list[str]:
        return [
            f"model.name_or_path={self.actor}",
            f"data.sft_only_paths=[{self.data / 'sft.jsonl'}]",
            *self._common(out),
            *extra,
        ]

    def reward_overrides(self, out: Path, *extra: str) -> list[str]:
        return [f"model.name_or_path={self.reward}", *self._common(out), *extra]

    def ppo_overrides(self, out: Path, *extra: str) -> list[str]:
        """PPO from the untrained nano models (the critic gets a fresh value head): fast, not learning."""
        return [
            f"actor.name_or_path={self.actor}",
            f"critic.name_or_path={self.reward}",
            *self._common(out),
            "generation.max_prompt_len=32",
            "generation.max_answer_len=12",
            "generation.per_device_generation_batch_size=8",
            "optim.per_device_train_batch_size=4",
            "critic_optim.learning_rate=1e-3",
            "ppo.max_iterations=2",
            "evaluation.max_prompts=6",
            "evaluation.checker=synthetic",
            f"evaluation.prompts={self.data / 'heldout_prompts.jsonl'}",
            "logging.log_interval=1",
            *extra,
        ]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinySetup:
    from rlhf.data.synthetic import corpus_texts, generate
    from rlhf.models import tiny as tiny_models

    root = tmp_path_factory.mktemp("tiny")
    generate(root / "data", seed=0, n_sft=400, n_pairs=400, n_heldout=40)
    tokenizer = tiny_models.train_tokenizer(corpus_texts(root / "data"), vocab_size=512)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    actor = tiny_models.build_tiny(root / "actor", tokenizer=tokenizer, **nano)
    reward = tiny_models.build_tiny(root / "reward", tokenizer=tokenizer, seed=1, **nano)
    return TinySetup(root / "data", actor, reward)
