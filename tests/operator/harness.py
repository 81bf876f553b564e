"""Test harness: the emulated API server, the real operator in its own thread, and the test
playing the MPI operator / Job controller / kubelet through the API.

No sleeps as synchronisation: :func:`eventually` polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml
from kube_emulator import RealisticKubernetes
from rlhf_operator import kube
from rlhf_operator.config import OperatorConfig, parse_config
from rlhf_operator.kube import Connection, Kube
from rlhf_operator.main import operator
from rlhf_operator.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
NS = "team-a"
T = TypeVar("T")
#: The platform team's pool that examples/multi-tenant-kueue.yaml (the runs of these tests) names.
TEAM_POOL = {
    "name": "team-a-gpus",
    "accelerator": "nvidia",
    "devicesPerNode": 8,
    "namespaces": [NS],
    "nodeSelector": {"node.kubernetes.io/pool": "team-a-gpu"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"},
    ],
    "allowedPriorityClasses": ["ml-batch-low"],
}


def config_data(**settings: Any) -> dict[str, Any]:
    """The operator configuration of these tests (as its YAML file holds it): the team's pool
    first, then the default pools; ``settings`` are camelCase top-level keys (resyncSeconds=30)."""
    defaults = OperatorConfig().model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"pools": [TEAM_POOL, *defaults["pools"]], **settings}


def operator_config(**settings: Any) -> OperatorConfig:
    """:func:`config_data` loaded by the operator's own loader."""
    return parse_config(config_data(**settings))


