"""The comparison table: our figures against DeepSpeed-Chat's and TRL's (issue 7), and the targets.

Reference figures (issue 7: DeepSpeed-Chat run on CPU on a machine like ours, same tiny models and
data; TRL's RLOO trainer on the same setup). Where the issue gives a range without saying which
end is which rank count, the low end is taken for 1 rank and the high end for 2 ranks.
"""

from __future__ import annotations

from typing import Any

REFERENCE: dict[str, dict[int, float]] = {
    "ppo_samples_per_second": {1: 9.8, 2: 12.6},
    "trl_rloo_samples_per_second": {1: 11.7, 2: 12.8},
    "ppo_fraction_of_peak": {1: 0.23, 2: 0.29},
    "ppo_generate_fraction_of_peak": {1: 0.08, 2: 0.11},
    "sft_padded_tokens_per_second": {1: 4900, 2: 5700},
    "sft_real_tokens_per_second": {1: 2650, 2: 3100},
    "sft_fraction_of_peak": {1: 0.39, 2: 0.46},
    "reward_pairs_per_second": {1: 58, 2: 63},
}
REFERENCE_PEAK_BF16 = 840.0  # GFLOP/s on 2 threads, as the issue measured it

TARGETS = {
    "ppo_samples_per_second": 2.0,  # x DeepSpeed-Chat
    "sft_real_tokens_per_second": 2.0,
    "sft50m_fraction_of_peak": 0.60,
    "operator_p99_seconds_at_1000": 1.0,
    "operator_rss_mib": 200.0,
    "gpu_sft1b_mfu": 0.45,
}


