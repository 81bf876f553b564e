"""Stage processes: each in its own process group (a session), output to its log, stopped as a group.

Stopping escalates SIGINT (the trainer stops at once; checkpoints are written atomically, so the
latest complete one stays) -> SIGTERM -> SIGKILL, each after a grace period, until no process of
the group is left (torchrun's workers included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path


class StageProcess:
    """One command (a stage, or the prepare step) running in its own process group."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, log_path: Path
    ):
        self.name, self.argv, self.env, self.cwd, self.log_path = name, list(argv), dict(env), cwd, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = self.ended = 0.0
        self.returncode: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = datetime.now().astimezone().isoformat(timespec="seconds")
            log.write(f"===== rlhf run: {self.name} started {stamp}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started = time.monotonic()

    @property
    def pgid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid  # a new session: its leader's pid is the group id

    def poll(self) -> int | None:
        """The leader's exit status once it exited (negative: killed by that signal), else None."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        code = self.proc.poll()
        if code is not None:
            self.returncode, self.ended = code, time.monotonic()
        return code

    @property
    def elapsed(self) -> float:
        return ((self.ended or time.monotonic()) - self.started) if self.started else 0.0

    def alive(self) -> bool:
        """Whether any process of the group is still running."""
        self.poll()
        return self.proc is not None and bool(group_members(self.pgid))

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stop_all(
    procs: Sequence[StageProcess],
    grace: float,
    *,
    hurry: Callable[[], bool] = lambda: False,
    echo: Callable[[str], None] = lambda _: None,
) -> None:
    """Stop every group: SIGINT, then SIGTERM, then SIGKILL, each after ``grace`` seconds (or at once
    when ``hurry()`` turns true, e.g. on a second Ctrl-C); returns when no process is left."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        running = [p for p in procs if p.alive()]
        if not running:
            return
        if sig != signal.SIGINT:
            echo(f"{', '.join(p.name for p in running)}: still running, sending {signal.Signals(sig).name}")
        for p in running:
            p.signal(sig)
        deadline = time.monotonic() + (grace if sig != signal.SIGKILL else max(grace, 5.0))
        while time.monotonic() < deadline and any(p.alive() for p in running):
            if hurry() and sig != signal.SIGKILL:
                break
            time.sleep(0.05)
    for p in procs:
        if p.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=5)
            p.poll()


def exit_reason(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (Popen's negative codes; shells' 128+N too)."""
    if code < 0 or code > 128:
        num = -code if code < 0 else code - 128
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = f"signal {num}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"exit code {code}, killed by {name}{hint}" if code > 128 else f"killed by {name}{hint}"
    return f"exit code {code}"


def log_tail(path: Path, lines: int = 30, max_bytes: int = 65536) -> list[str]:
    """The last ``lines`` lines of a log (progress bars' carriage-return redraws collapsed)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in data.split("\n")]
    while out and not out[-1].strip():
        out.pop()
    return out[-lines:]
