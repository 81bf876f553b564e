"""bench.grpo's arithmetic, the DPO/GRPO rows of the report, and the orchestrator's ``grpo`` part."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is a tool at the repository root, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import grpo, report, run  # noqa: E402


def _rank(rank: int, seconds: list[float], cpu: list[float] | None) -> dict:
    out = {"rank": rank, "world_size": 2, "seconds": seconds, "answers_per_step": 16, "lengths": [64.0] * 3}
    if cpu is not None:
        out["cpu_seconds"] = cpu
    return out


def test_summarize_times_rank_0_and_sums_every_ranks_cpu_time():
    ranks = [_rank(1, [9.0, 1.0, 3.0], [9.0, 1.0, 1.0]), _rank(0, [9.0, 2.0, 2.0], [9.0, 1.5, 0.5])]
    s = grpo.summarize(ranks, warmup=1)
    assert s["steps"] == 2 and s["seconds_per_step"] == 2.0
    assert s["samples_per_second"] == pytest.approx(16 * 2 * 2 / 4.0)  # both ranks' answers, rank 0's clock
    assert s["samples_per_cpu_second"] == pytest.approx(64 / (2.0 + 2.0))  # every rank's CPU seconds
    assert grpo.summarize([_rank(0, [1.0, 1.0], None)], warmup=1)["samples_per_cpu_second"] is None
    with pytest.raises(ValueError):
        grpo.summarize([_rank(0, [1.0], [1.0])], warmup=1)


def test_report_rows_compare_with_trl_in_the_same_run_and_mark_the_targets():
    side = {"samples_per_second": 4.0, "samples_per_cpu_second": 2.0, "answer_tokens_mean": 64.0}
    pair = {"pairs_per_second": 30.0, "pairs_per_cpu_second": 15.0}
    result = {
        "grpo": {
            "settings": {"steps": 10},
            "1": {"ours": dict(side, samples_per_second=9.0), "trl": side, "ratio": 2.25},
            "2": {"ours": side, "trl": dict(side, samples_per_cpu_second=None), "ratio": 1.0},
        },
        "dpo": {"layouts": {"1": {"ours_live": pair, "trl_live": dict(pair, pairs_per_second=25.0)}}},
    }
    rows = {(r["metric"], r["ranks"]): r for r in report.rows(result)}
    one = rows["GRPO samples/s", 1]
    assert (one["reference"], one["target"], one["ratio"], one["status"]) == (4.0, 8.0, 2.25, "met")
    assert rows["GRPO samples per CPU-second", 1]["status"] == "MISSED"  # 2.0 < 2 x 2.0
    assert rows["GRPO samples/s", 2]["status"] == "MISSED"
    assert ("GRPO samples per CPU-second", 2) not in rows  # TRL's CPU time missing: no row
    dpo = rows["DPO pairs/s (live reference)", 1]
    assert dpo["ratio"] == pytest.approx(1.2) and dpo["target"] == 37.5 and dpo["status"] == "MISSED"
    assert rows["DPO pairs per CPU-second (live reference)", 1]["ratio"] == 1.0
    assert "GRPO samples/s" in report.table(report.rows(result))


def test_the_grpo_part_is_wired_and_skipped_with_a_message_without_trl(tmp_path, monkeypatch, capsys):
    assert "grpo" in run.SETTINGS["full"] and "grpo" in run.SETTINGS["quick"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    called: list[str] = []
    monkeypatch.setattr(run, "run_module", lambda module, *a, **k: called.append(module))
    monkeypatch.setattr(run.assets, "build", lambda *a, **k: called.append("assets"))
    argv = ["--quick", "--only", "dpo,grpo", "--ranks", "1", "--wait", "0"]
    assert run.main([*argv, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
    err = capsys.readouterr().err
    assert "no grpo part" in err and "no dpo part" in err
    assert called == []  # neither ran, and no assets were built for them


def test_the_grpo_part_runs_bench_grpo_compare(tmp_path, monkeypatch):
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed (the bench extra)")
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(run, "run_module", lambda module, args, threads: calls.append((module, args)) or {})
    monkeypatch.setattr(run.assets, "build", lambda *a, **k: None)
    argv = ["--quick", "--only", "grpo", "--ranks", "1,2", "--wait", "0"]
    assert run.main([*argv, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
    [(module, args)] = calls
    assert module == "bench.grpo" and args[0] == "compare"
    assert args[args.index("--ranks") + 1] == "1,2" and args[args.index("--steps") + 1] == "2"
