"""DPO on two ranks under mpirun: ZeRO-2 and ZeRO-3 (the reference log-probs scored by the ranks
together, greedy evaluation in lockstep), LoRA with the adapters-off reference, a ZeRO-3 frozen
copy as the live reference, and kill-and-resume to exactly the uninterrupted model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_multirank import (
    _env,
    assert_ranks_agree,
    assert_same_saved_model,
    kill_when_checkpointed,
    mpirun,
    run_two_ranks,
)

pytestmark = pytest.mark.slow

ZERO3_LOCKSTEP = ["deepspeed.stage3_max_live_parameters=0", "deepspeed.stage3_param_persistence_threshold=0"]


def _dpo(tiny, out, *extra) -> list[str]:
    return [
        f"model.name_or_path={tiny.actor}",
        *tiny._common(out),
        "generation.max_prompt_len=32",
        "generation.max_answer_len=12",
        "evaluation.max_prompts=5",
        "evaluation.checker=synthetic",
        f"evaluation.prompts={tiny.data / 'heldout_prompts.jsonl'}",
        "deepspeed.dist_timeout_seconds=120",
        *extra,
    ]


@pytest.fixture(scope="module")
def zero_runs(tiny, tmp_path_factory):
    """The same 2-rank DPO under ZeRO-2 and ZeRO-3 (no live parameters kept: every forward gathers,
    so a rank scoring or generating alone would hang instead of passing by luck)."""
    root = tmp_path_factory.mktemp("dpo2")
    runs = {}
    for zero, extra in ((2, []), (3, ZERO3_LOCKSTEP)):
        out = root / f"z{zero}"
        results = run_two_ranks(
            "mpirun",
            "dpo",
            _dpo(tiny, out, "optim.max_steps=6", f"deepspeed.zero_stage={zero}", *extra),
            root / f"r{zero}",
        )
        runs[zero] = (out, results)
    return runs


@pytest.mark.parametrize("zero", [2, 3])
def test_two_ranks_train_alike_and_report_everything(zero_runs, zero):
    out, results = zero_runs[zero]
    assert_ranks_agree(results)
    summary = results[0]["summary"]
    assert (
        summary["world_size"] == 2 and summary["global_step"] == 6 and summary["train_samples"] == 6 * 8 * 2
    )
    m = summary["metrics"]
    for key in (
        "eval/reward_accuracy",
        "eval/reward_margin",
        "eval/chosen_logp",
        "baseline/property_rate",
        "eval/property_rate",
        "check/property_gain_points",
    ):
        assert key in m, key
    assert len((out / "eval_answers.jsonl").read_text().splitlines()) == 5  # 5 prompts split unevenly
    cache = torch.load(out / "reference_logps.pt", weights_only=True)
    assert cache["train"].shape == (summary["data"]["train_samples"], 2)  # every pair, both ranks' shares


def test_zero3_trains_and_exports_what_zero2_does(zero_runs):
    z2, z3 = zero_runs[2][0], zero_runs[3][0]
    # the reference log-probs scored by the partitioned policy are those of the replicated one
    c2, c3 = (torch.load(out / "reference_logps.pt", weights_only=True) for out in (z2, z3))
    torch.testing.assert_close(c2["train"], c3["train"], atol=1e-4, rtol=1e-5)
    m2, m3 = (load_file(out / "model" / "model.safetensors") for out in (z2, z3))
    assert m2.keys() == m3.keys()
    for key in m2:
        torch.testing.assert_close(m2[key], m3[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "zero, extra",
    [
        (2, ["lora.dim=4", "lora.only_optimize_lora=true"]),  # the policy without its adapters
        (3, ZERO3_LOCKSTEP),  # a frozen copy, ZeRO-3 partitioned like the policy
    ],
    ids=["zero2-lora-adapters", "zero3-copy"],
)
def test_a_live_reference_on_two_ranks(tiny, tmp_path, zero, extra):
    out = tmp_path / "out"
    results = run_two_ranks(
        "mpirun",
        "dpo",
        _dpo(
            tiny,
            out,
            "optim.max_steps=4",
            f"deepspeed.zero_stage={zero}",
            "dpo.reference_logps=live",
            "evaluation.baseline=false",
            "logging.log_interval=1",
            *extra,
        ),
        tmp_path,
    )
    assert_ranks_agree(results)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy = reference
    assert not (out / "reference_logps.pt").exists()


def test_killed_dpo_resumes_where_an_uninterrupted_run_would(tiny, tmp_path):
    common = [
        "optim.max_steps=12",
        "optim.epochs=2",  # the tiny set gives 6 steps an epoch: the resumed run crosses an epoch
        "checkpoint.save_interval=2",
        "deepspeed.zero_stage=2",
        "optim.lr_scheduler=cosine",
        "optim.warmup_steps=2",
        "model.dropout=0.1",
        "optim.gradient_accumulation_steps=2",
    ]

    def cmd(out):
        return [*mpirun(2), sys.executable, "-m", "rlhf", "train", "dpo", *_dpo(tiny, out, *common)]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(cmd(straight), env=_env(), check=True, capture_output=True, timeout=900)
    kill_when_checkpointed(cmd(resumed), resumed / "checkpoints" / "latest", ("step-2", "step-12"))
    assert not (resumed / "summary.json").exists()
    proc = subprocess.run(cmd(resumed), env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    summary = json.loads((resumed / "summary.json").read_text())
    assert 2 < summary["resumed_from_step"] < 12 and summary["global_step"] == 12
    assert "reference log-probs" not in proc.stderr  # read back, not scored again
    assert_same_saved_model(straight, resumed)

    def rows(p):
        return [
            (r["step"], r["split"], r.get("loss"), r.get("reward_margin"), r.get("property_rate"))
            for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
        ]

    assert rows(straight) == rows(resumed)
    s = json.loads((straight / "summary.json").read_text())["metrics"]
    assert summary["metrics"] == pytest.approx(s)
