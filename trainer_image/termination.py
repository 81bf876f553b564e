"""The launcher container's termination message: what the operator copies into the RLHFRun status.

Kubernetes keeps at most 4096 bytes of ``/dev/termination-log`` per container, so every message
built here is compact JSON under :data:`MAX_BYTES`. On success it is the stage summary
(``summary.json``) with the fields the operator needs kept whole when anything must go; on
failure it is ``{"status": "failed", "reason": ..., "exit_code": ..., "log_tail": ...}``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhf.api.outcome import ESSENTIAL, SUMMARY_FILE, StageFailure, StageSummary, outcome_of

#: Kubernetes truncates a container's termination message at 4096 bytes; stay strictly below.
MAX_BYTES = 4095
#: Longest single log line kept in a failure message.
MAX_LINE = 300
#: Indented lines after an error line that are part of it.
DETAIL_LINES = 5

# A Python exception line ("ValueError: ...") or our CLI's "error: ..." line, possibly after an
# mpirun output tag such as "[1,0]<stderr>:".
_ERROR_LINE = re.compile(r"(?:^|[\s:>\]])((?:[A-Za-z_][\w.]*(?:Error|Exception)|error|ERROR)\b:?\s.*)$")


def encode(message: dict[str, Any]) -> bytes:
    """Compact JSON (no spaces), UTF-8, non-ASCII kept readable."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def fits(message: dict[str, Any], limit: int = MAX_BYTES) -> bool:
    return len(encode(message)) <= limit


def _truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (with an ellipsis when cut)."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes - 3)].decode("utf-8", errors="ignore") + "..."


def compact_summary(summary: dict[str, Any], limit: int = MAX_BYTES) -> dict[str, Any]:
    """The summary as a termination message under ``limit`` bytes.

    The whole summary when it fits. Otherwise non-essential fields are dropped, largest first;
    then metrics are dropped (largest name/value first, ``"truncated": true`` says so); as a last
    resort the remaining strings (e.g. a huge ``model_dir``) are shortened.
    """
    message = dict(summary)
    if fits(message, limit):
        return message
    message["truncated"] = True
    optional = sorted(
        (k for k in message if k not in ESSENTIAL and k != "truncated"),
        key=lambda k: len(encode({k: message[k]})),
        reverse=True,
    )
    for key in optional:
        del message[key]
        if fits(message, limit):
            return message
    metrics = message.get("metrics")
    if isinstance(metrics, dict):
        metrics = dict(metrics)
        message["metrics"] = metrics
        for key in sorted(metrics, key=lambda k: len(encode({k: metrics[k]})), reverse=True):
            del metrics[key]
            if fits(message, limit):
                return message
    elif "metrics" in message:
        del message["metrics"]
    for key in ("model_dir", "stage", "status"):
        if isinstance(message.get(key), str) and not fits(message, limit):
            overflow = len(encode(message)) - limit
            message[key] = _truncate(message[key], max(16, len(message[key].encode("utf-8")) - overflow - 8))
    if not fits(message, limit):  # a summary that is not a JSON object of sane fields
        message = {"status": str(summary.get("status", "unknown"))[:64], "truncated": True}
    return message


def error_line(lines: Iterable[str]) -> str | None:
    """The last error in the log (Python exception or ``error: ...`` line), if any.

    An error line ending in ``:`` is followed by its indented detail lines (our config errors
    list one problem per line); up to :data:`DETAIL_LINES` of them are appended.
    """
    lines = [line.rstrip() for line in lines]
    found = None
    for i, line in enumerate(lines):
        match = _ERROR_LINE.search(line)
        if not match:
            continue
        found = match.group(1).strip()
        if found.endswith(":"):
            details = []
            for follow in lines[i + 1 : i + 1 + DETAIL_LINES]:
                if not follow[:1].isspace():
                    break
                details.append(follow.strip())
            if details:
                found = f"{found} {'; '.join(details)}"
    return found


def failure_message(
    reason: str, exit_code: int | None, tail: list[str], limit: int = MAX_BYTES
) -> dict[str, Any]:
    """``{"status": "failed", ...}`` with as many of the last log lines as fit under ``limit`` bytes."""
    message: dict[str, Any] = StageFailure(reason=_truncate(reason, 1024), exit_code=exit_code).model_dump(
        exclude_none=True, exclude={"log_tail"}
    )
    lines = [_truncate(line.rstrip("\r\n"), MAX_LINE) for line in tail]
    message["log_tail"] = ""
    if not fits(message, limit):
        message["reason"] = _truncate(message["reason"], 256)
    kept: list[str] = []
    for line in reversed(lines):
        candidate = "\n".join([line, *kept])
        if not fits({**message, "log_tail": candidate}, limit):
            break
        kept.insert(0, line)
    message["log_tail"] = "\n".join(kept)
    return message


def read_summary(output_dir: str | Path) -> dict[str, Any]:
    """``<output_dir>/summary.json`` as a dict (a :class:`~rlhf.api.outcome.StageSummary`);
    ValueError naming the file when missing or invalid."""
    path = Path(output_dir) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"the stage exited successfully but wrote no {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if not isinstance(outcome_of(data), StageSummary):
        raise ValueError(f"{path}: not a completed stage's summary (status {data.get('status')!r})")
    return data


def write(path: str | Path, message: dict[str, Any]) -> bool:
    """Write the message (never raises: a launcher without a termination log still exits properly)."""
    data = encode(message)
    assert len(data) <= MAX_BYTES, "termination messages are built to fit"
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        print(f"rlhf-entrypoint: cannot write the termination message to {path}: {e}", file=sys.stderr)
        return False
    return True
