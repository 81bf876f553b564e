"""One reconcile of a run, end to end: observe -> decide -> write status -> ensure -> tell.

The only impure part of the reconcile layer: it reads the run and its children through
:mod:`rlhf_operator.kube`, asks :func:`rlhf_operator.reconcile.decide`, writes the status once if
it changed (before acting, so a retry is counted even if the operator stops right after), applies
the actions (409 on create and 404 on delete are normal) and posts the Events. Reconciles of one
run are serialised by a lock; different runs proceed concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from rlhf.api.conditions import timestamp
from rlhf_operator import kube, names
from rlhf_operator.admission import AdmissionError, admit
from rlhf_operator.config import OperatorConfig
from rlhf_operator.metrics import Metrics
from rlhf_operator.observe import Blocked, Key, diagnose, diagnostics_needed, merge_patch, pods_needed
from rlhf_operator.reconcile import Action, Decision, Refusal, decide

logger = logging.getLogger("rlhf_operator")
#: How soon a change the API server refused for a reason that may pass is tried again.
RETRY_REFUSED_SECONDS = 10.0


def _latest(pods: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest pod (creation time, then resourceVersion for pods created the same second)."""

    def key(pod: dict[str, Any]) -> tuple[str, int]:
        meta = pod.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "0")
        return meta.get("creationTimestamp") or "", int(rv) if rv.isdigit() else 0

    pods = sorted(pods, key=key)
    return pods[-1] if pods else None


