"""With LoRA on a frozen base, the reference is the actor with its adapters disabled (no second
model): it gives the same KL, rewards and losses as a separate reference copy."""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, PPOConfig, load
from rlhf.stages.dispatch import run_stage
from rlhf.stages.ppo_models import AdaptersOff, reference_from_adapters

LORA = ("lora.dim=4", "lora.only_optimize_lora=true")


def _train_rows(out):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]


def test_the_adapters_off_reference_trains_as_a_reference_copy(tiny, tmp_path, monkeypatch):
    from rlhf.stages import ppo

    built = {}
    build = ppo.build_models

    def keep(*args):
        built[len(built)] = models = build(*args)
        return models

    monkeypatch.setattr(ppo, "build_models", keep)
    rows = {}
    for reference in ("copy", "adapters"):
        out = tmp_path / reference
        cfg = load(
            PPOConfig,
            None,
            tiny.ppo_overrides(
                out,
                *LORA,
                f"engines.reference={reference}",
                "generation.do_sample=false",
                "ppo.max_iterations=3",
                "evaluation.max_prompts=4",
                "evaluation.baseline=false",
            ),
        )
        assert run_stage(cfg)["status"] == "completed"
        rows[reference] = _train_rows(out)
    assert not isinstance(built[0].reference, AdaptersOff) and isinstance(built[1].reference, AdaptersOff)
    assert built[1].reference.actor is built[1].actor  # no second model
    assert rows["copy"][-1]["kl"] != 0  # the adapters trained: the actor left the reference
    for ref, row in zip(rows["copy"], rows["adapters"], strict=True):
        for key in ("kl", "reward_mean", "actor_loss", "critic_loss", "approx_kl"):
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    "overrides, adapters",
    [
        ((), False),
        (("lora.dim=4",), False),  # the base trains too: its adapters off is no longer the SFT model
        (LORA, True),
        ((*LORA, "engines.reference=copy"), False),
        (("lora.dim=4", "engines.reference=copy"), False),
    ],
)
def test_which_reference(tiny, tmp_path, overrides, adapters):
    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path, *overrides))
    assert reference_from_adapters(cfg) is adapters


@pytest.mark.parametrize(
    "overrides", [("engines.reference=adapters",), ("engines.reference=adapters", "lora.dim=4")]
)
def test_an_adapters_reference_needs_a_frozen_base(tiny, tmp_path, overrides):
    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path, *overrides))
    with pytest.raises(ConfigError, match="engines.reference"):
        reference_from_adapters(cfg)
