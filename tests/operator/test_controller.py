"""The controller without Kopf: one reconcile end to end against the emulated API server."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from harness import NS, cluster, manifest, operator_config
from rlhf_operator import kube, names
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.kube import Connection, Kube

from rlhf.api import MAX_NAME_LENGTH, graph


@contextlib.asynccontextmanager
async def bare_controller(config: OperatorConfig | None = None):
    """The emulated cluster without Kopf, and a controller talking to it: (cluster, controller)."""
    async with cluster(start=False) as (c, _):
        controller = Controller(Kube(Connection(server=c.url)), config or operator_config())
        try:
            yield c, controller
        finally:
            await controller.close()


def status_writes(c) -> int:
    return sum(1 for r in c.emulator if r.method == "PATCH" and str(r.url.path).endswith("/status"))


@pytest.mark.asyncio
async def test_resync_reconciles_every_run_and_writes_status_only_on_change():
    async with bare_controller() as (c, controller):
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


def pod_lists(c) -> int:
    """LISTs of finished steps' pods (by job-name or launcher selector), not the diagnosis of
    pending steps (by run and stage labels)."""
    return sum(
        1
        for r in c.emulator
        if r.method == "GET"
        and str(r.url.path) == f"/api/v1/namespaces/{NS}/pods"
        and "rlhf.dev/run" not in (r.params.get("labelSelector") or "")
    )


@pytest.mark.asyncio
async def test_finished_steps_pods_are_read_once_then_the_status_is_the_memory():
    async with bare_controller() as (c, controller):
        await c.create_run(manifest("one"))
        await c.create_run(manifest("two"))
        await controller.resync([NS])
        await c.finish_prepare("one")
        await c.set_job_conditions(kube.JOBS, "two-prepare", "Failed", message="pod failed")
        await c.add_pod(
            "two-prepare-x",
            {"job-name": "two-prepare"},
            "prepare",
            {"status": "failed", "reason": "no space left on device"},
            1,
        )
        await controller.resync([NS])
        assert await c.mpijob("one-sft") and await c.mpijob("one-reward")
        assert pod_lists(c) == 1  # the failed prepare Job's pod; a succeeded one says nothing new
        failed = await c.condition("two", "Prepared")
        assert "no space left on device" in failed["message"]
        for stage in ("sft", "reward"):
            await c.finish_stage("one", stage, metrics={"eval/x": 1.0})
        await controller.resync([NS])
        assert pod_lists(c) == 3  # the two launchers
        await controller.resync([NS])
        assert await c.mpijob("one-ppo")
        await c.finish_stage("one", "ppo", metrics={"eval/reward": 2.0})
        await controller.resync([NS])
        assert pod_lists(c) == 4
        writes = status_writes(c)
        for _ in range(3):
            await controller.resync([NS])
        assert pod_lists(c) == 4 and status_writes(c) == writes  # recorded: no reads, no writes
        body = await c.run("one")
        assert body["status"]["phase"] == "Succeeded"
        assert [s["metrics"] for s in body["status"]["stages"]] == [{"eval/x": 1.0}] * 2 + [
            {"eval/reward": 2.0}
        ]
        assert await c.condition("two", "Prepared") == failed


def run_gets(c, name: str = "one") -> list:
    path = f"/apis/rlhf.dev/v1alpha1/namespaces/{NS}/rlhfruns/{name}"
    return [r for r in c.emulator if r.method == "GET" and str(r.url.path) == path]


@pytest.mark.asyncio
async def test_events_arriving_while_a_reconcile_is_queued_are_coalesced_and_our_own_write_skipped():
    async with bare_controller() as (c, controller):
        await c.create_run(manifest("one"))
        await asyncio.gather(*(controller.request(NS, "one") for _ in range(5)))
        assert len(run_gets(c)) == 2  # the one running, and one queued behind it for the rest
        assert await c.job("one-prepare")
        await controller.request(NS, "one")  # nothing queued any more: it runs
        assert len(run_gets(c)) == 3
        # the event of our own last status write needs no reconcile; any other version does
        version = (await c.run("one"))["metadata"]["resourceVersion"]
        gets = len(run_gets(c))
        await controller.request(NS, "one", run_version=version)
        assert len(run_gets(c)) == gets
        await controller.request(NS, "one", run_version=str(int(version) - 1))
        assert len(run_gets(c)) == gets + 1


@pytest.mark.asyncio
async def test_event_driven_reconciles_in_flight_are_bounded():
    async with bare_controller(operator_config(maxConcurrentReconciles=2)) as (c, controller):
        inner, now, most = controller._reconcile, 0, 0

        async def counted(namespace: str, name: str):
            nonlocal now, most
            now += 1
            most = max(most, now)
            try:
                return await inner(namespace, name)
            finally:
                now -= 1

        controller._reconcile = counted
        runs = [f"r{i}" for i in range(6)]
        for run in runs:
            await c.create_run(manifest(run))
        await asyncio.gather(*(controller.request(NS, run) for run in runs))
        assert most == 2
        assert all([await c.job(f"{run}-prepare") for run in runs])


def test_child_names_fit_kubernetes_limits():
    run = "r" * MAX_NAME_LENGTH
    for step in names.steps(graph.DEFAULT_PIPELINE):
        for name in (
            names.job_name(run, step),
            names.config_map_name(run, step),
            names.job_name(run, step) + "-launcher",
            names.job_name(run, step) + "-worker-9999",
        ):
            assert len(name) <= 63, name
