"""PPO with the static-cache decode loop (compiled or not) trains exactly as with transformers'
generate(): greedy rollouts, the same answers, rewards, KL and losses, iteration by iteration."""

from __future__ import annotations

import json

import pytest

from rlhf.config import PPOConfig, load
from rlhf.stages.dispatch import run_stage

COMPARED = ("reward_mean", "kl", "answer_tokens", "actor_loss", "critic_loss", "approx_kl")


def _train_rows(out):
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("decoder", ["static", "compiled"])
def test_ppo_with_the_static_decoder_trains_as_with_generate(tiny, tmp_path, decoder):
    runs = {}
    for name in ("transformers", decoder):
        out = tmp_path / name
        cfg = load(
            PPOConfig,
            None,
            tiny.ppo_overrides(
                out,
                f"generation.decoder={name}",
                "generation.do_sample=false",
                "ppo.max_iterations=3",
                "evaluation.max_prompts=4",
            ),
        )
        summary = run_stage(cfg)
        assert summary["status"] == "completed"
        runs[name] = (_train_rows(out), summary["metrics"])
    (ref_rows, ref_metrics), (rows, metrics) = runs["transformers"], runs[decoder]
    assert len(rows) == len(ref_rows) == 3
    for ref, row in zip(ref_rows, rows, strict=True):
        for key in COMPARED:
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    for key in ("eval/reward_mean", "eval/answer_tokens", "baseline/reward_mean"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=1e-5), key
