"""What a stage tells about its data: the warnings it prints and the ``data`` block of ``summary.json``.

Skipped bad records (``data.on_bad_record: skip``), samples dropped by tokenization and an empty
eval split are easy to miss in a log; they are printed as warnings at the start and kept in the
summary (``data.skipped_bad_records``, ``data.dropped``, ``warnings``), where ``rlhf run`` and the
operator read them. No torch here.
"""

from __future__ import annotations

from typing import Any


def skipped_total(stats: dict[str, Any]) -> int:
    return sum(int(n) for n in (stats.get("skipped_bad_records") or {}).values())


def data_warnings(name: str, stats: dict[str, Any], *, eval_expected: bool = True) -> list[str]:
    """Warnings about one dataset a stage reads (``name``: e.g. "train", "prompts", "ptx")."""
    lines = []
    skipped = stats.get("skipped_bad_records") or {}
    if skipped:
        where = ", ".join(f"{k}: {v}" for k, v in skipped.items())
        lines.append(
            f"data ({name}): skipped {skipped_total(stats)} bad records (data.on_bad_record: skip) — {where}"
        )
    for split, counts in (stats.get("dropped") or {}).items():
        if counts and sum(counts.values()):
            detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            lines.append(f"data ({name}): dropped {sum(counts.values())} {split} samples ({detail})")
    if eval_expected and not stats.get("eval_samples"):
        lines.append(
            f"data ({name}): the eval split is empty, so this stage reports no eval metrics "
            "(set data.eval_fraction above 0, or give datasets with an eval split)"
        )
    return lines


def summary_data(stats: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` block of ``summary.json``: the stats' plain values plus the skipped and dropped counts."""
    out: dict[str, Any] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}
    out["skipped_bad_records"] = skipped_total(stats)
    out["skipped_bad_records_by_source"] = dict(stats.get("skipped_bad_records") or {})
    out["dropped"] = {split: dict(counts) for split, counts in (stats.get("dropped") or {}).items()}
    return out
