"""GRPO with two ranks under mpirun: ZeRO-3 generation, reference and reward model in lockstep, and
ZeRO-2 kill-and-resume ending exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from grpo_setup import grpo_overrides
from test_multirank import _env, mpirun
from test_ppo_multirank import resumed_as_straight

pytestmark = pytest.mark.slow


def _grpo(tiny, out, *extra) -> list[str]:
    return [*mpirun(2), sys.executable, "-m", "rlhf", "train", "grpo", *grpo_overrides(tiny, out, *extra)]


def test_zero3_grpo_generates_scores_and_trains_in_lockstep(tiny, tmp_path):
    # No live parameters kept: every forward gathers, so a rank generating (or scoring) alone would hang
    # until dist_timeout_seconds instead of passing by luck. The reference copy and the reward model
    # are partitioned too.
    out = tmp_path / "grpo"
    cmd = _grpo(
        tiny,
        out,
        "deepspeed.zero_stage=3",
        "deepspeed.stage3_max_live_parameters=0",
        "deepspeed.stage3_param_persistence_threshold=0",
        "deepspeed.dist_timeout_seconds=120",
        f"reward_model.name_or_path={tiny.reward}",
        "grpo.max_iterations=2",
        "evaluation.max_prompts=5",
        "grpo.scale_rewards=batch",
    )
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["train_samples"] == 2 * 2 * 16  # iterations x ranks x (4 prompts x 4 answers)
    assert summary["metrics"]["eval/property_rate"] >= 0
    assert len((out / "eval_answers.jsonl").read_text().splitlines()) == 5  # 5 prompts split unevenly
    assert (out / "model" / "model.safetensors").is_file()


def test_killed_zero2_grpo_resumes_where_an_uninterrupted_run_would(tiny, tmp_path):
    common = [
        "grpo.max_iterations=6",
        "checkpoint.save_interval=1",
        "deepspeed.zero_stage=2",
        "evaluation.baseline=false",
        "evaluation.max_prompts=4",
        f"reward_model.name_or_path={tiny.reward}",
        "grpo.scale_rewards=batch",
        "actor.dropout=0.1",
    ]
    rows = resumed_as_straight(lambda out: _grpo(tiny, out, *common), tmp_path, "actor", "loss")
    assert any(r[3] for r in rows if r[1] == "train")  # the actor was updated
