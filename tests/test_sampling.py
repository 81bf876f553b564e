"""Sample orders: length grouping (less padding, same samples, deterministic) and in the stages."""

from __future__ import annotations

import random

import pytest

from rlhf.config import PPOConfig, RewardConfig, SFTConfig, load
from rlhf.stages.sampling import LENGTH_GROUP_BATCHES, group_by_length


def _padded(order, lengths, bs):
    return sum(
        max(lengths[i] for i in order[s : s + bs]) * len(order[s : s + bs]) for s in range(0, len(order), bs)
    )


def test_grouping_keeps_every_sample_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(9, 120) for _ in range(1000)]
    order = list(range(1000))
    rng.shuffle(order)
    grouped = group_by_length(order, lengths, batch_size=8, seed=3)
    assert sorted(grouped) == list(range(1000))
    real = sum(lengths)
    assert real / _padded(order, lengths, 8) < 0.7  # random batches: about 60 % real tokens
    assert real / _padded(grouped, lengths, 8) > 0.95
    # groups come from consecutive stretches of the shuffled order, so the epoch stays shuffled
    group = LENGTH_GROUP_BATCHES * 8
    assert set(grouped[:group]) == set(order[:group])
    assert group_by_length(order, lengths, 8, seed=3) == grouped  # a resumed job sees the same order
    assert group_by_length(order, lengths, 8, seed=4) != grouped  # the next epoch's batch order differs


def test_a_partial_batch_stays_last():
    lengths = list(range(1, 30))  # 29 samples: three batches of 8 and one of 5
    grouped = group_by_length(list(range(29)), lengths, batch_size=8, seed=0)
    assert sorted(grouped[-5:]) == [0, 1, 2, 3, 4]  # the shortest five, still the last batch


def _widths(monkeypatch, stage_cls):
    """Record (real tokens, padded tokens) of every collated training batch."""
    seen = []
    original = stage_cls.collate

    def collate(self, rows):
        batch = original(self, rows)
        seen.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    monkeypatch.setattr(stage_cls, "collate", collate)
    return seen


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_stages_train_on_length_grouped_batches(tiny, tmp_path, monkeypatch, stage):
    from rlhf.stages.dispatch import run_stage
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.sft import SFTStage

    cfg_cls, overrides, stage_cls = {
        "sft": (SFTConfig, tiny.sft_overrides, SFTStage),
        "reward": (RewardConfig, tiny.reward_overrides, RewardStage),
    }[stage]
    shares = {}
    for grouped in (False, True):
        seen = _widths(monkeypatch, stage_cls)
        out = tmp_path / f"grouped-{grouped}"
        cfg = load(
            cfg_cls,
            None,
            overrides(
                out,
                "optim.max_steps=10",
                "logging.eval_interval=0",
                f"data.group_by_length={str(grouped).lower()}",
            ),
        )
        assert run_stage(cfg)["status"] == "completed"
        train = seen[:10]  # the training batches come first (evaluation runs at the end)
        shares[grouped] = sum(r for r, _ in train) / sum(p for _, p in train)
    assert shares[True] > 0.9 > shares[False], shares


def test_ppo_groups_prompts_by_length(tiny, tmp_path):
    from rlhf.stages.ppo import PPOTrainer

    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path, "data.group_by_length=true"))
    trainer = PPOTrainer(cfg)
    batches = list(trainer._prompt_loader(epoch=0, skip_batches=0))
    real = sum(len(p) for batch in batches for p in batch)
    padded = sum(max(map(len, batch)) * len(batch) for batch in batches)
    assert real / padded > 0.9
    resumed = list(trainer._prompt_loader(epoch=0, skip_batches=2))
    assert resumed == batches[2:]
