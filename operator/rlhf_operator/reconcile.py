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

from rlhf.api import graph
from rlhf.api.conditions import (
    StepCondition,
    condition_events,
    get_condition,
    invalid_status,
    run_status,
    stage_entry,
    timestamp,
)
from rlhf.api.outcome import StageSummary
from rlhf_operator import names, render
from rlhf_operator.admission import AdmissionError, Admitted
from rlhf_operator.config import OperatorConfig
from rlhf_operator.observe import (
    JOB_PENDING,
    MPIJOB_PENDING,
    PREPARE_FAILED,
    Blocked,
    Key,
    attempt_of,
    batch_job_state,
    failure_reason,
    merge_patch,
    metrics_of,
    mpijob_state,
    owned_by,
    recorded_prepare_failure,
    recorded_stage_failure,
    suspend_patch,
    termination_message,
)

Verb = Literal["create", "patch", "delete"]


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
        (step, render.config_map(ctx.admitted, step, ctx.uid), "data") for step in ctx.admitted.steps
    ]
    wanted += [
        (stage, render.network_policy(ctx.admitted, stage, ctx.uid), "spec") for stage in ctx.admitted.stages
    ]
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
            ctx.actions.append(
                Action(
                    "patch", kind, name, {content: merge_patch(obj.get(content), desired[content])}, step=step
                )
            )
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
        recorded = recorded_prepare_failure(ctx.old)
        if recorded:  # this failure is recorded: no pod read (pods_needed)
            ctx.steps[step] = StepCondition("False", "Failed", recorded[0])
            ctx.failure = ctx.failure or recorded[1]
            _expire(ctx, "Job", job, (job.get("status") or {}).get("completionTime"), step)
            return False
        reason = failure_reason(termination_message(ctx.pods.get(step)), detail)
        ctx.steps[step] = StepCondition("False", "Failed", f"Job {name} failed: {reason}")
        ctx.failure = ctx.failure or f"{PREPARE_FAILED}{reason}"
        return False
    ctx.running.append(step)
    patch = suspend_patch("Job", job, ctx.suspend)
    if patch:
        ctx.actions.append(Action("patch", "Job", name, patch, step=step))
        state, detail = ("Suspended", "suspended") if ctx.suspend else ("Pending", JOB_PENDING)
    why = ctx.blocked.get(step) if state == "Pending" else None
    if why is not None:
        ctx.steps[step] = StepCondition("False", why.reason, f"Job {name}: {why.message}")
    else:
        ctx.steps[step] = StepCondition("False", _reason(state), f"Job {name}: {detail}")
    return False


def _stage(
    ctx: _Ctx, stage: str, entry: dict[str, Any], ready: bool, waiting_for: str, blocked: set[str]
) -> None:
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
        if job is not None and owned:
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
        ctx.steps[stage] = StepCondition(
            "False", "Created", f"MPIJob {name} (attempt {attempt}): {MPIJOB_PENDING}"
        )
        ctx.started = True
        ctx.running.append(stage)
        return

    assert job is not None
    ctx.started = True
    entry["jobName"] = name
    attempt = attempt_of(job)
    meta, job_status = job.get("metadata") or {}, job.get("status") or {}
    if meta.get("deletionTimestamp"):
        entry["state"] = "Pending"
        ctx.steps[stage] = StepCondition(
            "False", "Retrying", f"MPIJob {name} (attempt {attempt}) is being deleted"
        )
        return
    state, detail = mpijob_state(job)
    if state in ("Running", "Succeeded", "Failed") and not entry.get("startTime"):
        entry["startTime"] = (
            job_status.get("startTime") or meta.get("creationTimestamp") or timestamp(ctx.now)
        )
    if state == "Succeeded":
        entry.update(
            state="Succeeded",
            retries=max(entry["retries"], attempt - 1),
            completionTime=job_status.get("completionTime") or timestamp(ctx.now),
            metrics=metrics_of(message),
        )
        ctx.steps[stage] = StepCondition.succeeded(stage, entry["metrics"])
        _expire(ctx, "MPIJob", job, entry["completionTime"], stage)
        return
    if state == "Failed":
        recorded = recorded_stage_failure(ctx.old, stage, entry, attempt)
        failures = max(entry["retries"], attempt)
        reason = failure_reason(message, detail)
        entry["retries"] = failures
        if failures <= limit:
            ctx.actions.append(
                Action("delete", "MPIJob", name, uid=meta.get("uid"), step=stage, foreground=True)
            )
            entry["state"] = "Pending"
            ctx.steps[stage] = StepCondition(
                "False",
                "Retrying",
                f"attempt {attempt} failed ({reason}); retry "
                f"{failures} of {limit} resumes from the latest checkpoint",
            )
        else:
            if recorded:  # this very failure is in the status already: no pod read (pods_needed)
                text = recorded
            else:
                text = f"{title} failed after {failures} attempt{'s' if failures > 1 else ''}: {reason}"
            entry.update(
                state="Failed", completionTime=job_status.get("completionTime") or timestamp(ctx.now)
            )
            ctx.steps[stage] = StepCondition("False", "Failed", text)
            ctx.failure = ctx.failure or text
            _expire(ctx, "MPIJob", job, entry["completionTime"], stage)
        return
    entry["retries"] = max(entry["retries"], attempt - 1)
    ctx.running.append(stage)
    patch = suspend_patch("MPIJob", job, ctx.suspend)
    if patch:
        ctx.actions.append(Action("patch", "MPIJob", name, patch, step=stage))
        state, detail = ("Suspended", "suspended") if ctx.suspend else ("Pending", MPIJOB_PENDING)
    entry["state"] = "Running" if state == "Running" else "Pending"
    why = ctx.blocked.get(stage) if state == "Pending" else None
    if why is not None:
        ctx.steps[stage] = StepCondition(
            "False", why.reason, f"MPIJob {name} (attempt {attempt}): {why.message}"
        )
    else:
        ctx.steps[stage] = StepCondition(
            "False", _reason(state), f"MPIJob {name} (attempt {attempt}): {detail}"
        )


