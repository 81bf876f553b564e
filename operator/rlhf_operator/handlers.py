"""Kopf registration, and nothing else: every handler hands the run to the controller.

* events of RLHFRuns (create, resume at start-up, update, our own status writes) -> reconcile;
* events of our MPIJobs and prepare Jobs (selected by label on the server side, like
  dask-kubernetes' DaskJob watches its runner pods) -> reconcile the run named in their
  ``rlhf.dev/run`` label;
* a slow resync loop (not a Kopf timer: timers put a finalizer on every run, which would block
  ``kubectl delete`` while the operator is down).

No finalizers: deleting a run deletes its children through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from rlhf_operator import names
from rlhf_operator.controller import Controller
from rlhf_operator.kube import Connection

logger = logging.getLogger("rlhf_operator")
CHILD_RESOURCES = (("kubeflow.org", "v2beta1", "mpijobs"), ("batch", "v1", "jobs"))


def build_registry(
    controller: Controller,
    connection: Connection,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> kopf.OperatorRegistry:
    """A Kopf registry (a new one, or ``registry``) with the operator's handlers bound to
    ``controller``. ``tune`` may adjust Kopf's settings (the tests shorten timeouts)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    state: dict[str, Any] = {}

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # we post our own Events, on transitions only
        if controller.config.namespaces:
            # A namespaced install (Roles only) may neither list namespaces nor watch CRDs, both
            # cluster-scoped: take the configured names as they are, scan resources once.
            settings.scanning.disabled = True
        for group, version, plural in CHILD_RESOURCES:
            settings.watching.label_selectors[group, version, plural] = names.selector()
        if tune is not None:
            tune(settings)
        state["resync"] = asyncio.create_task(
            controller.resync_forever(controller.config.namespaces, controller.config.resync_seconds)
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        task = state.pop("resync", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await controller.close()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        return connection.kopf_info()

    # Kopf types `namespace` as str | None (for cluster-scoped objects); RLHFRuns are namespaced.
    @kopf.on.event("rlhf.dev", "v1alpha1", "rlhfruns", registry=registry)  # type: ignore[arg-type]
    async def run_event(type: str | None, namespace: str, name: str, meta: kopf.Meta, **_: Any) -> None:
        if type == "DELETED":
            controller.forget(namespace, name)
            return
        await controller.request(namespace, name, run_version=meta.get("resourceVersion"))

    def child_handler(group: str, version: str, plural: str) -> None:
        # Kopf types `namespace` as str | None (for cluster-scoped objects); our children are namespaced.
        @kopf.on.event(  # type: ignore[arg-type]
            group,
            version,
            plural,
            registry=registry,
            labels={names.MANAGED_BY: names.OPERATOR_NAME, names.RUN_LABEL: kopf.PRESENT},
        )
        async def child_event(labels: kopf.Labels, namespace: str, **_: Any) -> None:
            await controller.request(namespace, labels[names.RUN_LABEL])

    for group, version, plural in CHILD_RESOURCES:
        child_handler(group, version, plural)

    @kopf.on.probe(id="runs", registry=registry)
    def probe(**_: Any) -> int:
        return controller.metrics.known_runs

    return registry
