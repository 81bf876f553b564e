"""What ``rlhf run`` leaves behind: the final table, ``<root>/run_summary.json`` and ``<root>/status.yaml``.

``status.yaml`` is the run's status in the RLHFRun ``status`` shape (:mod:`rlhf.api.status`),
built by the rule the operator uses on a cluster (:mod:`rlhf.api.conditions`): the same condition
types and reasons (``Prepared``, ``SFTSucceeded``... with ``Running``, ``Succeeded``, ``Failed``,
``Stopped``, ``Waiting``), the summary conditions, and the ``stages`` list with each stage's final
metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rlhf.api import PREPARE, RLHFRunStatus, graph
from rlhf.api.conditions import StepCondition, run_status, timestamp
from rlhf.api.outcome import finite_metrics
from rlhf.runner.progress import duration

#: States of a stage in ``rlhf run``.
PENDING, RUNNING, DONE, SKIPPED, FAILED, STOPPED, NOT_RUN = (
    "pending",
    "running",
    "done",
    "skipped",
    "failed",
    "stopped",
    "not run",
)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class StageResult:
    """One stage in this run: its state and what it produced."""

    stage: str
    state: str = PENDING
    note: str = ""  # why skipped / not run / failed
    exit_code: int | None = None
    seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # the stage's summary.json
    started_at: datetime | None = None
    finished_at: datetime | None = None
    log: str | None = None
    config: str | None = None
    reached: tuple[int | None, int | None] = (None, None)  # (step, total) seen in its progress, if it stopped

    @property
    def metrics(self) -> dict[str, float]:
        return finite_metrics(self.summary.get("metrics"))

    def key_metrics(self, limit: int | None = None) -> dict[str, float]:
        metrics = self.metrics
        first = graph.kind(self.stage).key_metrics  # shown first, others follow up to a few
        limit = limit or max(3, len(first))
        keys = [k for k in first if k in metrics]
        keys += [k for k in sorted(metrics) if k not in keys]
        return {k: metrics[k] for k in keys[:limit]}

    def steps(self) -> str:
        step, total = self.summary.get("global_step"), self.summary.get("total_steps")
        if step is None:
            step, total = self.reached
        if step is None:
            return "-"
        return f"{step}/{total}" if total else str(step)


def table(results: list[StageResult]) -> str:
    """The final summary table: stage, state, steps, key metrics, time, model directory."""
    rows = [("stage", "state", "steps", "metrics", "time", "model")]
    for r in results:
        metrics = "  ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in r.key_metrics().items())
        time_ = duration(r.seconds) if r.seconds is not None else "-"
        model = r.summary.get("model_dir", "-") if r.state in (DONE, SKIPPED) else "-"
        state = r.state + (f" ({r.note})" if r.note and r.state != DONE else "")
        rows.append((r.stage, state, r.steps(), metrics or "-", time_, str(model)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(
    path: Path,
    *,
    run: str,
    manifest: str,
    root: Path,
    status: str,
    reason: str | None,
    exit_code: int,
    started: datetime,
    plan: dict[str, Any],
    results: list[StageResult],
) -> None:
    """``run_summary.json``: the run's outcome and every stage's state, metrics and outputs."""
    finished = now()
    stages = {}
    for r in results:
        stages[r.stage] = {
            "state": r.state,
            "note": r.note or None,
            "exit_code": r.exit_code,
            "seconds": r.seconds,
            "global_step": r.summary.get("global_step", r.reached[0]),
            "total_steps": r.summary.get("total_steps", r.reached[1]),
            "metrics": r.metrics,
            "model_dir": r.summary.get("model_dir") if r.state in (DONE, SKIPPED) else None,
            "log": r.log,
            "config": r.config,
        }
    content = {
        "run": run,
        "manifest": manifest,
        "storage": str(root),
        "status": status,
        "reason": reason,
        "exit_code": exit_code,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 1),
        "plan": plan,
        "stages": stages,
    }
    _write_atomic(path, json.dumps(content, indent=2) + "\n")


class StatusWriter:
    """Keeps ``status.yaml`` current with the API's status rule (:func:`rlhf.api.conditions.run_status`),
    the one the operator writes on a cluster: the same events give the same conditions, reasons and
    stages list."""

    def __init__(self, path: Path, started: datetime):
        self.path, self.started = path, started
        self._status: dict[str, Any] = {}

    def write(
        self,
        results: list[StageResult],
        phase: str,
        failure: str | None = None,
        prepare: tuple[str, str] | None = None,
    ) -> None:
        """Write the status for ``results``; ``phase`` is Running, Succeeded or Failed (``failure``
        says why); ``prepare``: the prepare step's (state, note) once it started."""
        steps: dict[str, StepCondition] = {}
        entries: dict[str, dict[str, Any]] = {}
        running: list[str] = []
        if prepare is not None:
            state, note = prepare
            steps[PREPARE] = _step_condition(PREPARE, state, note, {})
            if state == RUNNING:
                running.append(PREPARE)
        for r in results:
            if r.state == NOT_RUN:
                continue
            steps[r.stage] = _step_condition(r.stage, r.state, r.note, r.metrics)
            entries[r.stage] = {
                # retries counts failed attempts, as on a cluster; rlhf run makes one attempt per run
                "name": r.stage,
                "state": _STAGE_STATES.get(r.state, "Pending"),
                "retries": int(r.state == FAILED),
                "metrics": r.metrics,
                "startTime": timestamp(r.started_at) if r.started_at else None,
                "completionTime": timestamp(r.finished_at) if r.finished_at else None,
            }
            if r.state == RUNNING:
                running.append(r.stage)
        started = [r.stage for r in results if r.started_at is not None]
        status = run_status(
            self._status,
            steps=steps,
            entries=entries,
            succeeded=phase == "Succeeded",
            failure=(failure or "failed") if phase == "Failed" else None,
            suspended=False,
            started=prepare is not None or bool(started),
            current=",".join(running)
            if running
            else (started[-1] if started else (PREPARE if prepare else None)),
            generation=None,
            now=now(),
            start_time=timestamp(self.started),
        )
        self._status = status
        data = RLHFRunStatus.model_validate(status).model_dump(mode="json", by_alias=True, exclude_none=True)
        _write_atomic(self.path, yaml.safe_dump(data, sort_keys=False))


#: A local stage's state -> its ``status.stages`` state (NOT_RUN stages are not reported).
_STAGE_STATES = {
    RUNNING: "Running",
    DONE: "Succeeded",
    SKIPPED: "Succeeded",
    FAILED: "Failed",
    STOPPED: "Stopped",
}


def _step_condition(step: str, state: str, note: str, metrics: dict[str, float]) -> StepCondition:
    """A local step's condition, in the API's vocabulary (as the operator reports the same states)."""
    if state in (DONE, SKIPPED):
        return StepCondition.succeeded(step, metrics)
    if state == RUNNING:
        return StepCondition(
            "False", "Running", "rlhf prepare: Hub copies and data caches" if step == PREPARE else "running"
        )
    if state == FAILED:
        return StepCondition("False", "Failed", note)
    if state == STOPPED:
        return StepCondition("False", "Stopped", note)
    return StepCondition("False", "Waiting", f"waiting for {graph.waiting_for(step)}")
