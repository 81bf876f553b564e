"""The decision of one reconcile: observed run + children -> status, actions, events. Pure.

Level-based: the same function serves create, resume and update; it looks only at what exists
now and at the run's status (which remembers what finished: a stage whose MPIJob was cleaned up
after success is not run again). Steps: the prepare Job first, then the SFT and reward MPIJobs
together, then PPO once both succeeded. A failed MPIJob of attempt ``k`` means ``k`` failures;
while that is within ``spec.stages.<stage>.retries`` it is deleted and recreated as attempt
``k + 1`` (the trainer resumes from its checkpoint), after that the run fails. Attempts are
recorded on the MPIJob (annotation), so a restart of the operator never double-counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from rlhf.api import STAGE_NAMES, graph
from rlhf.api.conditions import (
    FAILED,
    StepCondition,
    condition_events,
    get_condition,
    invalid_status,
    run_status,
    stage_entry,
    timestamp,
)
from rlhf.api.outcome import Outcome, StageFailure, StageSummary, parse_outcome
from rlhf_operator import names, render
from rlhf_operator.admission import AdmissionError, Admitted
from rlhf_operator.config import OperatorConfig

Verb = Literal["create", "patch", "delete"]
Key = tuple[str, str]  # (kind, name)
#: What a created job that does not run yet is waiting for (the same words before and after the
#: first observation, so that observing it changes nothing).
MPIJOB_PENDING = "waiting for the MPI operator"
JOB_PENDING = "waiting for its pod"


@dataclass(frozen=True)
class Action:
    """One change to a child: create ``body``, merge-patch it with ``body``, or delete it."""

    verb: Verb
    kind: str
    name: str
    body: dict[str, Any] | None = None
    uid: str | None = None
    #: The step whose condition reports a failure of this action.
    step: str | None = None
    #: Delete in the foreground: the object stays (being deleted) until the objects it owns are
    #: gone. A retry needs that: the MPI operator refuses to run a new MPIJob of the same name
    #: while the old one's worker pods still exist (ErrResourceExists).
    foreground: bool = False


@dataclass
class Decision:
    """What to write (``status``: the whole new status), do, and tell; ``requeue_after``: seconds
    after which the run needs another look although nothing may change meanwhile (a finished
    job's ``ttlSecondsAfterFinished`` running out)."""

    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class Refusal:
    """The API server's refusal of a planned change. ``permanent``: the request itself is invalid
    (422/400), so repeating it cannot help and the run fails; otherwise (quota, webhook, missing
    namespace or CRD) the change is retried at every reconcile and the step says why it waits."""

    message: str
    permanent: bool = False


# ---------------------------------------------------------------------------------------------
# Reading children.


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
    for type_, state in (("Succeeded", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended"),
                         ("Restarting", "Running"), ("Running", "Running"), ("Created", "Pending")):
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


def _recorded_failure(status: dict[str, Any], step: str) -> str | None:
    """The message of ``step``'s condition if the status records that step as Failed."""
    cond = get_condition(status.get("conditions") or [], graph.condition_type(step)) or {}
    if cond.get("status") == "False" and cond.get("reason") == "Failed" and cond.get("message"):
        return str(cond["message"])
    return None


def _recorded_run_failure(status: dict[str, Any], prefix: str) -> str | None:
    """The run's ``Failed`` condition message if it is True and starts with ``prefix``."""
    cond = get_condition(status.get("conditions") or [], FAILED) or {}
    message = str(cond.get("message") or "")
    return message if cond.get("status") == "True" and message.startswith(prefix) else None


PREPARE_FAILED = "prepare failed: "  # how the run's Failed condition names a failed prepare Job


def _recorded_prepare_failure(status: dict[str, Any]) -> tuple[str, str] | None:
    """(the Prepared condition's message, the run's Failed message) when the status already
    records the prepare Job's failure; then its pod need not be read again."""
    step = _recorded_failure(status, names.PREPARE)
    run = _recorded_run_failure(status, PREPARE_FAILED)
    return (step, run) if step and run else None


def _recorded_stage_failure(status: dict[str, Any], stage: str, entry: dict[str, Any], attempt: int) -> str | None:
    """The message of ``stage``'s final failure at ``attempt`` if the status (its stage ``entry``
    and condition) already records it; then its launcher pod need not be read again."""
    if entry["state"] == "Failed" and entry["retries"] >= attempt:
        return _recorded_failure(status, stage)
    return None


def _attempt(job: dict[str, Any]) -> int:
    try:
        return max(1, int(_annotation(job, names.ATTEMPT_ANNOTATION) or 1))
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
    if (job is not None and prepared.get("status") != "True" and owned_by(job, uid)
            and batch_job_state(job)[0] == "Failed"
            and not _recorded_prepare_failure(status)):
        out.append(names.PREPARE)
    for stage in STAGE_NAMES:
        job = objects.get(("MPIJob", names.job_name(run, stage)))
        if job is None or not owned_by(job, uid) or (job.get("metadata") or {}).get("deletionTimestamp"):
            continue
        state = mpijob_state(job)[0]
        entry = stage_entry(status, stage)
        if state == "Succeeded":
            recorded = entry["state"] == "Succeeded"
        elif state == "Failed":
            recorded = _recorded_stage_failure(status, stage, entry, _attempt(job)) is not None
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
    for stage in STAGE_NAMES:
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
                return Blocked("Unschedulable", f"pod {pod_name} cannot be scheduled: {cond.get('message') or cond.get('reason')}")
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
                pod_name = (pod.get("metadata") or {}).get("name")
                return Blocked("ContainerWaiting", f"pod {pod_name}: {waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
    since = (job.get("metadata") or {}).get("creationTimestamp") or ""
    warnings = [e for e in events if e.get("type") == "Warning" and e.get("reason") in BLOCKING_EVENTS
                and (e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "") >= since]
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
        terminated = ((cs.get("state") or {}).get("terminated")
                      or (cs.get("lastState") or {}).get("terminated") or {})
        outcome = parse_outcome(terminated.get("message"))
        if outcome is not None:
            return outcome
    return None


def metrics_of(outcome: Outcome | None) -> dict[str, float]:
    """The numeric metrics of a stage summary (termination message of a successful launcher)."""
    return outcome.numeric_metrics if isinstance(outcome, StageSummary) else {}


def _failure_reason(outcome: Outcome | None, fallback: str) -> str:
    if isinstance(outcome, StageFailure) and outcome.reason:
        return outcome.reason
    return fallback


def _annotation(obj: dict[str, Any], key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


def _suspend_patch(kind: str, obj: dict[str, Any], suspend: bool) -> dict[str, Any] | None:
    """The patch that makes a running child follow the run's ``suspend`` (None if it does). A child
    suspended by someone else (Kueue) is left alone when the run resumes."""
    spec = obj.get("spec") or {}
    current = bool((spec.get("runPolicy") or {}).get("suspend") if kind == "MPIJob" else spec.get("suspend"))
    if suspend and not current:
        flag, note = True, "true"
    elif not suspend and current and _annotation(obj, names.SUSPENDED_BY_RUN) == "true":
        flag, note = False, None
    else:
        return None
    body: dict[str, Any] = {"spec": {"runPolicy": {"suspend": flag}} if kind == "MPIJob" else {"suspend": flag}}
    body["metadata"] = {"annotations": {names.SUSPENDED_BY_RUN: note}}
    return body


# ---------------------------------------------------------------------------------------------
# The decision.


@dataclass
class _Ctx:
    admitted: Admitted
    config: OperatorConfig
    uid: str
    objects: dict[Key, dict[str, Any]]
    pods: dict[str, dict[str, Any]]
    now: datetime
    old: dict[str, Any]
    blocked: dict[str, Blocked] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    steps: dict[str, StepCondition] = field(default_factory=dict)
    failure: str | None = None
    started: bool = False
    #: Steps whose pods run now, in run order (``status.stage``).
    running: list[str] = field(default_factory=list)
    #: Seconds until a finished job's TTL runs out, per job (the soonest becomes requeue_after).
    expiring: list[float] = field(default_factory=list)
    #: Steps whose job the API server refused for good (the cause of the run's failure).
    refused: set[str] = field(default_factory=set)

    @property
    def suspend(self) -> bool:
        return self.admitted.run.spec.run_policy.suspend

    def job(self, kind: str, step: str) -> dict[str, Any] | None:
        return self.objects.get((kind, names.job_name(self.admitted.name, step)))


def _reason(state: str) -> str:
    """Condition reason of a job in ``state``: a job that exists but does not run yet is "Created"."""
    return "Created" if state == "Pending" else state


def _conflict(kind: str, name: str) -> str:
    return f"a {kind} named {name} exists and is not owned by this run; delete or rename it"


def _ensure_static_children(ctx: _Ctx) -> set[str]:
    """Create or update each step's ConfigMap and each stage's NetworkPolicy; the steps whose
    object names are taken by someone else."""
    blocked = set()
    wanted: list[tuple[str, dict[str, Any], str]] = [
        (step, render.config_map(ctx.admitted, step, ctx.uid), "data") for step in names.STEPS]
    wanted += [(stage, render.network_policy(ctx.admitted, stage, ctx.uid), "spec") for stage in STAGE_NAMES]
    for step, desired, content in wanted:
        kind, name = desired["kind"], desired["metadata"]["name"]
        obj = ctx.objects.get((kind, name))
        if obj is None:
            ctx.actions.append(Action("create", kind, name, desired, step=step))
        elif not owned_by(obj, ctx.uid):
            blocked.add(step)
            ctx.steps[step] = StepCondition("False", "NameConflict", _conflict(kind, name))
        elif obj.get(content) != desired[content]:
            # A merge patch that also removes what someone added (a plain merge would keep it).
            ctx.actions.append(Action("patch", kind, name, {content: merge_patch(obj.get(content), desired[content])},
                                      step=step))
    return blocked


def _expire(ctx: _Ctx, kind: str, job: dict[str, Any], finished_at: str | None, step: str) -> None:
    """Delete a finished job whose result the status records once ``ttlSecondsAfterFinished`` has
    passed since ``finished_at`` (the operator's own TTL: a job removed by a TTL controller while
    the operator was down would look like one that never ran)."""
    ttl = ctx.admitted.run.spec.run_policy.ttl_seconds_after_finished
    meta = job.get("metadata") or {}
    if ttl is None or meta.get("deletionTimestamp"):
        return
    try:
        since = datetime.fromisoformat(str(finished_at).replace("Z", "+00:00")) if finished_at else ctx.now
    except ValueError:
        since = ctx.now
    left = ttl - (ctx.now - since).total_seconds()
    if left <= 0:
        ctx.actions.append(Action("delete", kind, meta.get("name") or "", uid=meta.get("uid"), step=step))
    else:
        ctx.expiring.append(left)


def _prepare(ctx: _Ctx, blocked: set[str]) -> bool:
    """Drive the prepare Job; True once the run's storage is prepared."""
    step = names.PREPARE
    name = names.job_name(ctx.admitted.name, step)
    job = ctx.job("Job", step)
    done = get_condition(ctx.old.get("conditions") or [], graph.condition_type(step))
    if done and done.get("status") == "True":
        ctx.steps[step] = StepCondition("True", "Succeeded", done.get("message") or "storage prepared")
        if job is not None and owned_by(job, ctx.uid):
            _expire(ctx, "Job", job, done.get("lastTransitionTime"), step)
        return True
    if step in blocked:
        return False
    if job is None:
        if ctx.suspend:
            ctx.steps[step] = StepCondition("False", "Suspended", "the run is suspended")
        else:
            body = render.prepare_job(ctx.admitted, ctx.config, ctx.uid)
            ctx.actions.append(Action("create", "Job", name, body, step=step))
            ctx.steps[step] = StepCondition("False", "Created", f"Job {name}: {JOB_PENDING}")
            ctx.started = True
            ctx.running.append(step)
        return False
    if not owned_by(job, ctx.uid):
        ctx.steps[step] = StepCondition("False", "NameConflict", _conflict("Job", name))
        return False
    ctx.started = True
    state, detail = batch_job_state(job)
    if state == "Succeeded":
        ctx.steps[step] = StepCondition.succeeded(step)
        _expire(ctx, "Job", job, (job.get("status") or {}).get("completionTime"), step)
        return True
    if state == "Failed":
        recorded = _recorded_prepare_failure(ctx.old)
        if recorded:  # this failure is recorded: no pod read (pods_needed)
            ctx.steps[step] = StepCondition("False", "Failed", recorded[0])
            ctx.failure = ctx.failure or recorded[1]
            _expire(ctx, "Job", job, (job.get("status") or {}).get("completionTime"), step)
            return False
        reason = _failure_reason(termination_message(ctx.pods.get(step)), detail)
        ctx.steps[step] = StepCondition("False", "Failed", f"Job {name} failed: {reason}")
        ctx.failure = ctx.failure or f"{PREPARE_FAILED}{reason}"
        return False
    ctx.running.append(step)
    patch = _suspend_patch("Job", job, ctx.suspend)
    if patch:
        ctx.actions.append(Action("patch", "Job", name, patch, step=step))
        state, detail = ("Suspended", "suspended") if ctx.suspend else ("Pending", JOB_PENDING)
    why = ctx.blocked.get(step) if state == "Pending" else None
    if why is not None:
        ctx.steps[step] = StepCondition("False", why.reason, f"Job {name}: {why.message}")
    else:
        ctx.steps[step] = StepCondition("False", _reason(state), f"Job {name}: {detail}")
    return False


def _stage(ctx: _Ctx, stage: str, entry: dict[str, Any], ready: bool, waiting_for: str,
           blocked: set[str]) -> None:
    """Drive one stage's MPIJob; updates ``entry`` (its status.stages item) in place."""
    title = graph.title(stage)
    name = names.job_name(ctx.admitted.name, stage)
    limit = ctx.admitted.run.spec.stages.get(stage).retries
    job = ctx.job("MPIJob", stage)
    message = termination_message(ctx.pods.get(stage))
    owned = job is not None and owned_by(job, ctx.uid)

    if entry["state"] == "Succeeded":
        if not entry.get("metrics") and isinstance(message, StageSummary):
            entry["metrics"] = metrics_of(message)
        ctx.steps[stage] = StepCondition.succeeded(stage, entry.get("metrics"))
        if owned:
            _expire(ctx, "MPIJob", job, entry.get("completionTime"), stage)
        return
    if entry["state"] == "Stopped":
        before = get_condition(ctx.old.get("conditions") or [], graph.condition_type(stage)) or {}
        ctx.steps[stage] = StepCondition("False", "Stopped", before.get("message") or f"{title} was stopped")
        return
    if stage in blocked:
        return
    if job is not None and not owned:
        ctx.steps[stage] = StepCondition("False", "NameConflict", _conflict("MPIJob", name))
        return
    if job is None:
        if entry["state"] == "Failed" and entry["retries"] > limit:
            before = get_condition(ctx.old.get("conditions") or [], graph.condition_type(stage)) or {}
            text = before.get("message") or f"{title} failed after {entry['retries']} attempts"
            ctx.steps[stage] = StepCondition("False", "Failed", text)
            ctx.failure = ctx.failure or text
            return
        if not ready:
            ctx.steps[stage] = StepCondition("False", "Waiting", f"waiting for {waiting_for}")
            return
        if ctx.suspend:
            ctx.steps[stage] = StepCondition("False", "Suspended", "the run is suspended")
            return
        attempt = entry["retries"] + 1
        body = render.mpijob(ctx.admitted, ctx.config, stage, ctx.uid, attempt=attempt)
        ctx.actions.append(Action("create", "MPIJob", name, body, step=stage))
        entry.update(jobName=name, state="Pending")
        ctx.steps[stage] = StepCondition("False", "Created", f"MPIJob {name} (attempt {attempt}): {MPIJOB_PENDING}")
        ctx.started = True
        ctx.running.append(stage)
        return

    assert job is not None
    ctx.started = True
    entry["jobName"] = name
    attempt = _attempt(job)
    meta, job_status = job.get("metadata") or {}, job.get("status") or {}
    if meta.get("deletionTimestamp"):
        entry["state"] = "Pending"
        ctx.steps[stage] = StepCondition("False", "Retrying", f"MPIJob {name} (attempt {attempt}) is being deleted")
        return
    state, detail = mpijob_state(job)
    if state in ("Running", "Succeeded", "Failed") and not entry.get("startTime"):
        entry["startTime"] = job_status.get("startTime") or meta.get("creationTimestamp") or timestamp(ctx.now)
    if state == "Succeeded":
        entry.update(state="Succeeded", retries=max(entry["retries"], attempt - 1),
                     completionTime=job_status.get("completionTime") or timestamp(ctx.now),
                     metrics=metrics_of(message))
        ctx.steps[stage] = StepCondition.succeeded(stage, entry["metrics"])
        _expire(ctx, "MPIJob", job, entry["completionTime"], stage)
        return
    if state == "Failed":
        recorded = _recorded_stage_failure(ctx.old, stage, entry, attempt)
        failures = max(entry["retries"], attempt)
        reason = _failure_reason(message, detail)
        entry["retries"] = failures
        if failures <= limit:
            ctx.actions.append(Action("delete", "MPIJob", name, uid=meta.get("uid"), step=stage, foreground=True))
            entry["state"] = "Pending"
            ctx.steps[stage] = StepCondition("False", "Retrying", f"attempt {attempt} failed ({reason}); retry "
                                     f"{failures} of {limit} resumes from the latest checkpoint")
        else:
            if recorded:  # this very failure is in the status already: no pod read (pods_needed)
                text = recorded
            else:
                text = f"{title} failed after {failures} attempt{'s' if failures > 1 else ''}: {reason}"
            entry.update(state="Failed", completionTime=job_status.get("completionTime") or timestamp(ctx.now))
            ctx.steps[stage] = StepCondition("False", "Failed", text)
            ctx.failure = ctx.failure or text
            _expire(ctx, "MPIJob", job, entry["completionTime"], stage)
        return
    entry["retries"] = max(entry["retries"], attempt - 1)
    ctx.running.append(stage)
    patch = _suspend_patch("MPIJob", job, ctx.suspend)
    if patch:
        ctx.actions.append(Action("patch", "MPIJob", name, patch, step=stage))
        state, detail = ("Suspended", "suspended") if ctx.suspend else ("Pending", MPIJOB_PENDING)
    entry["state"] = "Running" if state == "Running" else "Pending"
    why = ctx.blocked.get(stage) if state == "Pending" else None
    if why is not None:
        ctx.steps[stage] = StepCondition("False", why.reason, f"MPIJob {name} (attempt {attempt}): {why.message}")
    else:
        ctx.steps[stage] = StepCondition("False", _reason(state), f"MPIJob {name} (attempt {attempt}): {detail}")


def _stop_others(ctx: _Ctx, entries: dict[str, dict[str, Any]]) -> None:
    """The run failed for good: nothing new starts, and every stage still running is stopped (its
    MPIJob deleted, so it stops holding devices). A stage that never started stays Pending."""
    planned = {(a.kind, a.name) for a in ctx.actions if a.verb == "delete"}
    starting = {names.job_name(ctx.admitted.name, s) for s in (names.PREPARE, *STAGE_NAMES)}
    ctx.actions = [a for a in ctx.actions if not (a.verb == "create" and a.name in starting)]
    for stage in STAGE_NAMES:
        entry = entries[stage]
        if stage in ctx.refused:
            entry["state"] = "Failed"
            continue
        if entry["state"] not in ("Pending", "Running") or not entry.get("jobName"):
            continue
        job = ctx.job("MPIJob", stage)
        if job is not None and owned_by(job, ctx.uid) and ("MPIJob", job["metadata"]["name"]) not in planned:
            ctx.actions.append(Action("delete", "MPIJob", job["metadata"]["name"],
                                      uid=job["metadata"].get("uid"), step=stage))
        entry.update(state="Stopped", completionTime=entry.get("completionTime") or timestamp(ctx.now))
        ctx.steps[stage] = StepCondition("False", "Stopped", f"{graph.title(stage)} was stopped: the run failed ({ctx.failure})")
    ctx.running = []


def _current_steps(ctx: _Ctx, entries: dict[str, dict[str, Any]]) -> str | None:
    """``status.stage``: the steps running now, or else the last one that ran."""
    if ctx.running:
        return ",".join(ctx.running)
    started = [s for s in STAGE_NAMES if entries[s].get("jobName") or entries[s]["state"] != "Pending"]
    if started:
        return started[-1]
    return names.PREPARE if ctx.job("Job", names.PREPARE) is not None else ctx.old.get("stage")


def _report_refusals(ctx: _Ctx, refusals: dict[str, Refusal]) -> None:
    """A step whose planned change the API server refused last time says so; a refusal that
    cannot change (the object is invalid) fails the run."""
    for action in ctx.actions:
        refusal = refusals.get(action.name)
        if refusal is None or action.step is None:
            continue
        current = ctx.steps.get(action.step)
        if current is not None and current.status == "True":
            continue
        ctx.steps[action.step] = StepCondition("False", f"{action.verb.capitalize()}Failed", refusal.message)
        if refusal.permanent:
            ctx.failure = ctx.failure or refusal.message
            ctx.refused.add(action.step)


def decide(body: dict[str, Any], admission: Admitted | AdmissionError, config: OperatorConfig,
           objects: dict[Key, dict[str, Any]], pods: dict[str, dict[str, Any]], now: datetime,
           failures: dict[str, Refusal] | None = None, blocked: dict[str, Blocked] | None = None) -> Decision:
    """Decide one reconcile of the run ``body`` (as read from the API server).

    ``objects`` are its existing children by (kind, name); ``pods`` the latest pod of each
    finished step (launcher of a stage's MPIJob, pod of the prepare Job), by step; ``failures``
    the API's refusals of the last attempt to change a child, by child name; ``blocked`` why the
    pods of a created step do not run (:func:`diagnose`), by step.
    """
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid") or "", meta.get("generation")
    old = body.get("status") or {}
    if isinstance(admission, AdmissionError):
        status = invalid_status(old, admission.problems, generation, now)
        return Decision(status, [], condition_events(old.get("conditions") or [], status["conditions"]))

    ctx = _Ctx(admission, config, uid, objects, pods, now, old, blocked=dict(blocked or {}))
    conflicts = _ensure_static_children(ctx)
    prepared = _prepare(ctx, conflicts)
    entries = {stage: stage_entry(old, stage) for stage in graph.STAGE_NAMES}
    for wave in graph.waves(graph.STAGE_NAMES):
        for stage in wave:
            ready = prepared and graph.ready(stage, [s for s, e in entries.items() if e["state"] == "Succeeded"])
            waiting_for = "the prepare Job" if not graph.needs(stage) else graph.waiting_for(stage)
            _stage(ctx, stage, entries[stage], ready, waiting_for, conflicts)

    _report_refusals(ctx, failures or {})
    if ctx.failure:
        _stop_others(ctx, entries)
    status = run_status(
        old, steps=ctx.steps, entries=entries, succeeded=all(e["state"] == "Succeeded" for e in entries.values()),
        failure=ctx.failure, suspended=ctx.suspend, started=ctx.started, current=_current_steps(ctx, entries),
        generation=generation, now=now)
    return Decision(status, ctx.actions, condition_events(old.get("conditions") or [], status["conditions"]),
                    requeue_after=min(ctx.expiring) if ctx.expiring else None)