def _row(metric: str, ranks: Any, measured: float | None, unit: str, reference: float | None = None,
         target: float | None = None, higher_is_better: bool = True, note: str = "") -> dict[str, Any]:
    status = ""
    if measured is not None and target is not None:
        met = measured >= target if higher_is_better else measured < target
        status = "met" if met else "MISSED"
    ratio = measured / reference if measured is not None and reference else None
    return {"metric": metric, "ranks": ranks, "measured": measured, "unit": unit, "reference": reference,
            "target": target, "ratio": ratio, "status": status, "note": note}


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison rows of a ``python -m bench`` result."""
    out: list[dict[str, Any]] = []
    trainer = result.get("trainer") or {}
    peaks = result.get("peak") or {}
    for ranks_key, entry in sorted((trainer.get("sft") or {}).items()):
        ranks = int(ranks_key)
        ref = REFERENCE["sft_real_tokens_per_second"].get(ranks)
        peak = peaks.get(ranks_key, {}).get("bf16")
        out.append(_row("SFT real tokens/s", ranks, entry["real_tokens_per_second"], "tok/s", ref,
                        ref * TARGETS["sft_real_tokens_per_second"] if ref else None))
        out.append(_row("SFT padded tokens/s", ranks, entry["padded_tokens_per_second"], "tok/s",
                        REFERENCE["sft_padded_tokens_per_second"].get(ranks),
                        note=f"real share {entry['real_share']:.0%} (DS-Chat pads to 128: 54%)"))
        if peak:
            out.append(_row("SFT FLOP/s / bf16 peak", ranks, entry["flops_per_second"] / 1e9 / peak, "frac",
                            REFERENCE["sft_fraction_of_peak"].get(ranks),
                            note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s of {peak:.0f}"))
    for ranks_key, entry in sorted((trainer.get("reward") or {}).items()):
        ranks = int(ranks_key)
        out.append(_row("RM pairs/s", ranks, entry["samples_per_second"], "pairs/s",
                        REFERENCE["reward_pairs_per_second"].get(ranks)))
    for ranks_key, entry in sorted((trainer.get("ppo") or {}).items()):
        ranks = int(ranks_key)
        ref = REFERENCE["ppo_samples_per_second"].get(ranks)
        peak = peaks.get(ranks_key, {}).get("bf16")
        out.append(_row("PPO samples/s (end to end)", ranks, entry["samples_per_second"], "samples/s", ref,
                        ref * TARGETS["ppo_samples_per_second"] if ref else None,
                        note=f"TRL RLOO: {REFERENCE['trl_rloo_samples_per_second'].get(ranks)}"))
        out.append(_row("PPO generation tokens/s", ranks, entry["generate_tokens_per_second"], "tok/s",
                        note=f"{entry['generate_seconds_per_iteration']:.2f} s/iter, "
                        f"{entry['answer_tokens_mean']:.0f} answer tokens, EOS in {entry['ended_share']:.0%}"))
        out.append(_row("PPO scoring+experience s/iter", ranks, entry["experience_seconds_per_iteration"], "s",
                        note="reward score, the experience forwards that ran, GAE"))
        out.append(_row("PPO training s/iter", ranks, entry["train_seconds_per_iteration"], "s",
                        note="actor + critic, 1 PPO epoch"))
        if peak:
            out.append(_row("PPO FLOP/s / bf16 peak", ranks, entry["flops_per_second"] / 1e9 / peak, "frac",
                            REFERENCE["ppo_fraction_of_peak"].get(ranks),
                            note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s"))
            out.append(_row("PPO generation FLOP/s / peak", ranks,
                            entry["generate_flops_per_second"] / 1e9 / peak, "frac",
                            REFERENCE["ppo_generate_fraction_of_peak"].get(ranks)))
    for name, entry in sorted((trainer.get("sft_big") or {}).items()):
        peak = peaks.get("1", {}).get("bf16")
        if peak:
            key = "gpu_sft1b_mfu" if entry.get("accelerator") == "cuda" else "sft50m_fraction_of_peak"
            out.append(_row(f"SFT {name} ({entry['params'] / 1e6:.0f}M) FLOP/s / bf16 peak", 1,
                            entry["flops_per_second"] / 1e9 / peak, "frac", target=TARGETS[key],
                            note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s, "
                            f"{entry['padded_tokens_per_second']:.0f} padded tok/s"))
    operator = result.get("operator") or {}
    for level, entry in sorted((operator.get("levels") or {}).items(), key=lambda kv: int(kv[0])):
        for key, label in (("create_to_mpijobs", "create -> MPIJobs"), ("create_to_prepare", "create -> prepare Job"),
                           ("condition_to_status", "MPIJob condition -> status")):
            p = entry[key]
            target = TARGETS["operator_p99_seconds_at_1000"] if level == "1000" and key == "create_to_mpijobs" else None
            out.append(_row(f"operator {label} p99", f"{level} runs", p["p99"], "s", target=target,
                            higher_is_better=False, note=f"p50 {p['p50'] * 1000:.0f} ms, n={p['n']}"))
    if operator.get("rss_mib_peak") is not None:
        out.append(_row("operator RSS (peak)", "-", operator["rss_mib_peak"], "MiB", target=TARGETS["operator_rss_mib"],
                        higher_is_better=False, note=f"idle {operator['rss_mib_idle']:.0f} MiB"))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def table(table_rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    head = ["metric", "ranks", "measured", "unit", "reference", "target", "ratio", "status", "note"]
    cells = [[_fmt(r[h]) if h != "ratio" or r[h] is None else f"{r[h]:.2f}x" for h in head] for r in table_rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    return "\n".join(lines)


def markdown(table_rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (for bench/README.md)."""
    head = ["metric", "ranks", "measured", "unit", "reference", "target", "ratio", "status", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in table_rows:
        cells = [_fmt(r[h]) if h != "ratio" or r[h] is None else f"{r[h]:.2f}x" for h in head]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report [RESULT.json] [--markdown]``: print a saved result's table."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("result", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    table_rows = rows(json.loads(Path(args.result).read_text()))
    print(markdown(table_rows) if args.markdown else table(table_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
