"""Periodic checkpoints and automatic resume, on top of DeepSpeed's engine checkpoints.

A checkpoint ``<dir>/step-N`` holds the engine (model, optimizer, lr scheduler; every rank's ZeRO
partition), our loop position as DeepSpeed client state, every rank's RNG states, and the run's
settings (:mod:`rlhf.stages.run_settings`). Once every rank has written its part, rank 0 marks it
complete (``step-N/complete``, written atomically). Resume takes the newest complete step — never
trusting DeepSpeed's ``latest`` file alone, which a kill can leave empty or torn (it is read only
for checkpoints written before the marker existed). A step being written again is unmarked first,
and old checkpoints are pruned only after the new one is complete; a trainer with several engines
(PPO's actor and critic) prunes them together, keeping the newest steps complete in all of them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TAG = re.compile(r"^step-(\d+)$")
COMPLETE = "complete"


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


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _steps(ckpt_dir: Path) -> list[int]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _TAG.match(p.name)) and p.is_dir())


def _legacy_latest(ckpt_dir: Path) -> int | None:
    """The step DeepSpeed's ``latest`` names, if it is readable and names an existing step (a
    checkpoint from before completion markers; DeepSpeed writes ``latest`` after its files)."""
    try:
        tag = (ckpt_dir / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    match = _TAG.match(tag)
    return int(match.group(1)) if match and (ckpt_dir / tag).is_dir() else None


def complete_steps(ckpt_dir: Path) -> list[int]:
    """The steps with a complete checkpoint in ``ckpt_dir``, oldest first."""
    steps = _steps(ckpt_dir)
    done = [s for s in steps if (ckpt_dir / f"step-{s}" / COMPLETE).is_file()]
    if done:
        return done
    legacy = _legacy_latest(ckpt_dir)  # only checkpoints from before the markers: trust a readable latest
    if legacy is None:
        return []
    return [s for s in steps if s <= legacy and not (ckpt_dir / f"step-{s}" / f"{COMPLETE}.pending").exists()]


def newest_common_step(ckpt_dirs: Sequence[Path]) -> int | None:
    """The newest step complete in every one of ``ckpt_dirs`` (None if there is none)."""
    common = set(complete_steps(ckpt_dirs[0]))
    for d in ckpt_dirs[1:]:
        common &= set(complete_steps(d))
    return max(common) if common else None


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag of the newest complete checkpoint in ``ckpt_dir``."""
    step = newest_common_step([ckpt_dir])
    return None if step is None else f"step-{step}"


def save(
    engine,
    ckpt_dir: Path,
    step: int,
    client_state: dict[str, Any],
    rank: int,
    keep_last: int | None,
    files: dict[str, Any] | None = None,
) -> str:
    """Save checkpoint ``step-N`` (collective) and mark it complete; then, unless ``keep_last`` is None
    (the caller prunes, see :func:`prune`), prune older ones on rank 0. ``files``: JSON documents
    rank 0 writes into the checkpoint before it is marked."""
    tag = f"step-{step}"
    step_dir = ckpt_dir / tag
    if rank == 0 and step_dir.exists():  # written again (a resumed run): unmarked while it is rewritten
        shutil.rmtree(step_dir)
    _barrier()
    step_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), step_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        (step_dir / f"{COMPLETE}.pending").touch()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)
    _barrier()
    if rank == 0:
        for name, content in (files or {}).items():
            _write_atomic(step_dir / name, json.dumps(content, indent=2) + "\n")
        _write_atomic(step_dir / COMPLETE, json.dumps({"step": step}) + "\n")
        (step_dir / f"{COMPLETE}.pending").unlink(missing_ok=True)
        if keep_last is not None:
            prune([ckpt_dir], keep_last)
    _barrier()
    return tag


def prune(ckpt_dirs: Sequence[Path], keep_last: int) -> None:
    """Keep, in every one of ``ckpt_dirs``, the ``keep_last`` newest steps complete in all of them and
    anything newer (a step still being written); delete the older ones. Rank 0 only."""
    common = set(complete_steps(ckpt_dirs[0]))
    for d in ckpt_dirs[1:]:
        common &= set(complete_steps(d))
    keep = sorted(common)[-keep_last:]
    if not keep:
        return
    for d in ckpt_dirs:
        for old in _steps(d):
            if old < keep[-1] and old not in keep:
                shutil.rmtree(d / f"step-{old}", ignore_errors=True)


def tag_step(tag: str) -> int:
    """The step of a ``step-N`` tag."""
    match = _TAG.match(tag)
    if match is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def load(engine, ckpt_dir: Path, rank: int, tag: str | None = None) -> dict[str, Any] | None:
    """Load checkpoint ``tag`` (default the newest complete one) into ``engine``; returns its client
    state, or None if there is none."""
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
