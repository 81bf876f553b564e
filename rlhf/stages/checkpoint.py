"""Periodic checkpoints and automatic resume, on top of DeepSpeed's engine checkpoints.

A checkpoint holds the engine (model, optimizer, lr scheduler; every rank's ZeRO partition),
our loop position as DeepSpeed client state, and every rank's RNG states. ``latest`` is written
by DeepSpeed only once a checkpoint is complete, so a job killed while saving resumes from the
previous one; older checkpoints are deleted only after the new one is complete.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TAG = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_tag(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (ckpt_dir / tag).is_dir() else None


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], rank: int, keep_last: int) -> str:
    """Save a checkpoint tagged ``step-N`` (collective), then prune old ones on rank 0."""
    import torch.distributed as dist

    tag = f"step-{step}"
    (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt_dir / tag / f"rng_rank{rank}.pt")
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _TAG.match(p.name)))
        for old in steps[:-keep_last]:
            shutil.rmtree(ckpt_dir / f"step-{old}", ignore_errors=True)
    return tag


def tag_step(tag: str) -> int:
    """The step of a ``step-N`` tag."""
    match = _TAG.match(tag)
    if match is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def load(engine, ckpt_dir: Path, rank: int, tag: str | None = None) -> dict[str, Any] | None:
    """Load checkpoint ``tag`` (default the latest) into ``engine``; returns its client state, or None
    if there is none."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"checkpoint {ckpt_dir / tag} could not be loaded")
    rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state
