"""Smoke tests of the benchmark harness (``python -m bench``): tiny settings, no timing assertions.

The figures themselves live in bench/results and bench/README.md; these tests check that the
harness still drives the real code (configs load, the trainer's hooks exist, the operator and its
emulator start) and that its arithmetic and report are right.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is a tool at the repository root, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.operator_bench import percentiles  # noqa: E402
from bench.trainer import overrides, ppo_iteration_flops, summarize_loop, summarize_ppo  # noqa: E402


def _assets(tmp: Path) -> dict[str, Path]:
    return {"pairs": tmp / "pairs.jsonl", "actor": tmp / "actor", "reward": tmp / "reward"}


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_overrides_are_valid_configs_with_deepspeed_chat_settings(stage, tmp_path):
    from rlhf.config import STAGES, load

    cfg = load(STAGES[stage], None, overrides(stage, _assets(tmp_path), tmp_path / "out", 7))
    assert cfg.deepspeed.dtype == "bf16" and cfg.deepspeed.zero_stage == 2
    assert cfg.optim.per_device_train_batch_size == 8 and cfg.data.max_seq_len == 128
    if stage == "ppo":
        gen = cfg.generation
        assert (gen.max_prompt_len, gen.max_answer_len, gen.per_device_generation_batch_size) == (64, 64, 8)
        assert not gen.do_sample and cfg.ppo.ppo_epochs == 1 and cfg.ppo.max_iterations == 7
    else:
        assert cfg.optim.max_steps == 7


def test_trainer_hooks_exist():
    """The probes override these methods: a rename in the trainer must fail here, not silently."""
    from rlhf.stages.ppo import PPOTrainer
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.sft import SFTStage

    assert (
        callable(PPOTrainer._metrics) and callable(SFTStage.train_loss) and callable(RewardStage.train_loss)
    )
    import inspect

    assert list(inspect.signature(PPOTrainer._metrics).parameters) == [
        "self",
        "exp",
        "gen_stats",
        "train_stats",
        "t0",
        "t1",
        "t2",
        "models",
    ]


def test_loop_summary_counts_steady_steps_only():
    records = [{"t": t, "real": 50, "padded": 100, "samples": 8} for t in (0.0, 5.0, 6.0, 7.0, 8.0)]
    other = [{"t": t + 0.1, "real": 30, "padded": 100, "samples": 8} for t in (0.0, 5.0, 6.0, 7.0, 8.0)]
    ranks = [
        {"records": records, "params": 1000, "world_size": 2, "threads": 1, "accelerator": "cpu"},
        {"records": other, "params": 1000, "world_size": 2, "threads": 1, "accelerator": "cpu"},
    ]
    s = summarize_loop(ranks, warmup=1)  # steps 1..3 of both ranks, from t=5 to t=8
    assert s["steps"] == 3 and s["seconds"] == 3.0
    assert s["real_tokens_per_second"] == (3 * 50 + 3 * 30) / 3
    assert s["padded_tokens_per_second"] == 600 / 3
    assert s["flops_per_second"] == 6 * 1000 * 600 / 3
    with pytest.raises(ValueError):
        summarize_loop(ranks, warmup=4)


def test_ppo_flops_and_summary():
    params = {"actor": 10, "reference": 10, "critic": 3, "reward": 3}
    it = {
        "rows": 8,
        "packed_width": 128,
        "prompt_width": 64,
        "gen_steps": 64,
        "answer_tokens_mean": 64.0,
        "ended_share": 0.0,
        "iteration_seconds": 2.0,
        "generate_seconds": 1.0,
        "experience_seconds": 0.5,
        "train_seconds": 0.5,
        "experience_forwards": {"actor": 0, "reference": 1, "critic": 1},
    }
    f = ppo_iteration_flops(it, params)
    assert f["generate"] == 2 * 10 * 8 * 127
    assert (
        f["experience"] == 2 * (10 + 3) * 8 * 128 and f["score"] == 2 * 3 * 8 * 128
    )  # only the forwards that ran
    assert f["train"] == 6 * 13 * 8 * 128
    rank = {
        "iterations": [dict(it, iteration_seconds=9.0), it, it],
        "params": params,
        "world_size": 1,
        "threads": 2,
        "accelerator": "cpu",
    }
    s = summarize_ppo([rank], warmup=1)
    assert s["iterations"] == 2 and s["samples_per_second"] == 16 / 4.0
    assert s["generate_tokens_per_second"] == 2 * 8 * 64 / 2.0
    assert math.isclose(s["flops_per_second"], 2 * f["total"] / 4.0)


def test_percentiles_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    p = percentiles(values)
    assert (p["p50"], p["p99"], p["max"], p["n"]) == (50.0, 99.0, 100.0, 100)
    assert percentiles([3.0])["p99"] == 3.0


def test_report_compares_with_same_run_references_and_marks_targets():
    ppo = {
        "samples_per_second": 6.0,
        "generate_tokens_per_second": 500.0,
        "generate_seconds_per_iteration": 0.2,
        "answer_tokens_mean": 64.0,
        "ended_share": 0.0,
        "experience_seconds_per_iteration": 0.1,
        "train_seconds_per_iteration": 0.1,
        "flops_per_second": 30e9,
        "generate_flops_per_second": 10e9,
    }
    decoder = {
        "tokens_per_second": 900.0,
        "ms_per_step": 2.0,
        "fraction_of_peak": 0.1,
        "ratio_min": 2.5,
        "ratio_max": 3.5,
        "same_answers": 1.0,
    }
    step = {
        "seconds_per_step": {"ours": 0.13, "plain": 0.1},
        "ratio_min": 1.2,
        "ratio_max": 1.4,
        "fraction_of_peak": {"ours": 0.3, "plain": 0.4},
    }
    result = {
        "peak": {"1": {"bf16": 100.0}},
        "trainer": {
            "ppo": {"1": ppo},
            "sft": {
                "1": {
                    "real_tokens_per_second": 1000.0,
                    "padded_tokens_per_second": 2000.0,
                    "real_share": 0.5,
                    "flops_per_second": 40e9,
                }
            },
        },
        "trl": {"1": {"samples_per_second": 3.0, "trl": "1.16.0", "completion_mean_length": 64.0}},
        "generation": {
            "decoders": {
                "transformers": dict(decoder, tokens_per_second=300.0, ratio_to_transformers=1.0),
                "compiled": dict(decoder, ratio_to_transformers=3.0),
            }
        },
        "step": {"sft": dict(step, ratio_ours_to_plain=1.3), "ppo": dict(step, ratio_ours_to_plain=1.1)},
        "memory": [
            {
                "variant": "lora",
                "mib": {"models_peak": 500.0},
                "expected_mib": {
                    "total": 180.0,
                    "optimizer_step_transient": 6.0,
                    "actor": 120.0,
                    "reference": 0.0,
                    "critic": 54.0,
                    "reward": 7.0,
                    "ema": 0.0,
                },
            }
        ],
        "operator": {
            "levels": {
                "1000": {
                    k: {"p50": 0.1, "p99": 1.5, "n": 40}
                    for k in ("create_to_mpijobs", "create_to_prepare", "condition_to_status")
                }
            },
            "rss_mib_peak": 150.0,
            "rss_mib_idle": 70.0,
        },
    }
    rows = {(r["metric"], r["ranks"]): r for r in report.rows(result)}
    ppo_row = rows["PPO samples/s (end to end)", 1]
    assert ppo_row["reference"] == 3.0 and ppo_row["ratio"] == 2.0  # against TRL in the same run
    assert rows["SFT real tokens/s", 1]["reference"] is None  # no figures from another machine
    assert rows["generation speed-up, compiled loop / generate", 1]["status"] == "met"  # 3.0 >= 3
    assert rows["SFT step time / plain PyTorch", 1]["status"] == "MISSED"  # 1.3 > 1.2
    assert rows["PPO step (actor + critic) time / plain PyTorch", 1]["status"] == "met"
    assert rows["PPO peak memory of the models, lora", 1]["reference"] == 186.0
    assert rows["operator create -> MPIJobs p99", "1000 runs"]["status"] == "MISSED"
    assert rows["operator RSS (peak)", "-"]["status"] == "met"
    assert math.isclose(rows["PPO FLOP/s / bf16 peak", 1]["measured"], 0.3)
    text = report.table(report.rows(result))
    assert "PPO samples/s (end to end)" in text and "MISSED" in text


def test_peak_and_operator_smoke(tmp_path):
    """`python -m bench` end to end for the cheap parts: the table on screen and both JSON files."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "peak,operator",
            "--ranks",
            "1",
            "--levels",
            "1",
            "--probes",
            "1",
            "--wait",
            "0",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "operator create -> MPIJobs p99" in proc.stdout and "operator RSS (peak)" in proc.stdout
    latest = json.loads((out / "latest.json").read_text())
    assert latest["peak"]["1"]["bf16"] > 0 and latest["peak"]["1"]["fp32"] > 0
    level = latest["operator"]["levels"]["1"]
    assert level["create_to_mpijobs"]["n"] == 1 and level["create_to_mpijobs"]["p99"] > 0
    assert 0 < latest["operator"]["rss_mib_peak"] < 10_000
    assert len(list(out.glob("*.json"))) == 2


@pytest.mark.slow
def test_trainer_smoke_one_rank(tmp_path):
    """SFT and PPO through the real trainer on nano models, 1 rank (slow tier: DeepSpeed start-up)."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "trainer",
            "--stages",
            "sft,ppo",
            "--ranks",
            "1",
            "--wait",
            "0",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = json.loads((out / "latest.json").read_text())
    sft, ppo = latest["trainer"]["sft"]["1"], latest["trainer"]["ppo"]["1"]
    assert sft["real_tokens_per_second"] > 0 and 0 < sft["real_share"] <= 1
    assert ppo["samples_per_second"] > 0 and ppo["iterations"] == 1
    assert ppo["params"]["actor"] == ppo["params"]["reference"]
    # no model runs a forward twice on the same tokens: only the reference needs an experience pass
    assert ppo["experience_forwards"] == {"actor": 0, "reference": 1, "critic": 0}
    data = latest["data"]
    assert data["prompt_min"] >= 9 and data["prompt_max"] <= 58
