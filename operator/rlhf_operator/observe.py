"""Reading a run's children: what state each job is in, how a finished step ended, why a created
step's pods do not run, and what the run's status already records. Pure: the controller fetches
the objects, :mod:`rlhf_operator.reconcile` decides on what these functions read from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.api import graph
from rlhf.api.conditions import FAILED, get_condition, stage_entry
from rlhf.api.outcome import Outcome, StageFailure, StageSummary, parse_outcome
from rlhf_operator import names

Key = tuple[str, str]  # (kind, name)
#: What a created job that does not run yet is waiting for (the same words before and after the
#: first observation, so that observing it changes nothing).
MPIJOB_PENDING = "waiting for the MPI operator"
JOB_PENDING = "waiting for its pod"


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``; None-valued keys delete."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether the run with ``uid`` is ``obj``'s controller."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


def mpijob_state(job: dict[str, Any]) -> tuple[str, str]:
    """(state, message) of an MPIJob from its v2beta1 conditions: Succeeded, Failed, Suspended,
    Running (also while Restarting) or Pending (Created, or nothing yet)."""
    conds = _true_conditions(job)
    for type_, state in (
        ("Succeeded", "Succeeded"),
        ("Failed", "Failed"),
        ("Suspended", "Suspended"),
        ("Restarting", "Running"),
        ("Running", "Running"),
        ("Created", "Pending"),
    ):
        if type_ in conds:
            return state, str(conds[type_].get("message") or conds[type_].get("reason") or type_)
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return "Suspended", "suspended"
    return "Pending", MPIJOB_PENDING


def batch_job_state(job: dict[str, Any]) -> tuple[str, str]:
    """(state, message) of a batch/v1 Job: Succeeded, Failed, Suspended, Running or Pending."""
    conds = _true_conditions(job)
    if "Complete" in conds:
        return "Succeeded", str(conds["Complete"].get("message") or "completed")
    if "Failed" in conds:
        return "Failed", str(conds["Failed"].get("message") or conds["Failed"].get("reason") or "failed")
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended", "suspended"
    # ``active`` counts pods that exist, scheduled or not; ``ready`` those whose container runs.
    if (job.get("status") or {}).get("ready"):
        return "Running", "running"
    return "Pending", JOB_PENDING


def recorded_failure(status: dict[str, Any], step: str) -> str | None:
    """The message of ``step``'s condition if the status records that step as Failed."""
    cond = get_condition(status.get("conditions") or [], graph.condition_type(step)) or {}
    if cond.get("status") == "False" and cond.get("reason") == "Failed" and cond.get("message"):
        return str(cond["message"])
    return None


def recorded_run_failure(status: dict[str, Any], prefix: str) -> str | None:
    """The run's ``Failed`` condition message if it is True and starts with ``prefix``."""
    cond = get_condition(status.get("conditions") or [], FAILED) or {}
    message = str(cond.get("message") or "")
    return message if cond.get("status") == "True" and message.startswith(prefix) else None


PREPARE_FAILED = "prepare failed: "  # how the run's Failed condition names a failed prepare Job


def recorded_prepare_failure(status: dict[str, Any]) -> tuple[str, str] | None:
    """(the Prepared condition's message, the run's Failed message) when the status already
    records the prepare Job's failure; then its pod need not be read again."""
    step = recorded_failure(status, names.PREPARE)
    run = recorded_run_failure(status, PREPARE_FAILED)
    return (step, run) if step and run else None


def recorded_stage_failure(
    status: dict[str, Any], stage: str, entry: dict[str, Any], attempt: int
) -> str | None:
    """The message of ``stage``'s final failure at ``attempt`` if the status (its stage ``entry``
    and condition) already records it; then its launcher pod need not be read again."""
    if entry["state"] == "Failed" and entry["retries"] >= attempt:
        return recorded_failure(status, stage)
    return None


def attempt_of(job: dict[str, Any]) -> int:
    try:
        return max(1, int(annotation(job, names.ATTEMPT_ANNOTATION) or 1))
    except ValueError:
        return 1


def pods_needed(body: dict[str, Any], objects: dict[Key, dict[str, Any]]) -> list[str]:
    """The steps whose latest pod :func:`decide` needs: a finished job whose result (the pod's
    termination message) the run's status does not record yet. Once it is recorded (the stage
    entry says Succeeded, or the step's condition says Failed), the status is the memory and the
    pod is not read again: a finished or failed run costs no pod reads. The prepare Job's pod
    matters only when it failed (its reason)."""
    meta = body.get("metadata") or {}
    run, uid = meta.get("name") or "", meta.get("uid") or ""
    status = body.get("status") or {}
    out = []
    prepare = names.job_name(run, names.PREPARE)
    job = objects.get(("Job", prepare))
    prepared = get_condition(status.get("conditions") or [], graph.condition_type(names.PREPARE)) or {}
    if (
        job is not None
        and prepared.get("status") != "True"
        and owned_by(job, uid)
        and batch_job_state(job)[0] == "Failed"
        and not recorded_prepare_failure(status)
    ):
        out.append(names.PREPARE)
    for stage in names.stages_of(body):
        job = objects.get(("MPIJob", names.job_name(run, stage)))
        if job is None or not owned_by(job, uid) or (job.get("metadata") or {}).get("deletionTimestamp"):
            continue
        state = mpijob_state(job)[0]
        entry = stage_entry(status, stage)
        if state == "Succeeded":
            recorded = entry["state"] == "Succeeded"
        elif state == "Failed":
            recorded = recorded_stage_failure(status, stage, entry, attempt_of(job)) is not None
        else:
            continue
        if not recorded:
            out.append(stage)
    return out


