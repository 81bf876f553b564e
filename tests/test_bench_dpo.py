"""bench.dpo's arithmetic: steady-state pairs/s from the ranks' step clocks, and the one-epoch ratio."""

from __future__ import annotations

import json

import pytest

from bench import dpo


def _rank(rank: int, starts: list[float], tokens: int = 100) -> dict:
    return {
        "rank": rank,
        "world_size": 2,
        "step_starts": starts,
        "cpu_starts": [s / 2 for s in starts],
        "real_tokens": [tokens] * len(starts),
        "pairs": [8] * len(starts),
        "reference_seconds": 1.5 + rank,
        "before_mib": 500.0,
        "peak_mib": 900.0 + rank,
    }


def test_summarize_counts_the_steps_after_warmup_on_rank_0s_clock():
    # rank 0's steps start at 0, 10 (warm-up), 11, 12, 13: three steps of 1 s are timed after one warm-up
    ranks = [_rank(0, [0.0, 10.0, 11.0, 12.0, 13.0]), _rank(1, [0.0, 10.2, 11.1, 12.3, 13.0], tokens=50)]
    s = dpo.summarize(ranks, warmup=1)
    assert s["steps"] == 3 and s["seconds"] == pytest.approx(3.0)
    assert s["pairs_per_second"] == pytest.approx(3 * 8 * 2 / 3.0)  # both ranks' pairs
    assert s["real_tokens_per_pair"] == pytest.approx((3 * 100 + 3 * 50) / 48)
    assert s["reference_seconds"] == 2.5 and s["peak_mib"] == 901.0 and s["world_size"] == 2
    # every rank's CPU seconds over the same steps, its own marks: (13 - 10) / 2 + (13 - 10.2) / 2
    assert s["cpu_seconds"] == pytest.approx(2.9) and s["pairs_per_cpu_second"] == pytest.approx(48 / 2.9)
    with pytest.raises(ValueError, match="need more than warmup"):
        dpo.summarize([_rank(0, [0.0, 1.0])], warmup=1)


def test_the_pairs_subset_is_the_same_for_both_trainers(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [json.dumps({"prompt": str(i)}) + "\n" for i in range(50)]
    (tmp_path / "data" / "pairs.jsonl").write_text("".join(lines))
    a = dpo.subset(tmp_path, 10, tmp_path / "a.jsonl").read_text()
    b = dpo.subset(tmp_path, 10, tmp_path / "b.jsonl").read_text()
    assert a == b and len(a.splitlines()) == 10 and a != "".join(lines[:10])  # shuffled, seeded


def test_the_table_shows_each_layout_and_reference():
    row = {"pairs_per_second": 30.0, "peak_mib": 900.0, "real_tokens_per_pair": 138.0}
    layout = {
        "ours_live": row,
        "trl_live": {**row, "pairs_per_second": 20.0},
        "ratio_live": 1.5,
        "cpu_ratio_live": 1.25,
        "epoch_ratio_live": 1.5,
    }
    result = {"layouts": {"1": layout}}
    text = dpo.table(result)
    assert "| 1 | live | 30.0 | 20.0 | 1.50x | 1.25x | 1.50x | 900 / 900 | 138.0 / 138.0 |" in text
    assert "cached" not in text.splitlines()[-1]
