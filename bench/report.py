"""The comparison table: our figures against same-run baselines (transformers.generate, a plain
PyTorch loop, TRL's RLOO, DPO and GRPO trainers, the memory arithmetic) and the targets.

Every reference in the table is measured in the same ``python -m bench`` run on the same machine.
DeepSpeed-Chat cannot be installed from a registry; its figures (issue 15's table, measured side by
side on a 2-core AMX machine with a 2.7 TFLOP/s bf16 peak) are not comparable with another
machine's and are not in the table: the issue's table is the citation.
"""

from __future__ import annotations

from typing import Any

TARGETS = {
    "generation_speedup": 3.0,  # our rollout's decode loop vs transformers.generate, same batches
    "step_ratio": 1.2,  # our training step vs a plain PyTorch loop, same model and batch (at most)
    "sft50m_fraction_of_peak": 0.60,
    "operator_p99_seconds_at_1000": 1.0,
    "operator_rss_mib": 200.0,
    "gpu_sft1b_mfu": 0.45,
    "dpo_vs_trl": 1.5,  # our DPO pairs/s vs TRL's DPOTrainer, same model, data, settings, layout (at least)
    "grpo_vs_trl": 2.0,  # our GRPO samples/s vs TRL's GRPOTrainer, same model, prompts, settings, layout
}


