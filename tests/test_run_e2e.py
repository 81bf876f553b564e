"""`rlhf run` end to end on a quickstart-like manifest: the tiny offline setup, real stages, real processes.

Tiny settings through the manifest's trainerOptions keep it short. The first run takes only SFT and
the reward model (`--stages sft,reward`); the full run then adds PPO (they are skipped), and a
rerun skips every stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.config import STAGES

pytestmark = pytest.mark.slow

SHORT = {"optim.max_steps": 6, "data.max_seq_len": 64, "logging.log_interval": 2}
PPO_SHORT = {
    "data.max_seq_len": 64,
    "ppo.max_iterations": 2,
    "generation.max_prompt_len": 32,
    "generation.max_answer_len": 16,
    "generation.per_device_generation_batch_size": 4,
    "evaluation.max_prompts": 8,
    "logging.log_interval": 1,
}


def rlhf_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "rlhf", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def quickstart(tiny, tmp_path_factory) -> Path:
    """A quickstart-like manifest on the tiny models and data; storage runs/quickstart (relative)."""
    cwd = tmp_path_factory.mktemp("run-e2e")
    stage = {"resources": {"cpu": 1}, "dtype": "fp32", "perDeviceTrainBatchSize": 8}
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFRun",
        "metadata": {"name": "quickstart"},
        "spec": {
            "accelerator": "cpu",
            "models": {"actor": str(tiny.actor), "reward": str(tiny.reward)},
            "data": {
                "datasets": [{"path": str(tiny.data / "pairs.jsonl")}],
                "sftOnlyDatasets": [{"path": str(tiny.data / "sft.jsonl")}],
                "split": "0,5,5",
                "evalFraction": 0.1,
            },
            "storage": {"localDir": "runs/quickstart"},
            "stages": {
                "sft": {**stage, "learningRate": 1e-3, "trainerOptions": SHORT},
                "reward": {**stage, "learningRate": 5e-4, "trainerOptions": SHORT},
                "ppo": {
                    **stage,
                    "perDeviceTrainBatchSize": 4,
                    "resources": {"cpu": 2},
                    "trainerOptions": PPO_SHORT,
                },
            },
        },
    }
    (cwd / "quickstart.yaml").write_text(yaml.safe_dump(manifest))
    return cwd


def summary_of(cwd: Path) -> dict:
    return json.loads((cwd / "runs" / "quickstart" / "run_summary.json").read_text())


def answer(model_dir: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.formats import format_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(format_prompt("Name a color."), return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def first_stages(quickstart) -> subprocess.CompletedProcess:
    return rlhf_run(quickstart, "quickstart.yaml", "--stages", "sft,reward")


def test_sft_and_reward_run_and_leave_models_and_a_summary(quickstart, first_stages):
    assert first_stages.returncode == 0, first_stages.stdout[-4000:] + first_stages.stderr[-4000:]
    out = first_stages.stdout
    assert "sft and reward side by side" in out or "sft, then reward" in out
    assert "prepare: done" in out
    summary = summary_of(quickstart)
    assert summary["status"] == "succeeded"
    stages = summary["stages"]
    assert (stages["sft"]["state"], stages["reward"]["state"], stages["ppo"]["state"]) == (
        "done",
        "done",
        "not run",
    )
    assert stages["sft"]["global_step"] == 6 and "eval/perplexity" in stages["sft"]["metrics"]
    assert "eval/accuracy" in stages["reward"]["metrics"]
    root = quickstart / "runs" / "quickstart"
    assert stages["sft"]["model_dir"] == "runs/quickstart/sft/model"
    assert answer(root / "sft" / "model").strip(), "the SFT actor gives no answer"
    for stage in ("sft", "reward"):
        assert (root / stage / "stage.log").is_file() and (root / f"{stage}.config.yaml").is_file()
        data = json.loads((root / stage / "summary.json").read_text())["data"]
        assert data["reused"] is True, (
            f"{stage} tokenized its data itself instead of using rlhf prepare's cache"
        )
    status = yaml.safe_load((root / "status.yaml").read_text())
    assert status["phase"] == "Succeeded"


@pytest.mark.skipif(
    "ppo" not in STAGES, reason="the PPO stage is not in this trainer yet (rlhf.config.STAGES)"
)
def test_full_run_gives_a_chat_able_actor_and_a_rerun_skips_every_stage(quickstart, first_stages):
    assert first_stages.returncode == 0
    full = rlhf_run(quickstart, "quickstart.yaml")
    assert full.returncode == 0, full.stdout[-4000:] + full.stderr[-4000:]
    stages = summary_of(quickstart)["stages"]
    assert {s: v["state"] for s, v in stages.items()} == {
        "sft": "skipped",
        "reward": "skipped",
        "ppo": "done",
    }
    root = quickstart / "runs" / "quickstart"
    assert stages["ppo"]["model_dir"] == "runs/quickstart/ppo/model"
    assert stages["ppo"]["metrics"], "PPO reported no metrics"
    assert answer(root / "ppo" / "model").strip(), "the PPO actor gives no answer"
    assert json.loads((root / "ppo" / "summary.json").read_text())["data"]["reused"] is True

    before = (root / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns
    rerun = rlhf_run(quickstart, "quickstart.yaml")
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert "nothing to run" in rerun.stdout and "prepare:" not in rerun.stdout
    assert {s: v["state"] for s, v in summary_of(quickstart)["stages"].items()} == {
        "sft": "skipped",
        "reward": "skipped",
        "ppo": "skipped",
    }
    assert (root / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns == before
