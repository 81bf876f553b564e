"""PPO with two ranks under mpirun: ZeRO-3 generation in lockstep, and kill-and-resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_multirank import _env, assert_same_saved_model, kill_when_checkpointed, mpirun

pytestmark = pytest.mark.slow


def _ppo(tiny, out, *extra) -> list[str]:
    return [*mpirun(2), sys.executable, "-m", "rlhf", "train", "ppo", *tiny.ppo_overrides(out, *extra)]


@pytest.mark.parametrize(
    "train_batch, extra",
    [
        # EMA on the main rank only: every rank still takes part in gathering the actor's partitions
        (4, ("engines.ema=true",)),
        # 8 = the rollout: the critic's values come from training; the reference is the actor with
        # its LoRA adapters disabled (a frozen partitioned base)
        (8, ("lora.dim=4", "lora.only_optimize_lora=true")),
    ],
)
def test_zero3_ppo_generates_in_lockstep(tiny, tmp_path, train_batch, extra):
    # No live parameters kept: every forward pass gathers, so a rank generating alone would hang
    # (and time out after dist_timeout_seconds) instead of passing by luck.
    out = tmp_path / "ppo"
    cmd = _ppo(
        tiny,
        out,
        "deepspeed.zero_stage=3",
        "deepspeed.stage3_max_live_parameters=0",
        "deepspeed.stage3_param_persistence_threshold=0",
        "deepspeed.dist_timeout_seconds=120",
        "engines.critic_zero_stage=3",
        "ppo.max_iterations=2",
        "evaluation.max_prompts=5",
        f"optim.per_device_train_batch_size={train_batch}",
        *extra,
    )
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["metrics"]["eval/property_rate"] >= 0  # 5 prompts split unevenly across the ranks
    assert len((out / "eval_answers.jsonl").read_text().splitlines()) == 5
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "ema_model" / "model.safetensors").is_file() == ("engines.ema=true" in extra)


def test_killed_ppo_resumes_where_an_uninterrupted_run_would(tiny, tmp_path):
    common = [
        "ppo.max_iterations=6",
        "checkpoint.save_interval=1",
        "deepspeed.zero_stage=2",
        "evaluation.baseline=false",
        "evaluation.max_prompts=4",
    ]
    resumed_as_straight(lambda out: _ppo(tiny, out, *common), tmp_path, "critic", "actor_loss")


def resumed_as_straight(command, tmp_path, last_engine: str, loss: str) -> list[tuple]:
    """Run ``command(out)`` (6 iterations, a checkpoint after each) straight through, and again killed
    right after a checkpoint of ``last_engine`` (the one a trainer saves last), then resumed: both end
    with the same saved model and the same metrics rows (step, split, reward_mean, ``loss``), which it
    returns."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(command(straight), env=_env(), check=True, capture_output=True, timeout=600)

    kill_when_checkpointed(
        command(resumed),
        resumed / "checkpoints" / last_engine / "latest",
        ("step-1", "step-5", "step-6"),
    )
    assert not (resumed / "summary.json").exists()

    subprocess.run(command(resumed), env=_env(), check=True, capture_output=True, timeout=600)
    summary = json.loads((resumed / "summary.json").read_text())
    assert 0 < summary["resumed_from_step"] < 6 and summary["global_step"] == 6
    assert_same_saved_model(straight, resumed)

    def rows(p):
        return [
            (r["step"], r["split"], r.get("reward_mean"), r.get(loss))
            for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
        ]

    assert rows(straight) == rows(resumed)
    return rows(straight)