def _row(
    metric: str,
    ranks: Any,
    measured: float | None,
    unit: str,
    reference: float | None = None,
    target: float | None = None,
    higher_is_better: bool = True,
    note: str = "",
) -> dict[str, Any]:
    status = ""
    if measured is not None and target is not None:
        met = measured >= target if higher_is_better else measured < target
        status = "met" if met else "MISSED"
    ratio = measured / reference if measured is not None and reference else None
    return {
        "metric": metric,
        "ranks": ranks,
        "measured": measured,
        "unit": unit,
        "reference": reference,
        "target": target,
        "ratio": ratio,
        "status": status,
        "note": note,
    }


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison rows of a ``python -m bench`` result."""
    out: list[dict[str, Any]] = []
    trainer = result.get("trainer") or {}
    peaks = result.get("peak") or {}
    for ranks_key, entry in sorted((trainer.get("sft") or {}).items()):
        ranks = int(ranks_key)
        peak = peaks.get(ranks_key, {}).get("bf16")
        out.append(_row("SFT real tokens/s", ranks, entry["real_tokens_per_second"], "tok/s"))
        out.append(
            _row(
                "SFT padded tokens/s",
                ranks,
                entry["padded_tokens_per_second"],
                "tok/s",
                note=f"real share {entry['real_share']:.0%}",
            )
        )
        if peak:
            out.append(
                _row(
                    "SFT FLOP/s / bf16 peak",
                    ranks,
                    entry["flops_per_second"] / 1e9 / peak,
                    "frac",
                    note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s of {peak:.0f}",
                )
            )
    for ranks_key, entry in sorted((trainer.get("reward") or {}).items()):
        ranks = int(ranks_key)
        out.append(_row("RM pairs/s", ranks, entry["samples_per_second"], "pairs/s"))
    for ranks_key, entry in sorted((trainer.get("ppo") or {}).items()):
        ranks = int(ranks_key)
        peak = peaks.get(ranks_key, {}).get("bf16")
        trl = (result.get("trl") or {}).get(ranks_key)
        out.append(
            _row(
                "PPO samples/s (end to end)",
                ranks,
                entry["samples_per_second"],
                "samples/s",
                trl["samples_per_second"] if trl else None,
                note="reference: TRL RLOO, same run" if trl else "",
            )
        )
        if entry.get("samples_per_cpu_second") and trl and trl.get("samples_per_cpu_second"):
            out.append(
                _row(
                    "PPO samples per CPU-second",
                    ranks,
                    entry["samples_per_cpu_second"],
                    "samples/s",
                    trl["samples_per_cpu_second"],
                    note="reference: TRL RLOO, same run, CPU time",
                )
            )
        out.append(
            _row(
                "PPO generation tokens/s",
                ranks,
                entry["generate_tokens_per_second"],
                "tok/s",
                note=f"{entry['generate_seconds_per_iteration']:.2f} s/iter, "
                f"{entry['answer_tokens_mean']:.0f} answer tokens, EOS in {entry['ended_share']:.0%}",
            )
        )
        out.append(
            _row(
                "PPO scoring+experience s/iter",
                ranks,
                entry["experience_seconds_per_iteration"],
                "s",
                note="reward score, the experience forwards that ran, GAE",
            )
        )
        out.append(
            _row(
                "PPO training s/iter",
                ranks,
                entry["train_seconds_per_iteration"],
                "s",
                note="actor + critic, 1 PPO epoch",
            )
        )
        if peak:
            out.append(
                _row(
                    "PPO FLOP/s / bf16 peak",
                    ranks,
                    entry["flops_per_second"] / 1e9 / peak,
                    "frac",
                    note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s",
                )
            )
            out.append(
                _row(
                    "PPO generation FLOP/s / peak",
                    ranks,
                    entry["generate_flops_per_second"] / 1e9 / peak,
                    "frac",
                )
            )
    for name, entry in sorted((trainer.get("sft_big") or {}).items()):
        peak = peaks.get("1", {}).get("bf16")
        if peak:
            key = "gpu_sft1b_mfu" if entry.get("accelerator") == "cuda" else "sft50m_fraction_of_peak"
            out.append(
                _row(
                    f"SFT {name} ({entry['params'] / 1e6:.0f}M) FLOP/s / bf16 peak",
                    1,
                    entry["flops_per_second"] / 1e9 / peak,
                    "frac",
                    target=TARGETS[key],
                    note=f"{entry['flops_per_second'] / 1e9:.1f} GFLOP/s, "
                    f"{entry['padded_tokens_per_second']:.0f} padded tok/s",
                )
            )
    out += same_process_rows(result)
    operator = result.get("operator") or {}
    for level, entry in sorted((operator.get("levels") or {}).items(), key=lambda kv: int(kv[0])):
        for key, label in (
            ("create_to_mpijobs", "create -> MPIJobs"),
            ("create_to_prepare", "create -> prepare Job"),
            ("condition_to_status", "MPIJob condition -> status"),
        ):
            p = entry[key]
            target = (
                TARGETS["operator_p99_seconds_at_1000"]
                if level == "1000" and key == "create_to_mpijobs"
                else None
            )
            out.append(
                _row(
                    f"operator {label} p99",
                    f"{level} runs",
                    p["p99"],
                    "s",
                    target=target,
                    higher_is_better=False,
                    note=f"p50 {p['p50'] * 1000:.0f} ms, n={p['n']}",
                )
            )
    if operator.get("rss_mib_peak") is not None:
        out.append(
            _row(
                "operator RSS (peak)",
                "-",
                operator["rss_mib_peak"],
                "MiB",
                target=TARGETS["operator_rss_mib"],
                higher_is_better=False,
                note=f"idle {operator['rss_mib_idle']:.0f} MiB",
            )
        )
    return out


def same_process_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the same-process comparisons: decoders, training steps, TRL, memory."""
    out: list[dict[str, Any]] = []
    gen = result.get("generation")
    if gen:
        base = gen["decoders"].get("transformers")
        for name, d in gen["decoders"].items():
            if name == "transformers":
                out.append(
                    _row(
                        "generation tok/s, transformers.generate",
                        1,
                        d["tokens_per_second"],
                        "tok/s",
                        note=f"{d['ms_per_step']:.1f} ms/token, {d['fraction_of_peak']:.1%} of peak",
                    )
                )
                continue
            out.append(
                _row(
                    f"generation speed-up, {name} loop / generate",
                    1,
                    d["ratio_to_transformers"],
                    "x",
                    target=TARGETS["generation_speedup"] if name == "compiled" else None,
                    note=f"{d['tokens_per_second']:.0f} vs {base['tokens_per_second']:.0f} tok/s, range "
                    f"{d['ratio_min']:.2f}-{d['ratio_max']:.2f}, {d['fraction_of_peak']:.1%} of peak, "
                    f"same greedy answers {d['same_answers']:.0%}",
                )
            )
    for kind in ("sft", "ppo"):
        st = (result.get("step") or {}).get(kind)
        if st:
            label = "SFT step" if kind == "sft" else "PPO step (actor + critic)"
            out.append(
                _row(
                    f"{label} time / plain PyTorch",
                    1,
                    st["ratio_ours_to_plain"],
                    "x",
                    target=TARGETS["step_ratio"],
                    higher_is_better=False,
                    note=f"{st['seconds_per_step']['ours'] * 1000:.0f} vs "
                    f"{st['seconds_per_step']['plain'] * 1000:.0f} ms, range {st['ratio_min']:.2f}-"
                    f"{st['ratio_max']:.2f}, {st['fraction_of_peak']['ours']:.1%} vs "
                    f"{st['fraction_of_peak']['plain']:.1%} of peak",
                )
            )
    for ranks_key, t in sorted((result.get("trl") or {}).items()):
        out.append(
            _row(
                "TRL RLOO samples/s (peer)",
                int(ranks_key),
                t["samples_per_second"],
                "samples/s",
                note=f"trl {t['trl']}, {t['completion_mean_length']:.0f}-token answers",
            )
        )
    out += peer_rows(result)
    for m in result.get("memory") or []:
        e = m["expected_mib"]
        out.append(
            _row(
                f"PPO peak memory of the models, {m['variant']}",
                1,
                m["mib"]["models_peak"],
                "MiB",
                e["total"] + e["optimizer_step_transient"],
                higher_is_better=False,
                note=f"reference: arithmetic; actor {e['actor']:.0f}, reference {e['reference']:.0f}, "
                f"critic {e['critic']:.0f}, reward {e['reward']:.0f}, EMA {e['ema']:.0f} MiB",
            )
        )
    return out


