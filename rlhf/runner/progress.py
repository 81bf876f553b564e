"""Live progress of the stages: one compact line each, from their metrics.jsonl and log.

On a terminal the lines are redrawn in place every few seconds; otherwise (a pipe, CI) a stage's
line is printed when its state changes and at most every ``plain_every`` seconds while it runs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rlhf.api.graph import STAGE_NAMES

#: The step counter of the trainer's progress bar in a log ("sft:  13%|#3   | 40/300 [00:10<...").
#: Only the stage's own bar (its description is the stage name), not e.g. "Writing model shards: 1/1 [".
_BAR = re.compile(rf"(?:{'|'.join(STAGE_NAMES)}): *\d+%\|[^|\r\n]*\| *(\d+)/(\d+) \[")
#: Train metrics worth a place on the line, in order of preference.
TRAIN_KEYS = ("loss", "reward_mean", "actor_loss", "accuracy")
SKIP_KEYS = {"step", "split", "lr", "epoch", "tokens_per_second"}


@dataclass
class Progress:
    """What a stage has shown so far: its step, total steps, last train and eval metrics."""

    step: int | None = None
    total: int | None = None
    train: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)


def _tail_text(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_progress(stage_dir: Path, log_path: Path) -> Progress:
    """The latest progress of the stage writing to ``stage_dir`` (and logging to ``log_path``)."""
    progress = Progress()
    for line in _tail_text(stage_dir / "metrics.jsonl", 65536).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the first, cut line of the tail, or a line being written
        if not isinstance(row, dict):
            continue
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in SKIP_KEYS}
        if row.get("split") == "eval":
            progress.eval = numbers
        else:
            progress.train = numbers
        if isinstance(row.get("step"), int):
            progress.step = max(progress.step or 0, row["step"])
    bars = _BAR.findall(_tail_text(log_path, 8192))
    if bars:
        done, total = map(int, bars[-1])
        progress.total = total
        progress.step = max(progress.step or 0, done)
    return progress


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(value: float) -> str:
    return f"{value:.4g}"


def stage_line(
    stage: str, state: str, progress: Progress | None = None, elapsed: float | None = None, note: str = ""
) -> str:
    """``sft     running  step 40/300  loss 1.234  eval/perplexity 3.2  1m05s``."""
    parts = [f"{stage:<7}", f"{state:<8}"]
    if progress is not None:
        if progress.step is not None:
            parts.append(f"step {progress.step}" + (f"/{progress.total}" if progress.total else ""))
        key = next((k for k in TRAIN_KEYS if k in progress.train), next(iter(progress.train), None))
        if key is not None:
            parts.append(f"{key} {_num(progress.train[key])}")
        for k, v in list(progress.eval.items())[:2]:
            parts.append(f"eval/{k} {_num(v)}")
    if elapsed is not None:
        parts.append(duration(elapsed))
    if note:
        parts.append(note)
    return "  ".join(parts).rstrip()


class Display:
    """Messages that stay, and a live block of per-stage lines below them."""

    def __init__(self, out: TextIO, *, tty: bool | None = None, plain_every: float = 30.0):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.plain_every = plain_every
        self._drawn = 0  # live lines on screen (tty)
        self._printed: dict[str, tuple[str, float]] = {}  # stage -> (state, when) of its last plain line

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, clear below
            self._drawn = 0

    def message(self, text: str) -> None:
        """A line that stays (above the live block on a terminal)."""
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def update(self, lines: dict[str, tuple[str, str]]) -> None:
        """Show ``stage -> (state, line)``: redrawn on a terminal; else printed on a state change, and
        every ``plain_every`` seconds while running."""
        if self.tty:
            self._clear()
            for _, line in lines.values():
                self.out.write(line + "\n")
            self._drawn = len(lines)
            self.out.flush()
            return
        now = time.monotonic()
        for stage, (state, line) in lines.items():
            last = self._printed.get(stage)
            if last is None or last[0] != state or (state == "running" and now - last[1] >= self.plain_every):
                self.out.write(line + "\n")
                self._printed[stage] = (state, now)
        self.out.flush()

    def close(self) -> None:
        """Leave the last live block on screen and continue below it."""
        self._drawn = 0
