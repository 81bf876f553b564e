"""The tiny offline setup end to end through the CLI, exactly as `make demo` runs it.

Checks the learning claims of the trainer foundation on our synthetic task: SFT eval perplexity
falls, and the reward model ranks held-out pairs with accuracy >= 0.95.
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


def rlhf(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "rlhf", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"rlhf {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    rlhf(cwd, "synth-data", "--out", "runs/demo/data")
    rlhf(cwd, "tiny-models", "--out", "runs/demo/models", "--data", "runs/demo/data")
    rlhf(cwd, "train", "sft", "--config", str(ROOT / "examples/tiny/sft.yaml"), "logging.progress_bar=false")
    rlhf(cwd, "train", "reward", "--config", str(ROOT / "examples/tiny/reward.yaml"), "logging.progress_bar=false")
    return cwd / "runs" / "demo"


def _evals(stage_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "eval"]


def test_sft_eval_perplexity_falls(demo):
    evals = _evals(demo / "sft")
    assert len(evals) >= 2
    assert evals[-1]["perplexity"] < evals[0]["perplexity"]
    summary = json.loads((demo / "sft" / "summary.json").read_text())
    assert summary["metrics"]["eval/perplexity"] == evals[-1]["perplexity"]


def test_reward_model_heldout_accuracy(demo):
    summary = json.loads((demo / "reward" / "summary.json").read_text())
    m = summary["metrics"]
    assert m["eval/accuracy"] >= 0.95, m
    assert m["eval/chosen_score"] > m["eval/rejected_score"]


def test_trained_actor_answers_a_prompt(demo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.formats import format_prompt

    tok = AutoTokenizer.from_pretrained(demo / "sft" / "model")
    model = AutoModelForCausalLM.from_pretrained(demo / "sft" / "model", dtype=torch.float32)
    ids = tok(format_prompt("Name a color."), return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer.strip(), "empty answer"


def test_rerun_skips_finished_stages(demo):
    cwd = demo.parent.parent
    before = (demo / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    proc = rlhf(cwd, "train", "sft", "--config", str(ROOT / "examples/tiny/sft.yaml"), "logging.progress_bar=false")
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["skipped"] is True and summary["global_step"] == summary["total_steps"]
    assert (demo / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == before
