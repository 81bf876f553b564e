"""The run's status, one rule for every writer: the operator (on a cluster) and ``rlhf run``
(``status.yaml``) build it here from what they observed, so the same events give the same document.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` changes only when ``status`` does,
so writing the same observation twice changes nothing (no flapping, no needless writes).

**Condition types.** ``Valid``, ``Suspended``, ``Succeeded``, ``Failed``, and one per step
(:func:`rlhf.api.graph.condition_type`): ``Prepared``, ``SFTSucceeded``, ``RewardSucceeded``,
``PPOSucceeded``. A step's condition is ``True`` once it succeeded; while ``False`` its reason is
one of :data:`STEP_REASONS`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rlhf.api.graph import STAGE_NAMES, STEPS, condition_type, title

VALID, SUSPENDED, SUCCEEDED, FAILED = "Valid", "Suspended", "Succeeded", "Failed"
SUMMARY_CONDITIONS = (VALID, SUSPENDED, SUCCEEDED, FAILED)
#: Maximum length of a condition message kept in status (the CRD allows 32768).
MAX_MESSAGE = 2000

#: Why a step is where it is (the reason of its condition).
STEP_REASONS = {
    "Waiting": "a step it needs has not succeeded yet",
    "Created": "its job exists and waits for the MPI operator / its pod",
    "Running": "it runs",
    "Succeeded": "it succeeded (condition True)",
    "Failed": "it failed for good (no retries left)",
    "Retrying": "an attempt failed; the next resumes from the latest checkpoint",
    "Suspended": "the run is suspended",
    "Stopped": "the run failed (another step) while this one ran",
    "NameConflict": "an object of its name exists that the run does not own",
    "CreateFailed": "the API server refused its job (PatchFailed, DeleteFailed alike)",
    "Unschedulable": "its pods cannot be scheduled",
    "ContainerWaiting": "its containers cannot start (an image pull, say)",
    "Blocked": "its pods cannot be created (PodSecurity, quota, a missing PriorityClass)",
}
#: Reasons of the run's own conditions: Valid (Admitted, InvalidSpec), Suspended (Suspended,
#: NotSuspended), Succeeded (Succeeded, or the phase while not), Failed (StageFailed, InvalidSpec,
#: NoFailure).
RUN_REASONS = (
    "Admitted",
    "InvalidSpec",
    "Suspended",
    "NotSuspended",
    "Succeeded",
    "Pending",
    "Running",
    "Failed",
    "StageFailed",
    "NoFailure",
)
#: Step reasons that a Warning Event announces.
WARNING_REASONS = frozenset(
    {
        "Failed",
        "Retrying",
        "NameConflict",
        "Stopped",
        "Unschedulable",
        "ContainerWaiting",
        "Blocked",
        "CreateFailed",
        "PatchFailed",
        "DeleteFailed",
    }
)


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes times."""
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


_ORDER = {t: i for i, t in enumerate((*SUMMARY_CONDITIONS, *(condition_type(s) for s in STEPS)))}


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``type_`` set; its transition time kept unless status changes."""
    out = [c for c in conditions if c.get("type") != type_]
    old = get_condition(conditions, type_)
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else timestamp(now)
    )
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": since,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    out.sort(key=lambda c: (_ORDER.get(c["type"], len(_ORDER)), c["type"]))
    return out


@dataclass(frozen=True)
class StepCondition:
    """A step's condition as decided: True once it succeeded, else False with a reason."""

    status: str
    reason: str
    message: str

    @classmethod
    def succeeded(cls, step: str, metrics: dict[str, float] | None = None) -> StepCondition:
        """The condition of a step that succeeded (its key metrics in the message)."""
        if step not in STAGE_NAMES:
            return cls("True", "Succeeded", "models and datasets are in the run's storage")
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted((metrics or {}).items())[:8])
        return cls("True", "Succeeded", f"{title(step)} succeeded" + (f": {shown}" if shown else ""))


def stage_entry(status: dict[str, Any], stage: str) -> dict[str, Any]:
    """A copy of the ``status.stages`` entry of ``stage`` (a fresh Pending one if absent)."""
    for entry in status.get("stages") or []:
        if entry.get("name") == stage:
            out = copy.deepcopy(entry)
            out.setdefault("state", "Pending")
            out.setdefault("retries", 0)
            out.setdefault("metrics", {})
            return out
    return {"name": stage, "state": "Pending", "retries": 0, "metrics": {}}


