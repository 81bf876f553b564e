"""How a stage ended, as every side reads it: what the trainer writes (``<output_dir>/summary.json``),
what the MPIJob launcher puts in its termination message (the same summary, compacted, or a
failure), and what the operator and ``rlhf run`` read back. No torch."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Where a stage's summary lands in its output directory.
SUMMARY_FILE = "summary.json"


def finite_metrics(raw: Any) -> dict[str, float]:
    """The numeric, finite metrics of a ``metrics`` mapping (booleans, strings, NaN dropped)."""
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class StageSummary(BaseModel):
    """A completed stage. Stages add their own fields (throughput, data statistics, ...), kept as
    they are; these are the ones every reader relies on (and the ones a compacted termination
    message keeps whole: :data:`ESSENTIAL`)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["completed"] = "completed"
    stage: str | None = None
    global_step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    model_dir: str | None = None
    warnings: list[str] = Field(default_factory=list)
    #: The stage had already completed with this config: nothing was trained this time.
    skipped: bool = False
    #: A termination message that had to drop fields to fit Kubernetes' 4096 bytes.
    truncated: bool = False

    @property
    def numeric_metrics(self) -> dict[str, float]:
        return finite_metrics(self.metrics)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data; the flags ``skipped`` and ``truncated`` only when set."""
        unset = {flag for flag in ("skipped", "truncated") if not getattr(self, flag)}
        return self.model_dump(mode="json", exclude=unset)


#: Summary fields a compacted termination message keeps whole (others go first, largest first).
ESSENTIAL = ("stage", "status", "global_step", "metrics", "model_dir")


class StageFailure(BaseModel):
    """A stage that failed: why (the trainer's error line), its exit code and the log's last lines."""

    model_config = ConfigDict(extra="allow")

    status: Literal["failed"] = "failed"
    reason: str = ""
    exit_code: int | None = None
    log_tail: str = ""


Outcome = StageSummary | StageFailure


def outcome_of(data: Any) -> Outcome | None:
    """A summary or failure from parsed JSON; None when it is neither."""
    if not isinstance(data, dict):
        return None
    try:
        if data.get("status") == "completed":
            return StageSummary.model_validate(data)
        if data.get("status") == "failed":
            return StageFailure.model_validate(data)
    except ValidationError:
        return None
    return None


def parse_outcome(text: str | None) -> Outcome | None:
    """A termination message (or summary.json text) as an outcome. Text that is not JSON — a
    container that died before writing one, with ``FallbackToLogsOnError`` — is a failure whose
    reason is its last line."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        lines = text.strip().splitlines()
        return StageFailure(reason=lines[-1][:300] if lines else "")
    return outcome_of(data)
