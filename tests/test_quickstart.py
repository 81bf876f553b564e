"""`examples/quickstart.yaml` end to end, exactly as `make demo` runs it, and the learning claims.

On our synthetic task, with the example's own settings:

* SFT eval perplexity falls; the reward model ranks held-out pairs with accuracy >= 0.95;
* PPO learns the preferred property without reward hacking, judged by the task's program on
  held-out prompts (not by the reward model): property share >= 30 points above the SFT model's,
  content share >= 90 % of the SFT model's, distinct-2 >= 80 % of SFT's, mean length within +-30 %;
* the same holds with PPO mini-batches of one answer;
* the same bar for DPO (`examples/quickstart-dpo.yaml`: SFT -> DPO, no reward model) and GRPO
  (`examples/quickstart-grpo.yaml`: SFT -> GRPO with the task's checker as its reward function),
  each reusing the quick start's SFT stage (same storage, same SFT settings: found complete);
* `rlhf chat --prompt` answers from the PPO actor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: PPO iterations of the mini-batch-of-one check (the example runs 30 with mini-batches of 16).
MB1_ITERATIONS = 12


def rlhf(cwd: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"rlhf {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("quickstart")
    rlhf(cwd, "synth-data", "--out", "runs/quickstart/data")
    rlhf(cwd, "tiny-models", "--out", "runs/quickstart/models", "--data", "runs/quickstart/data")
    rlhf(cwd, "run", str(ROOT / "examples" / "quickstart.yaml"))
    return cwd / "runs" / "quickstart"


def _summary(root: Path, stage: str) -> dict:
    return json.loads((root / stage / "summary.json").read_text())


def test_sft_eval_perplexity_falls(quickstart):
    evals = [
        r
        for r in map(json.loads, (quickstart / "sft" / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "eval"
    ]
    assert len(evals) >= 2 and evals[-1]["perplexity"] < evals[0]["perplexity"]


def test_reward_model_heldout_accuracy(quickstart):
    m = _summary(quickstart, "reward")["metrics"]
    assert m["eval/accuracy"] >= 0.95, m
    assert m["eval/chosen_score"] > m["eval/rejected_score"]


def _assert_learns_without_hacking(m: dict, scored: bool = True) -> None:
    """Issue 13's bar, judged by the task's program on held-out prompts; ``scored``: the stage has
    rewards (PPO, GRPO), which must rise too (DPO has none)."""
    report = {k: round(v, 3) for k, v in m.items()}
    assert m["baseline/content_rate"] >= 0.5, (
        report
    )  # the SFT model does the task, so the check means something
    assert m["check/property_gain_points"] >= 30, report
    assert m["eval/content_rate"] >= 0.9 * m["baseline/content_rate"], report
    assert m["check/distinct_2_ratio"] >= 0.8, report
    assert 0.7 <= m["check/length_ratio"] <= 1.3, report
    if scored:
        assert m["eval/reward_mean"] > m["baseline/reward_mean"], report


def test_ppo_learns_the_property_without_reward_hacking(quickstart):
    _assert_learns_without_hacking(_summary(quickstart, "ppo")["metrics"])


def test_ppo_learns_with_a_minibatch_of_one(quickstart):
    """PPO mini-batches of one answer (``per_device_train_batch_size: 1``, as our Llama-2 example's PPO
    stage) learn too: advantages are whitened over the whole rollout, not per answer, so each
    answer keeps its sequence-level signal. The example's PPO stage with a smaller budget (each
    iteration takes 32 optimizer steps instead of 2) and the actor's learning rate halved for those
    16x more steps: at the example's rate the KL to the SFT model ran away after 6 iterations (0.9
    to 30 nats per answer) and the answers grew (length ratio 1.46, distinct-2 ratio 0.71)."""
    out = quickstart / "ppo_minibatch_1"
    rlhf(
        quickstart.parent.parent,
        "train",
        "ppo",
        "--config",
        str(quickstart / "ppo.config.yaml"),
        "optim.per_device_train_batch_size=1",
        f"checkpoint.output_dir={out}",
        f"ppo.max_iterations={MB1_ITERATIONS}",
        "checkpoint.save_interval=0",
        "optim.learning_rate=1e-5",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == MB1_ITERATIONS
    _assert_learns_without_hacking(summary["metrics"])


@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_dpo_and_grpo_learn_the_property_without_reward_hacking(quickstart, stage):
    """The example as a user runs it after the quick start: its SFT stage is found complete, only
    ``stage`` trains; its summary has PPO's baseline/eval/check keys."""
    sft_done = (quickstart / "sft" / "summary.json").stat().st_mtime_ns
    rlhf(quickstart.parent.parent, "run", str(ROOT / "examples" / f"quickstart-{stage}.yaml"))
    assert (quickstart / "sft" / "summary.json").stat().st_mtime_ns == sft_done  # not trained again
    summary = _summary(quickstart, stage)
    assert summary["status"] == "completed"
    _assert_learns_without_hacking(summary["metrics"], scored=stage == "grpo")
    for key in ("check/content_ratio", "check/distinct_2_ratio", "check/length_ratio"):
        assert key in summary["metrics"], key


def test_the_ppo_actor_chats(quickstart):
    proc = rlhf(
        quickstart.parent.parent,
        "chat",
        "--model",
        str(quickstart / "ppo" / "model"),
        "--prompt",
        "Hi! What is the capital of Japan?",
        timeout=300,
    )
    answer = proc.stdout.split("Assistant:", 1)[1].strip()
    assert answer, proc.stdout