def diagnostics_needed(body: dict[str, Any], objects: dict[Key, dict[str, Any]]) -> dict[str, list[str]]:
    """Steps whose job exists but whose pods do not run yet, with the names of the objects whose
    Warning events may say why (the Job or MPIJob, and an MPIJob's launcher Job). Their pods
    (``PodScheduled=False``, a container waiting on its image) are read too; a running or finished
    step costs no such reads."""
    meta = body.get("metadata") or {}
    run, uid = meta.get("name") or "", meta.get("uid") or ""
    out: dict[str, list[str]] = {}
    prepare = objects.get(("Job", names.job_name(run, names.PREPARE)))
    if prepare is not None and owned_by(prepare, uid) and batch_job_state(prepare)[0] == "Pending":
        out[names.PREPARE] = [names.job_name(run, names.PREPARE)]
    for stage in names.stages_of(body):
        name = names.job_name(run, stage)
        job = objects.get(("MPIJob", name))
        if job is not None and owned_by(job, uid) and mpijob_state(job)[0] == "Pending":
            out[stage] = [name, name + names.MPI_OPERATOR_CHILDREN["Job"][0]]
    return out


#: Warning events that mean a job's pods cannot be created: the job controller's FailedCreate
#: (PodSecurity, quota, a missing PriorityClass...), and the MPI operator's (mpi_job_controller.go)
#: failed pod creation, a name taken by an object it does not manage, and an MPIJob it refuses.
BLOCKING_EVENTS = frozenset({"FailedCreate", "MPIJobFailed", "ErrResourceExists", "ValidationError"})


@dataclass(frozen=True)
class Blocked:
    """Why a step's pods do not run: a condition reason and a message."""

    reason: str
    message: str


def diagnose(job: dict[str, Any], events: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Blocked | None:
    """Why the pods of a created ``job`` do not run, from what Kubernetes reported: pods the
    scheduler cannot place, containers that cannot start (image pulls), pods that could not be
    created (PodSecurity, quota, a missing PriorityClass: Warning events of the job controller or
    the MPI operator). Events older than ``job`` (an earlier attempt of the same name) are ignored."""
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                pod_name = (pod.get("metadata") or {}).get("name")
                return Blocked(
                    "Unschedulable",
                    f"pod {pod_name} cannot be scheduled: {cond.get('message') or cond.get('reason')}",
                )
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
                pod_name = (pod.get("metadata") or {}).get("name")
                return Blocked(
                    "ContainerWaiting",
                    f"pod {pod_name}: {waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "),
                )
    since = (job.get("metadata") or {}).get("creationTimestamp") or ""
    warnings = [
        e
        for e in events
        if e.get("type") == "Warning"
        and e.get("reason") in BLOCKING_EVENTS
        and (e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "") >= since
    ]
    if warnings:
        latest = max(warnings, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        involved = (latest.get("involvedObject") or {}).get("name")
        return Blocked("Blocked", f"{involved}: {latest.get('reason')}: {latest.get('message')}")
    return None


def termination_message(pod: dict[str, Any] | None) -> Outcome | None:
    """How a finished step ended, from its pod's termination message (launcher container first):
    the stage summary, a failure, or None when there is none (:mod:`rlhf.api.outcome`)."""
    if not pod:
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    statuses = sorted(statuses, key=lambda s: s.get("name") != "launcher")
    for cs in statuses:
        terminated = (
            (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        )
        outcome = parse_outcome(terminated.get("message"))
        if outcome is not None:
            return outcome
    return None


def metrics_of(outcome: Outcome | None) -> dict[str, float]:
    """The numeric metrics of a stage summary (termination message of a successful launcher)."""
    return outcome.numeric_metrics if isinstance(outcome, StageSummary) else {}


def failure_reason(outcome: Outcome | None, fallback: str) -> str:
    if isinstance(outcome, StageFailure) and outcome.reason:
        return outcome.reason
    return fallback


def annotation(obj: dict[str, Any], key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


def suspend_patch(kind: str, obj: dict[str, Any], suspend: bool) -> dict[str, Any] | None:
    """The patch that makes a running child follow the run's ``suspend`` (None if it does). A child
    suspended by someone else (Kueue) is left alone when the run resumes."""
    spec = obj.get("spec") or {}
    current = bool((spec.get("runPolicy") or {}).get("suspend") if kind == "MPIJob" else spec.get("suspend"))
    if suspend and not current:
        flag, note = True, "true"
    elif not suspend and current and annotation(obj, names.SUSPENDED_BY_RUN) == "true":
        flag, note = False, None
    else:
        return None
    body: dict[str, Any] = {
        "spec": {"runPolicy": {"suspend": flag}} if kind == "MPIJob" else {"suspend": flag}
    }
    body["metadata"] = {"annotations": {names.SUSPENDED_BY_RUN: note}}
    return body