class Controller:
    """Reconciles RLHFRuns against the API server behind ``kube``."""

    def __init__(
        self,
        kube_client: kube.Kube,
        config: OperatorConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.kube = kube_client
        self.config = config
        self.metrics = metrics or Metrics()
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Per run, the token of the requested reconcile that has not started yet (see request).
        self._queued: dict[tuple[str, str], object] = {}
        #: Event-driven reconciles in flight at once: each holds the bodies it read, and Kopf's
        #: worker holds its event meanwhile; unbounded, a burst of runs is a burst of memory.
        self._slots = asyncio.Semaphore(config.max_concurrent_reconciles)
        #: Per run, the resourceVersion of our last status write (its own event needs no reconcile).
        self._written: dict[tuple[str, str], str] = {}
        #: The API's refusals of our last changes, per run and child name (see reconcile.decide).
        self._failures: dict[tuple[str, str], dict[str, Refusal]] = {}
        #: Per run, the timer of a requested later reconcile (Decision.requeue_after).
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Reconcile the run ``namespace/name``; None if it is gone or being deleted."""
        async with self._locks[(namespace, name)]:
            with self.metrics.reconcile():
                decision = await self._reconcile(namespace, name)
        return decision

    async def request(self, namespace: str, name: str, run_version: str | None = None) -> None:
        """Reconcile the run for an event, unless a reconcile of it is already queued: that one
        has not read anything yet, so it will see what this event changed (a level-based
        reconcile needs no more). At most one reconcile per run runs and one waits, however
        many events of the run and its children arrive meanwhile.

        ``run_version``: the resourceVersion of the run in the event, if it is an event of the
        run. The event of our own last status write is skipped: that version is what the
        reconcile decided on top of what it observed, and whatever changed in the world since
        has an event of its own (or is found by the resync)."""
        key = (namespace, name)
        if key in self._queued or (run_version is not None and self._written.get(key) == run_version):
            return
        token = self._queued[key] = object()
        try:
            async with self._locks[key], self._slots:
                if self._queued.get(key) is token:
                    del self._queued[key]  # started: a later event queues the next one
                with self.metrics.reconcile():
                    await self._reconcile(namespace, name)
        finally:
            if self._queued.get(key) is token:
                del self._queued[key]

    async def close(self) -> None:
        """Stop the timers and requeued reconciles, then close the API client."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.kube.close()

    def forget(self, namespace: str, name: str) -> None:
        """The run was deleted: drop what we keep about it."""
        self._locks.pop((namespace, name), None)
        self._queued.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        self._failures.pop((namespace, name), None)
        timer = self._timers.pop((namespace, name), None)
        if timer is not None:
            timer.cancel()
        self.metrics.set_phase(namespace, name, None)

    async def _reconcile(self, namespace: str, name: str) -> Decision | None:
        body = await self.kube.get(kube.RUNS, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self.metrics.set_phase(namespace, name, None)
            return None
        try:
            admission: Any = admit(body, self.config, source=f"{namespace}/{name}")
        except AdmissionError as e:
            admission = e
        objects = await self._observe(namespace, name, names.stages_of(body))
        pods = await self._finished_pods(body, objects)
        blocked = await self._diagnose(namespace, name, body, objects)
        failures = self._failures.setdefault((namespace, name), {})
        decision = decide(body, admission, self.config, objects, pods, self._clock(), dict(failures), blocked)
        if not await self._write_status(body, decision.status):
            return None
        changed = False
        for action in decision.actions:
            refusal = await self._apply(namespace, action)
            if failures.get(action.name) != refusal:
                changed = True
                if refusal is None:
                    failures.pop(action.name, None)
                else:
                    failures[action.name] = refusal
        await self._post_events(body, decision.events)
        self.metrics.set_phase(namespace, name, decision.status.get("phase"))
        if changed:
            # The API refused a change (or stopped refusing): the next reconcile reports it, now
            # rather than at the next event, from what it observes then.
            self._later(namespace, name, 0)
        elif any(not r.permanent for r in failures.values()):
            # A refusal that may pass (quota, webhook, a CRD not installed yet): try again soon,
            # whatever events come.
            self._later(namespace, name, RETRY_REFUSED_SECONDS)
        elif decision.requeue_after is not None:
            self._later(namespace, name, decision.requeue_after)
        return decision

    def _later(self, namespace: str, name: str, delay: float) -> None:
        """Request a reconcile of the run in ``delay`` seconds (one timer per run; the sooner wins)."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= loop.time() + delay:
            return
        if timer is not None:
            timer.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            task = loop.create_task(self.request(namespace, name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        self._timers[key] = loop.call_later(max(0.0, delay), fire)

    async def _observe(self, namespace: str, run: str, stages: list[str]) -> dict[Key, dict[str, Any]]:
        keys: list[Key] = [("ConfigMap", names.config_map_name(run, step)) for step in names.steps(stages)]
        keys += [("NetworkPolicy", names.network_policy_name(run, stage)) for stage in stages]
        keys.append(("Job", names.job_name(run, names.PREPARE)))
        keys += [("MPIJob", names.job_name(run, stage)) for stage in stages]
        found = await asyncio.gather(*(self.kube.get(kube.BY_KIND[kind], namespace, n) for kind, n in keys))
        return {key: obj for key, obj in zip(keys, found, strict=True) if obj is not None}

    async def _finished_pods(
        self, body: dict[str, Any], objects: dict[Key, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """The latest pod of each finished step whose result the status does not record yet
        (:func:`rlhf_operator.reconcile.pods_needed`): its termination message has the result."""
        meta = body["metadata"]
        namespace, run = meta["namespace"], meta["name"]
        wanted = {
            step: f"job-name={names.job_name(run, step)}"
            if step == names.PREPARE
            else names.launcher_selector(names.job_name(run, step))
            for step in pods_needed(body, objects)
        }
        found = await asyncio.gather(*(self.kube.list(kube.PODS, namespace, sel) for sel in wanted.values()))
        out = {}
        for step, pods in zip(wanted, found, strict=True):
            pod = _latest(pods)
            if pod is not None:
                out[step] = pod
        return out

    async def _diagnose(
        self, namespace: str, run: str, body: dict[str, Any], objects: dict[Key, dict[str, Any]]
    ) -> dict[str, Blocked]:
        """Why the pods of each created-but-not-running step do not run
        (:func:`rlhf_operator.reconcile.diagnostics_needed`): its pods and the Warning events of
        its jobs. Best effort: an API error here only leaves the message less precise."""
        out: dict[str, Blocked] = {}
        for step, involved in diagnostics_needed(body, objects).items():
            kind = "Job" if step == names.PREPARE else "MPIJob"
            job = objects[(kind, names.job_name(run, step))]
            try:
                pods = await self.kube.list(
                    kube.PODS, namespace, f"{names.RUN_LABEL}={run},{names.STAGE_LABEL}={step}"
                )
                events: list[dict[str, Any]] = []
                for obj in involved:
                    events += await self.kube.list(
                        kube.EVENTS, namespace, field_selector=f"involvedObject.name={obj},type=Warning"
                    )
            except kube.ApiError as e:
                logger.info("cannot diagnose %s of %s/%s: %s", step, namespace, run, e)
                continue
            blocked = diagnose(job, events, pods)
            if blocked is not None:
                out[step] = blocked
        return out

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch the status subresource if ``status`` differs; False if the run is gone."""
        old = body.get("status") or {}
        if old == status:
            return True
        meta = body["metadata"]
        patched = await self.kube.patch(
            kube.RUNS,
            meta["namespace"],
            meta["name"],
            {"status": merge_patch(old, status)},
            subresource="status",
        )
        if patched is None:
            return False
        version = (patched.get("metadata") or {}).get("resourceVersion")
        if version:
            self._written[(meta["namespace"], meta["name"])] = str(version)
        return True

    async def _apply(self, namespace: str, action: Action) -> Refusal | None:
        """Apply one action; the API's refusal (quota, RBAC, webhook, an invalid object), None if
        it went through."""
        resource = kube.BY_KIND[action.kind]
        try:
            if action.verb == "create":
                assert action.body is not None
                _, created = await self.kube.create(resource, namespace, action.body)
                if not created:
                    logger.info("%s %s/%s already exists", action.kind, namespace, action.name)
            elif action.verb == "patch":
                assert action.body is not None
                await self.kube.patch(resource, namespace, action.name, action.body)
            else:
                await self.kube.delete(
                    resource, namespace, action.name, uid=action.uid, foreground=action.foreground
                )
        except kube.ApiError as e:
            self.metrics.errors.inc()
            logger.warning("cannot %s %s %s/%s: %s", action.verb, action.kind, namespace, action.name, e)
            return Refusal(f"cannot {action.verb} {action.kind} {action.name}: {e}", permanent=e.permanent)
        self.metrics.actions.labels(action.verb, action.kind).inc()
        logger.info("%s %s %s/%s", action.verb, action.kind, namespace, action.name)
        return None

    async def _post_events(self, body: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
        meta = body["metadata"]
        now = timestamp(self._clock())
        for type_, reason, message in events:
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": names.RUN_API_VERSION,
                    "kind": names.RUN_KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": names.OPERATOR_NAME},
                "reportingComponent": names.OPERATOR_NAME,
            }
            try:
                await self.kube.create(kube.EVENTS, meta["namespace"], event)
            except kube.ApiError as e:  # events are best effort
                logger.warning("cannot post event %s: %s", reason, e)

    async def resync_forever(self, namespaces: list[str], interval: float) -> None:
        """The slow timer: every ``interval`` seconds, reconcile every run (all namespaces if none)."""
        while True:
            await asyncio.sleep(interval)
            await self.resync(namespaces)

    async def resync(self, namespaces: list[str]) -> None:
        scopes: list[str | None] = [*namespaces] or [None]  # None: every namespace
        for namespace in scopes:
            try:
                runs = await self.kube.list(kube.RUNS, namespace)
            except (kube.ApiError, OSError, asyncio.TimeoutError) as e:
                logger.warning("resync: cannot list runs: %s", e)
                continue
            for run in runs:
                meta = run.get("metadata") or {}
                try:
                    await self.reconcile(meta["namespace"], meta["name"])
                except Exception:
                    logger.exception("resync of %s/%s failed", meta.get("namespace"), meta.get("name"))
