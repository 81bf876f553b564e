"""Metrics on the main rank: a JSON-lines file, optional TensorBoard, and a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class Tracker:
    """Writes metrics rows ``{"step", "split", ...}``; a no-op on non-main ranks."""

    def __init__(
        self,
        output_dir: Path,
        *,
        enabled: bool,
        tensorboard_dir: Path | None,
        progress: bool,
        total_steps: int,
        start_step: int,
        desc: str,
    ):
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm.auto import tqdm

            # In a pod's log (no terminal) a bar redrawn every 0.1 s is noise: update every 30 s there.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=desc,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=interval,
            )

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows newer than the checkpoint (they will be written again)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step, "split": split}
        row.update(
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        )
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, float)}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