def _stop_others(ctx: _Ctx, entries: dict[str, dict[str, Any]]) -> None:
    """The run failed for good: nothing new starts, and every stage still running is stopped (its
    MPIJob deleted, so it stops holding devices). A stage that never started stays Pending."""
    planned = {(a.kind, a.name) for a in ctx.actions if a.verb == "delete"}
    starting = {names.job_name(ctx.admitted.name, s) for s in ctx.admitted.steps}
    ctx.actions = [a for a in ctx.actions if not (a.verb == "create" and a.name in starting)]
    for stage in ctx.admitted.stages:
        entry = entries[stage]
        if stage in ctx.refused:
            entry["state"] = "Failed"
            continue
        if entry["state"] not in ("Pending", "Running") or not entry.get("jobName"):
            continue
        job = ctx.job("MPIJob", stage)
        if job is not None and owned_by(job, ctx.uid) and ("MPIJob", job["metadata"]["name"]) not in planned:
            ctx.actions.append(
                Action(
                    "delete", "MPIJob", job["metadata"]["name"], uid=job["metadata"].get("uid"), step=stage
                )
            )
        entry.update(state="Stopped", completionTime=entry.get("completionTime") or timestamp(ctx.now))
        ctx.steps[stage] = StepCondition(
            "False", "Stopped", f"{graph.title(stage)} was stopped: the run failed ({ctx.failure})"
        )
    ctx.running = []


def _current_steps(ctx: _Ctx, entries: dict[str, dict[str, Any]]) -> str | None:
    """``status.stage``: the steps running now, or else the last one that ran."""
    if ctx.running:
        return ",".join(ctx.running)
    started = [
        s for s in ctx.admitted.stages if entries[s].get("jobName") or entries[s]["state"] != "Pending"
    ]
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


def decide(
    body: dict[str, Any],
    admission: Admitted | AdmissionError,
    config: OperatorConfig,
    objects: dict[Key, dict[str, Any]],
    pods: dict[str, dict[str, Any]],
    now: datetime,
    failures: dict[str, Refusal] | None = None,
    blocked: dict[str, Blocked] | None = None,
) -> Decision:
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
    stages = admission.stages
    entries = {stage: stage_entry(old, stage) for stage in stages}
    for wave in graph.waves(stages):
        for stage in wave:
            succeeded = [s for s, e in entries.items() if e["state"] == "Succeeded"]
            ready = prepared and graph.ready(stage, succeeded, stages)
            waiting_for = (
                "the prepare Job" if not graph.needs(stage, stages) else graph.waiting_for(stage, stages)
            )
            _stage(ctx, stage, entries[stage], ready, waiting_for, conflicts)

    _report_refusals(ctx, failures or {})
    if ctx.failure:
        _stop_others(ctx, entries)
    status = run_status(
        old,
        steps=ctx.steps,
        entries=entries,
        succeeded=all(e["state"] == "Succeeded" for e in entries.values()),
        failure=ctx.failure,
        suspended=ctx.suspend,
        started=ctx.started,
        current=_current_steps(ctx, entries),
        generation=generation,
        now=now,
    )
    return Decision(
        status,
        ctx.actions,
        condition_events(old.get("conditions") or [], status["conditions"]),
        requeue_after=min(ctx.expiring) if ctx.expiring else None,
    )
