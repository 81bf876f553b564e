"""The controller without Kopf: one reconcile end to end against the emulated API server."""

from __future__ import annotations

import pytest
from harness import NS, cluster, manifest
from rlhf_operator import names
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.kube import Connection, Kube

from rlhf.spec import MAX_NAME_LENGTH


def status_writes(c) -> int:
    return sum(1 for r in c.emulator if r.method == "PATCH" and str(r.url.path).endswith("/status"))


@pytest.mark.asyncio
async def test_resync_reconciles_every_run_and_writes_status_only_on_change():
    async with cluster(start=False) as (c, _):
        controller = Controller(Kube(Connection(server=c.url)), OperatorConfig())
        try:
            await c.create_run(manifest("one"))
            await c.create_run(manifest("two"))
            await controller.resync([])  # cluster-wide
            assert await c.job("one-prepare") and await c.job("two-prepare")
            assert status_writes(c) == 2
            await controller.resync([NS])
            assert status_writes(c) == 2  # nothing changed: nothing written
            assert controller.metrics.known_runs == 2
            assert 'rlhf_operator_actions_total{kind="MPIJob",verb="create"}' not in controller.metrics.text()
            assert await controller.reconcile(NS, "absent") is None
        finally:
            await controller.kube.close()


def test_child_names_fit_kubernetes_limits():
    run = "r" * MAX_NAME_LENGTH
    for step in names.STEPS:
        for name in (names.job_name(run, step), names.config_map_name(run, step),
                     names.job_name(run, step) + "-launcher", names.job_name(run, step) + "-worker-9999"):
            assert len(name) <= 63, name