def ordered_stages(entries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``status.stages`` list: one entry per stage that has started, in stage order."""
    out = []
    for stage in STAGE_NAMES:
        entry = entries.get(stage)
        if entry and (entry.get("jobName") or entry.get("state") != "Pending"):
            out.append({k: v for k, v in entry.items() if v is not None})
    return out


def phase_of(*, failure: str | None, succeeded: bool, suspended: bool, started: bool) -> str:
    """The run's phase: Failed, Succeeded, Suspended, Running or Pending (in that precedence)."""
    if failure:
        return "Failed"
    if succeeded:
        return "Succeeded"
    if suspended:
        return "Suspended"
    return "Running" if started else "Pending"


def run_status(
    old: dict[str, Any],
    *,
    steps: dict[str, StepCondition],
    entries: dict[str, dict[str, Any]],
    succeeded: bool,
    failure: str | None,
    suspended: bool,
    started: bool,
    current: str | None,
    generation: int | None,
    now: datetime,
    start_time: str | None = None,
) -> dict[str, Any]:
    """The whole new status of an admitted run.

    ``old``: the status as it is; ``steps``: each step's condition as decided; ``entries``: the
    ``status.stages`` entries by stage; ``succeeded``: every stage to run succeeded; ``failure``:
    why the run failed for good (None: it did not); ``current``: ``status.stage`` (the steps
    running now, comma-separated)."""
    conditions = list(old.get("conditions") or [])

    def cond(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)

    cond(VALID, "True", "Admitted", "the run was admitted")
    for step, decided in steps.items():
        cond(condition_type(step), decided.status, decided.reason, decided.message)
    phase = phase_of(failure=failure, succeeded=succeeded, suspended=suspended, started=started)
    cond(
        SUSPENDED,
        "True" if suspended else "False",
        "Suspended" if suspended else "NotSuspended",
        "spec.runPolicy.suspend is true" if suspended else "spec.runPolicy.suspend is false",
    )
    cond(
        SUCCEEDED,
        "True" if succeeded else "False",
        "Succeeded" if succeeded else phase,
        "all stages succeeded" if succeeded else "",
    )
    cond(FAILED, "True" if failure else "False", "StageFailed" if failure else "NoFailure", failure or "")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "stage": current,
        "startTime": old.get("startTime") or start_time or (timestamp(now) if started else None),
        "completionTime": (old.get("completionTime") or timestamp(now))
        if phase in ("Succeeded", "Failed")
        else None,
        "conditions": conditions,
        "stages": ordered_stages(entries),
    }
    return {k: v for k, v in status.items() if v is not None}


def invalid_status(
    old: dict[str, Any], problems: list[str], generation: int | None, now: datetime
) -> dict[str, Any]:
    """The status of a run that failed admission: Valid False naming the fields, Failed."""
    text = "; ".join(problems)
    conditions = list(old.get("conditions") or [])
    for type_, value, reason, message in (
        (VALID, "False", "InvalidSpec", text),
        (FAILED, "True", "InvalidSpec", text),
        (SUCCEEDED, "False", "InvalidSpec", "the run is invalid"),
    ):
        conditions = set_condition(conditions, type_, value, reason, message, generation, now)
    status = {**old, "observedGeneration": generation, "phase": "Failed", "conditions": conditions}
    status.setdefault("completionTime", timestamp(now))
    return status


def condition_events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Kubernetes Events (type, reason, message) for the conditions whose status or reason changed."""
    events = []
    titles = {condition_type(step): title(step) for step in STEPS}
    for cond in new:
        before = get_condition(old, cond["type"])
        if before and (before.get("status"), before.get("reason")) == (cond["status"], cond["reason"]):
            continue
        type_, status, reason = cond["type"], cond["status"], cond["reason"]
        if type_ in titles:
            if before is None and reason in ("Pending", "Waiting"):
                continue
            if reason == "Suspended":  # the run's own Suspended event says it once for every step
                continue
            warn = reason in WARNING_REASONS
            events.append(("Warning" if warn else "Normal", f"{titles[type_]}{reason}", cond["message"]))
        elif type_ == SUCCEEDED and status == "True":
            events.append(("Normal", "RunSucceeded", cond["message"]))
        elif type_ == FAILED and status == "True":
            events.append(("Warning", f"Run{reason}", cond["message"]))
        elif type_ == VALID and status == "False":
            events.append(("Warning", reason, cond["message"]))
        elif type_ == SUSPENDED and (before is not None or status == "True"):
            events.append(("Normal", "Suspended" if status == "True" else "Resumed", cond["message"]))
    return events
