"""Whether a stage already completed with a given config (no torch: ``rlhf run`` asks before starting it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.config import dump
from rlhf.config.stages import StageConfig


def finished_summary(cfg: StageConfig) -> dict[str, Any] | None:
    """The summary of this exact stage config if it already completed in its output_dir, else None."""
    out = Path(cfg.checkpoint.output_dir)
    summary_file, config_file = out / "summary.json", out / "config.yaml"
    if not (
        cfg.checkpoint.resume
        and summary_file.is_file()
        and config_file.is_file()
        and (out / "model").is_dir()
    ):
        return None
    if config_file.read_text() != dump(cfg):
        return None  # changed settings (e.g. more epochs): resume from the checkpoint and continue
    try:
        summary = json.loads(summary_file.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("status") == "completed" else None