def manifest(name: str = "demo", **spec_changes: Any) -> dict[str, Any]:
    """A small valid NVIDIA run in namespace team-a; keyword args replace spec keys."""
    data = yaml.safe_load((ROOT / "examples" / "multi-tenant-kueue.yaml").read_text())
    data["metadata"] = {"name": name, "namespace": NS}
    data["spec"].update(spec_changes)
    return data


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` (generous:
    a loaded CI machine starts Kopf slowly, and a passing check returns at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(0.05)


class OperatorThread:
    """The real operator (Kopf + our handlers) in its own thread and event loop."""

    def __init__(self, url: str, config: OperatorConfig, liveness: str | None = None):
        self.url, self.config, self.liveness = url, config, liveness
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _main(self) -> None:
        def tune(settings: Any) -> None:
            settings.watching.reconnect_backoff = 0.05
            settings.networking.request_timeout = 10

        try:
            asyncio.run(
                operator(
                    self.config,
                    Connection(server=self.url),
                    metrics=self.metrics,
                    liveness=self.liveness,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    tune=tune,
                )
            )
        except BaseException as e:  # surfaced by stop()
            self.error = e

    async def start(self) -> OperatorThread:
        self._thread = threading.Thread(target=self._main, name="rlhf-operator", daemon=True)
        self._thread.start()
        ready = await asyncio.to_thread(self._ready.wait, 20)
        assert ready, f"the operator did not start: {self.error!r}"
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 20)
            assert not self._thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise self.error


class Cluster:
    """The test's own view of the API server (through the operator's own client module)."""

    def __init__(self, emulator: RealisticKubernetes, url: str):
        self.emulator, self.url = emulator, url
        self.api = Kube(Connection(server=url))

    async def close(self) -> None:
        await self.api.close()

    @staticmethod
    def api_resource(kind: str) -> kube.Resource:
        return kube.BY_KIND[kind]

    # -- reading -------------------------------------------------------------------------------

    async def run(self, name: str = "demo") -> dict[str, Any]:
        return await self.api.get(kube.RUNS, NS, name) or {}

    async def mpijob(self, name: str) -> dict[str, Any] | None:
        return await self.api.get(kube.MPIJOBS, NS, name)

    async def mpijobs(self) -> list[dict[str, Any]]:
        return await self.api.list(kube.MPIJOBS, NS)

    async def job(self, name: str) -> dict[str, Any] | None:
        return await self.api.get(kube.JOBS, NS, name)

    async def condition(self, run: str, type_: str) -> dict[str, Any]:
        body = await self.run(run)
        return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})

    async def events(self, run: str) -> list[dict[str, Any]]:
        return [e for e in await self.api.list(kube.EVENTS, NS) if e["involvedObject"]["name"] == run]

    def creations(self, resource: str, name: str) -> int:
        """How many times ``name`` was created (versions whose predecessor was a deletion)."""
        key = (kmock.resource(resource), NS, name)
        if key not in self.emulator.objects:
            return 0
        history = list(self.emulator.objects[key].history)
        return sum(1 for i, v in enumerate(history) if v is not None and (i == 0 or history[i - 1] is None))

    # -- writing, as the user ------------------------------------------------------------------

    async def create_run(self, data: dict[str, Any]) -> dict[str, Any]:
        created, ok = await self.api.create(kube.RUNS, NS, copy.deepcopy(data))
        assert ok and created
        return created

    async def patch_run(self, name: str, patch: dict[str, Any]) -> None:
        assert await self.api.patch(kube.RUNS, NS, name, patch) is not None

    # -- writing, as the MPI operator, the Job controller and the kubelet ----------------------

    async def set_job_conditions(
        self,
        resource: kube.Resource,
        name: str,
        *types: str,
        status_extra: dict[str, Any] | None = None,
        message: str = "",
    ) -> None:
        conditions = [
            {
                "type": t,
                "status": "True",
                "reason": t,
                "message": message or t,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
            for t in types
        ]
        status: dict[str, Any] = {"conditions": conditions, **(status_extra or {})}
        assert await self.api.patch(resource, NS, name, {"status": status}, subresource="status") is not None

    async def add_pod(
        self, name: str, labels: dict[str, str], container: str, message: dict[str, Any], exit_code: int
    ) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": container, "image": "x"}]},
        }
        await self.api.create(kube.PODS, NS, pod)
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": json.dumps(message),
        }
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container, "state": {"terminated": terminated}}],
        }
        assert await self.api.patch(kube.PODS, NS, name, {"status": status}, subresource="status")

    async def finish_prepare(self, run: str = "demo") -> None:
        await eventually(lambda: self.job(f"{run}-prepare"), what="the prepare Job")
        await self.set_job_conditions(kube.JOBS, f"{run}-prepare", "Complete", status_extra={"succeeded": 1})

    async def run_stage(self, run: str, stage: str) -> None:
        await self.set_job_conditions(
            kube.MPIJOBS,
            f"{run}-{stage}",
            "Created",
            "Running",
            status_extra={"startTime": "2026-01-01T00:00:00Z"},
        )

    async def finish_stage(
        self,
        run: str,
        stage: str,
        ok: bool = True,
        attempt: int = 1,
        metrics: dict[str, float] | None = None,
        reason: str = "",
    ) -> None:
        job = f"{run}-{stage}"
        labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/job-role": "launcher"}
        if ok:
            message: dict[str, Any] = {
                "stage": stage,
                "status": "completed",
                "global_step": 10,
                "metrics": metrics or {},
                "model_dir": f"/mnt/rlhf/{stage}/model",
            }
        else:
            message = {"status": "failed", "reason": reason or "exit code 1", "log_tail": ["boom"]}
        await self.add_pod(f"{job}-launcher-a{attempt}", labels, "launcher", message, 0 if ok else 1)
        await self.set_job_conditions(
            kube.MPIJOBS,
            job,
            "Created",
            "Running",
            "Succeeded" if ok else "Failed",
            status_extra={"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T01:00:00Z"},
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def cluster(
    config: OperatorConfig | None = None, start: bool = True, liveness: str | None = None
) -> AsyncIterator[tuple[Cluster, OperatorThread | None]]:
    """An emulated cluster and (unless ``start`` is False) a running operator."""
    config = config or operator_config(resyncSeconds=30)
    async with RealisticKubernetes() as emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        c = Cluster(emulator, url)
        op = await OperatorThread(url, config, liveness).start() if start else None
        try:
            yield c, op
        finally:
            if op is not None:
                await op.stop()
            await c.close()
