"""The parts of a stage's life every trainer shares (the SFT/RM loop and PPO): seeding, where to
resume from, and the summary a finished stage publishes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf.api.outcome import SUMMARY_FILE, StageSummary
from rlhf.config.stages import StageConfig
from rlhf.engine.setup import Runtime, barrier
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.data_report import summary_data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def completed_summary(
    stage: str,
    rt: Runtime,
    *,
    step: int,
    total_steps: int,
    resumed_from: int,
    metrics: dict[str, float],
    samples: int,
    seconds: float,
    rates: dict[str, float | None],
    model_dir: Path,
    data_stats: dict[str, Any],
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """A finished stage's ``summary.json`` (the operator and ``rlhf run`` read it): the same keys for
    every stage; ``samples`` are this rank's, ``rates`` the stage's throughput figures, ``warnings``
    what the stage warned about at its start (skipped records, an empty eval split, ...)."""
    return StageSummary(
        stage=stage,
        global_step=step,
        total_steps=total_steps,
        resumed_from_step=resumed_from,
        world_size=rt.dist.world_size,
        accelerator=rt.accel.name,
        metrics=metrics,
        train_samples=samples * rt.dist.world_size,
        train_seconds=round(seconds, 3),
        **rates,
        model_dir=str(model_dir),
        data=summary_data(data_stats),
        warnings=list(warnings or []),
    ).to_json()


def resume_point(
    cfg: StageConfig, ckpt_dirs: list[Path], settings: dict[str, Any]
) -> tuple[str | None, list[str]]:
    """(the checkpoint tag to resume from — the newest step complete in every one of ``ckpt_dirs`` —,
    the differences of its settings allowed by checkpoint.allow_changed_config); (None, []) for a
    fresh start. Raises ConfigError when the data or settings changed and that is not allowed."""
    if not cfg.checkpoint.resume:
        return None, []
    step = checkpoint.newest_common_step(ckpt_dirs)
    if step is None:
        return None, []
    tag = f"step-{step}"
    changed = run_settings.check_resume(ckpt_dirs[0] / tag, settings, cfg.checkpoint.allow_changed_config)
    return tag, changed


def publish_summary(out: Path, summary: dict[str, Any], rt: Runtime) -> None:
    """Rank 0 writes ``summary.json`` atomically; every rank waits for it."""
    if rt.is_main:
        write_json_atomic(out / SUMMARY_FILE, summary)
    barrier()