def peer_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Our DPO and GRPO stages against TRL's trainers (``bench.dpo``, ``bench.grpo``): the reference is TRL's
    figure in the same run, the target a multiple of it; per wall-clock second and per CPU-second."""
    out: list[dict[str, Any]] = []
    for ranks_key, layout in sorted(((result.get("dpo") or {}).get("layouts") or {}).items()):
        for ref in ("live", "cached"):
            a, b = layout.get(f"ours_{ref}"), layout.get(f"trl_{ref}")
            if not (a and b):
                continue
            note = f"TRL DPOTrainer, {ref} reference, same run"
            for key, unit, label in (
                ("pairs_per_second", "pairs/s", ""),
                ("pairs_per_cpu_second", "pairs/CPU-s", " per CPU-second"),
            ):
                if a.get(key) and b.get(key):
                    out.append(
                        _row(
                            f"DPO pairs{label or '/s'} ({ref} reference)",
                            int(ranks_key),
                            a[key],
                            unit,
                            b[key],
                            TARGETS["dpo_vs_trl"] * b[key],
                            note=note,
                        )
                    )
    for ranks_key, entry in sorted((result.get("grpo") or {}).items()):
        if not isinstance(entry, dict) or "ours" not in entry:
            continue  # the settings
        a, b = entry["ours"], entry["trl"]
        note = (
            f"TRL GRPOTrainer, same run; answers {a['answer_tokens_mean'] or 0:.0f} / "
            f"{b['answer_tokens_mean'] or 0:.0f} tokens (ours / TRL)"
        )
        for key, unit, label in (
            ("samples_per_second", "samples/s", "GRPO samples/s"),
            ("samples_per_cpu_second", "samples/CPU-s", "GRPO samples per CPU-second"),
        ):
            if a.get(key) and b.get(key):
                out.append(
                    _row(
                        label,
                        int(ranks_key),
                        a[key],
                        unit,
                        b[key],
                        TARGETS["grpo_vs_trl"] * b[key],
                        note=note,
                    )
                )
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
    cells = [
        [_fmt(r[h]) if h != "ratio" or r[h] is None else f"{r[h]:.2f}x" for h in head] for r in table_rows
    ]
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
