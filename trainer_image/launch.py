"""``rlhf-entrypoint launch``: the MPIJob launcher. Run mpirun, stream its output, report the outcome.

The launcher waits until every host of the hostfile resolves (worker pods get their DNS names
a moment after they start), forwards the RLHF_* variables and the master address to every rank
(``mpirun -x``: workers do not have the hostfile, and ranks started over ssh do not inherit the
launcher's environment), runs the command, and exits with its exit status. Then it writes the
termination message (:mod:`rlhf_entrypoint.termination`) that the operator reads.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from rlhf_entrypoint import termination
from rlhf_entrypoint.env import EnvError, hostfile_path, read_hosts

#: Log lines kept for the failure message.
TAIL_LINES = 40
#: Launcher programs whose command line gets ``-x VAR=VALUE`` options.
MPIRUN_NAMES = ("mpirun", "mpiexec", "orterun", "prterun")
#: Variables every rank needs from the launcher (when set there).
FORWARDED_PREFIXES = ("RLHF_",)


class LaunchError(Exception):
    """The launcher cannot start: bad config or unresolvable hosts."""


def output_dir(config: str | Path, cmd: Sequence[str]) -> Path:
    """``checkpoint.output_dir`` of the stage config, as overridden on the command line if it is.

    Reads the YAML without validating the stage config (the ranks do that), so the launcher
    needs neither torch nor the stage name.
    """
    from rlhf.config import ConfigError
    from rlhf.config.base import read_yaml

    try:
        data = read_yaml(config)
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    value = (
        (data.get("checkpoint") or {}).get("output_dir") if isinstance(data.get("checkpoint"), dict) else None
    )
    for arg in cmd:
        if arg.startswith("checkpoint.output_dir="):
            value = arg.partition("=")[2]
    if not value:
        raise LaunchError(
            f"{config}: checkpoint.output_dir is not set; the launcher reads summary.json from it"
        )
    return Path(str(value))


def forward_env(cmd: Sequence[str], environ: Mapping[str, str], extra: Mapping[str, str]) -> list[str]:
    """``cmd`` with ``-x NAME=VALUE`` for ``extra`` and every RLHF_* variable, when it runs mpirun.

    Variables the command already exports (``-x NAME`` or ``-x NAME=...``) are left alone.
    """
    if not cmd or Path(cmd[0]).name not in MPIRUN_NAMES:
        return list(cmd)
    exported = {cmd[i + 1].partition("=")[0] for i in range(len(cmd) - 1) if cmd[i] == "-x"}
    wanted = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}
    wanted.update(extra)
    options: list[str] = []
    for name in sorted(wanted):
        if name not in exported:
            options += ["-x", f"{name}={wanted[name]}"]
    return [cmd[0], *options, *cmd[1:]]


def wait_for_hosts(
    hosts: Sequence[str],
    timeout: float,
    resolve: Callable[[str], Any] = socket.gethostbyname,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Block until every host resolves; LaunchError naming the missing ones after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(hosts))
    delay = 0.5
    while True:
        still = []
        for host in pending:
            try:
                resolve(host)
            except OSError:
                still.append(host)
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise LaunchError(f"hosts did not resolve within {timeout:g}s: {', '.join(pending)}")
        sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _stream(proc: subprocess.Popen, out: BinaryIO, tail: collections.deque) -> None:
    """Copy the child's output to ``out`` line by line, keeping the last lines."""
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        out.write(raw)
        out.flush()
        tail.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def run(cmd: Sequence[str], tail: collections.deque, out: BinaryIO | None = None) -> int:
    """Run ``cmd`` with stdout+stderr streamed to ``out``; SIGTERM/SIGINT are passed on to it.

    Returns its exit status, or 128+N when it was killed by signal N (as a shell reports it).
    """
    out = out if out is not None else sys.stdout.buffer
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        tail.append(f"cannot start {cmd[0]}: {e}")
        return 127 if isinstance(e, FileNotFoundError) else 126
    forwarded = {}

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        forwarded[signum] = signal.signal(signum, forward)
    try:
        _stream(proc, out, tail)
        code = proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def _reason(cmd: Sequence[str], code: int, tail: Sequence[str]) -> str:
    if code > 128 and code - 128 in signal.valid_signals():
        what = f"{Path(cmd[0]).name} was killed by {signal.Signals(code - 128).name}"
    else:
        what = f"{Path(cmd[0]).name} exited with code {code}"
    error = termination.error_line(tail)
    return f"{what}: {error}" if error else what


def read_summary(out_dir: Path, wait: float, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The stage summary, retried for up to ``wait`` seconds: rank 0 wrote it on another node,
    and a shared filesystem (NFS) may show the new file to this pod a moment later."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return termination.read_summary(out_dir)
        except ValueError:
            if time.monotonic() >= deadline:
                raise
            sleep(0.5)


def launch(
    config: str | Path,
    cmd: Sequence[str],
    termination_log: str | Path,
    *,
    hostfile: str | Path | None = None,
    wait_hosts: float = 300.0,
    wait_summary: float = 5.0,
    environ: Mapping[str, str] | None = None,
    out: BinaryIO | None = None,
) -> int:
    """Run the launcher command for the stage config ``config``; return the exit status to use.

    Success (exit 0 and a readable summary.json): the compacted summary is the termination
    message. Anything else: a failure message with the reason and the last log lines; a command
    that exited 0 without writing its summary counts as failed (exit status 1).
    """
    environ = dict(os.environ if environ is None else environ)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    if not cmd:
        raise LaunchError("no command to run: give it after `--`")
    try:
        out_dir = output_dir(config, cmd)
        hosts = read_hosts(hostfile if hostfile is not None else hostfile_path(environ))
        extra = {}
        if hosts and not environ.get("RLHF_MASTER_ADDR"):
            extra["RLHF_MASTER_ADDR"] = hosts[0]
        if hosts and wait_hosts > 0:
            wait_for_hosts(hosts, wait_hosts)
    except (LaunchError, EnvError) as e:
        termination.write(termination_log, termination.failure_message(str(e), 2, []))
        print(f"rlhf-entrypoint: {e}", file=sys.stderr)
        return 2
    full_cmd = forward_env(cmd, environ, extra)
    print(f"rlhf-entrypoint: running {shlex.join(full_cmd)}", file=sys.stderr, flush=True)
    code = run(full_cmd, tail, out)
    if code == 0:
        try:
            message = termination.compact_summary(read_summary(out_dir, wait_summary))
        except ValueError as e:
            termination.write(termination_log, termination.failure_message(str(e), 0, list(tail)))
            print(f"rlhf-entrypoint: {e}", file=sys.stderr)
            return 1
        termination.write(termination_log, message)
        return 0
    termination.write(
        termination_log, termination.failure_message(_reason(full_cmd, code, list(tail)), code, list(tail))
    )
    return code
