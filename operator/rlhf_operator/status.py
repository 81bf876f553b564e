"""The run's status as plain JSON (the CRD's shape): conditions, stage entries, phase. Pure.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` changes only when ``status`` does,
so writing the same observation twice changes nothing (no flapping, no needless writes).
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from rlhf.api import STAGE_NAMES
from rlhf_operator.names import PREPARE

#: Per-step condition types: True once the step succeeded; False with the step's state as reason.
STEP_CONDITIONS = {PREPARE: "Prepared", "sft": "SFTSucceeded", "reward": "RewardSucceeded",
                   "ppo": "PPOSucceeded"}
#: Human names of the steps, for messages and event reasons.
STEP_TITLES = {PREPARE: "Prepare", "sft": "SFT", "reward": "Reward", "ppo": "PPO"}
VALID, SUSPENDED, SUCCEEDED, FAILED = "Valid", "Suspended", "Succeeded", "Failed"
SUMMARY_CONDITIONS = (VALID, SUSPENDED, SUCCEEDED, FAILED)
#: Maximum length of a condition message kept in status (the CRD allows 32768).
MAX_MESSAGE = 2000


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes times."""
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  generation: int | None, now: datetime) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``type_`` set; its transition time kept unless status changes."""
    out = [c for c in conditions if c.get("type") != type_]
    old = get_condition(conditions, type_)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else timestamp(now)
    cond: dict[str, Any] = {"type": type_, "status": status, "reason": reason,
                            "message": message[:MAX_MESSAGE], "lastTransitionTime": since}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    order = {t: i for i, t in enumerate((*SUMMARY_CONDITIONS, *STEP_CONDITIONS.values()))}
    out.sort(key=lambda c: (order.get(c["type"], len(order)), c["type"]))
    return out


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


def condition_events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Kubernetes Events (type, reason, message) for the conditions whose status or reason changed."""
    events = []
    titles = {cond: STEP_TITLES[step] for step, cond in STEP_CONDITIONS.items()}
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
            warn = reason.endswith("Failed") or reason in ("Retrying", "NameConflict", "Stopped", "Unschedulable",
                                                            "ContainerWaiting", "Blocked")
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
