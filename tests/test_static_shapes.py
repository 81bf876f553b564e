"""Gaudi's static shapes, exercised on CPU by turning the static-shape path on: every batch PPO
builds — rollouts, ptx batches, the inputs of a reward model with its own tokenizer — has one
fixed width, so the graph compiler sees no new shape."""

from __future__ import annotations

from rlhf.config import PPOConfig, load
from rlhf.engine.accelerator import Accelerator
from rlhf.models.reward import RewardModel
from rlhf.stages.dispatch import run_stage


def test_static_shapes_fix_the_width_of_every_ppo_batch(tiny, tmp_path, monkeypatch):
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models import tiny as tiny_models
    from rlhf.stages import ppo as ppo_module

    monkeypatch.setattr(Accelerator, "static_shapes", property(lambda self: True))
    widths: dict[str, set[int]] = {}

    sft_batch = ppo_module.sft_batch

    def recording_sft_batch(rows, pad_id, length, *args, **kwargs):
        batch = sft_batch(rows, pad_id, length, *args, **kwargs)
        widths.setdefault("ptx", set()).add(batch["input_ids"].size(1))
        return batch

    forward = RewardModel.forward

    def recording_forward(self, input_ids, attention_mask=None):
        name = "own tokenizer" if self.hf.config.vocab_size < 400 else "actor's tokenizer"
        widths.setdefault(name, set()).add(input_ids.size(1))
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(ppo_module, "sft_batch", recording_sft_batch)
    monkeypatch.setattr(RewardModel, "forward", recording_forward)

    other_tok = tiny_models.train_tokenizer(corpus_texts(tiny.data), vocab_size=300)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    other = tiny_models.build_tiny(tmp_path / "other_rm", tokenizer=other_tok, seed=2, **nano)
    cfg = load(
        PPOConfig,
        None,
        tiny.ppo_overrides(
            tmp_path / "out",
            f"reward_model.name_or_path={other}",
            "ptx.coef=0.5",
            f"data.sft_only_paths=[{tiny.data / 'sft.jsonl'}]",
            "ppo.max_iterations=2",
            "evaluation.max_prompts=3",
        ),
    )
    assert run_stage(cfg)["status"] == "completed"
    rollout = cfg.generation.max_prompt_len + cfg.generation.max_answer_len
    assert widths == {
        "ptx": {cfg.data.max_seq_len},  # SFT rows of any length, padded to data.max_seq_len
        "own tokenizer": {cfg.data.max_seq_len},  # the decoded text re-tokenized, padded alike
        "actor's tokenizer": {rollout},  # the critic reads the rollouts: static prompt + answer width
    }
