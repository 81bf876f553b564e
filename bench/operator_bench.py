"""The operator's reaction times and memory, with 1, 100 and 1000 live runs, against kmock.

The API server is the test suite's realistic kmock emulator (``tests/operator/kube_emulator.py``,
imported, not copied), in this process; the operator is the real one, ``rlhf-operator run``, in a
process of its own that logs in with a kubeconfig pointing at the emulator, so its resident memory
is its own (psutil). This process also plays the Job controller and the MPI operator: it writes
their status changes through the API, as they would.

Every object version the emulator stores is timestamped (``time.perf_counter`` when it is
recorded, i.e. when watchers can see it), so each latency is between two versions of objects:

* ``create_to_prepare``: RLHFRun created -> its first child, the prepare Job, exists;
* ``prepare_to_mpijobs``: prepare Job ``Complete`` -> both stage MPIJobs (sft, reward) exist;
* ``create_to_mpijobs``: RLHFRun created -> its MPIJobs exist, the prepare Job being completed by
  this process as soon as it appears (so it includes one watch round trip of the "Job controller");
* ``condition_to_status``: an MPIJob's ``Running`` condition written -> the run's status shows
  the stage ``Running``.

A level of N live runs: N-1 background runs are created and driven to a steady state (prepare
done, both MPIJobs Running), then ``probes`` runs are measured one at a time, each deleted after
its measurement, so N runs live while it is measured. The operator's resync timer runs with its
default period (60 s), so probes that meet a resync of every run see its cost.

``python -m bench.operator_bench --levels 1,100,1000 --probes 40`` prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

import kmock  # noqa: E402
import yaml  # noqa: E402
from harness import NS, Cluster, config_data, free_port, manifest  # noqa: E402
from kube_emulator import RealisticKubernetes  # noqa: E402
from rlhf_operator import kube  # noqa: E402

STAGE_JOBS = ("sft", "reward")


@attrs.define(kw_only=True)
class TimedKubernetes(RealisticKubernetes):
    """The realistic emulator, also noting when each version was recorded and telling listeners."""

    times: dict[int, float] = attrs.field(factory=dict, init=False)
    listeners: list[asyncio.Queue] = attrs.field(factory=list, init=False)

    async def __call__(self, raw_request: Any) -> Any:
        # kmock keeps every request for assertions and, to route each new one, scans all of them
        # (RawHandler._handle: ``request in payload._source`` per reaction): O(requests so far) per
        # request, minutes per request at 1000 runs. The benchmark asserts nothing on requests:
        # it forgets them, so that the emulator's cost per request stays flat.
        self._requests.clear()
        return await super().__call__(raw_request)

    async def _record(self, res: Any, key: Any, type_: str, obj: dict[str, Any]) -> None:
        await super()._record(res, key, type_, obj)
        now = time.perf_counter()
        self.times[self._rv] = now
        for queue in self.listeners:
            queue.put_nowait((self._rv, now, getattr(res, "plural", str(res)), key[2], type_))

    def versions(self, resource: str, name: str) -> list[tuple[float, dict[str, Any] | None]]:
        """(time recorded, body or None for a deletion) of every version of ``name``."""
        key = (kmock.resource(resource), NS, name)
        if key not in self.objects:
            return []
        entry = self.objects[key]
        out = []
        for version in entry.history:
            if version is None:
                out.append((float("nan"), None))
            else:
                out.append(
                    (self.times.get(int(version["metadata"]["resourceVersion"]), float("nan")), version)
                )
        return out


RUNS_RES, JOBS_RES, MPI_RES = "rlhf.dev/v1alpha1/rlhfruns", "batch/v1/jobs", "kubeflow.org/v2beta1/mpijobs"


def _first(versions, check) -> float | None:
    for t, body in versions:
        if body is not None and check(body):
            return t
    return None


def _stage(body: dict[str, Any], stage: str) -> dict[str, Any]:
    for entry in (body.get("status") or {}).get("stages") or []:
        if entry.get("name") == stage:
            return entry
    return {}


def _stage_state(body: dict[str, Any], stage: str) -> str | None:
    return _stage(body, stage).get("state")


class Driver:
    """Plays the Job controller and the MPI operator for background runs: prepare Jobs complete as
    soon as they appear, stage MPIJobs start running as soon as they appear."""

    def __init__(self, cluster: Cluster, emulator: TimedKubernetes):
        self.cluster, self.emulator = cluster, emulator
        self.queue: asyncio.Queue = asyncio.Queue()
        emulator.listeners.append(self.queue)
        self.background: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.running: set[str] = set()  # "run/stage" MPIJobs set Running

    async def serve(self) -> None:
        while True:
            _, _, res, name, type_ = await self.queue.get()
            if type_ != "ADDED":
                continue
            run = name.rsplit("-", 1)[0]
            if run not in self.background:
                continue
            if res == "jobs" and name.endswith("-prepare"):
                self._spawn(
                    self.cluster.set_job_conditions(
                        kube.JOBS, name, "Complete", status_extra={"succeeded": 1}
                    )
                )
            elif res == "mpijobs" and name.rsplit("-", 1)[1] in STAGE_JOBS:
                self._spawn(self._start(name))

    async def _start(self, name: str) -> None:
        await self.cluster.set_job_conditions(
            kube.MPIJOBS, name, "Created", "Running", status_extra={"startTime": "2026-01-01T00:00:00Z"}
        )
        self.running.add(name)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _wait(check, timeout: float, what: str, interval: float = 0.005):
    deadline = time.perf_counter() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def _quiet(emulator: TimedKubernetes, seconds: float, timeout: float) -> None:
    """Wait until the emulator recorded nothing for ``seconds``."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        last = emulator.times.get(emulator._rv, 0.0)
        idle = time.perf_counter() - last
        if idle >= seconds:
            return
        await asyncio.sleep(seconds - idle)


async def _idle(process, timeout: float, window: float = 0.5, busy: float = 0.05) -> None:
    """Wait until ``process`` used less than ``busy`` of a core over ``window`` seconds (its
    backlog of events is worked off: reconciles that only read write nothing to watch for)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        before = sum(process.cpu_times()[:2])
        await asyncio.sleep(window)
        if sum(process.cpu_times()[:2]) - before < busy * window:
            return


async def load_background(
    cluster: Cluster,
    emulator: TimedKubernetes,
    driver: Driver,
    process,
    count: int,
    start: int,
    concurrency: int = 16,
    timeout: float = 900,
) -> float:
    """Create ``count`` background runs and wait until every one runs both stages; returns seconds."""
    t0 = time.perf_counter()
    names = [f"bg{i:04d}" for i in range(start, start + count)]
    driver.background.update(names)
    semaphore = asyncio.Semaphore(concurrency)

    async def create(name: str) -> None:
        async with semaphore:
            await cluster.create_run(manifest(name))

    await asyncio.gather(*(create(n) for n in names))
    want = {f"{n}-{s}" for n in names for s in STAGE_JOBS}
    await _wait(lambda: want <= driver.running, timeout, f"{count} background runs to run", interval=0.2)

    def steady() -> bool:
        for n in names[-20:]:  # the last created are the last to settle
            body = emulator.versions(RUNS_RES, n)[-1][1] or {}
            if any(_stage_state(body, s) != "Running" for s in STAGE_JOBS):
                return False
        return True

    await _wait(steady, timeout, "background runs' status to show Running", interval=0.2)
    await _quiet(emulator, 1.0, timeout)
    await _idle(process, timeout)
    return time.perf_counter() - t0


async def probe(
    cluster: Cluster, emulator: TimedKubernetes, name: str, timeout: float = 120
) -> dict[str, float]:
    """Measure one run through creation, prepare, MPIJobs and a condition change; then delete it."""
    await cluster.create_run(manifest(name))
    prepare = f"{name}-prepare"
    await _wait(lambda: emulator.versions(JOBS_RES, prepare), timeout, f"{prepare}")
    await cluster.set_job_conditions(kube.JOBS, prepare, "Complete", status_extra={"succeeded": 1})
    jobs = [f"{name}-{s}" for s in STAGE_JOBS]
    await _wait(lambda: all(emulator.versions(MPI_RES, j) for j in jobs), timeout, f"{name}'s MPIJobs")

    # Let the reconciles that the MPIJobs' creation caused finish, so that the condition change
    # below is observed on its own (no reconcile already in flight picks it up by chance).
    def listed() -> bool:
        sft = _stage(emulator.versions(RUNS_RES, name)[-1][1] or {}, "sft")
        return sft.get("state") == "Pending" and bool(sft.get("jobName"))

    await _wait(listed, timeout, f"{name}'s status to list its jobs")
    await _quiet(emulator, 0.2, timeout)
    await cluster.set_job_conditions(
        kube.MPIJOBS, jobs[0], "Created", "Running", status_extra={"startTime": "2026-01-01T00:00:00Z"}
    )

    def reflected() -> bool:
        return _stage_state(emulator.versions(RUNS_RES, name)[-1][1] or {}, "sft") == "Running"

    await _wait(reflected, timeout, f"{name}'s status to show sft Running")
    run_v = emulator.versions(RUNS_RES, name)
    created = run_v[0][0]
    prep_v = emulator.versions(JOBS_RES, prepare)
    prep_added = prep_v[0][0]
    prep_done = _first(
        prep_v,
        lambda b: any(c["type"] == "Complete" for c in (b.get("status") or {}).get("conditions") or []),
    )
    mpi_added = max(emulator.versions(MPI_RES, j)[0][0] for j in jobs)
    cond = _first(
        emulator.versions(MPI_RES, jobs[0]),
        lambda b: any(c["type"] == "Running" for c in (b.get("status") or {}).get("conditions") or []),
    )
    shown = _first(run_v, lambda b: _stage_state(b, "sft") == "Running")
    await cluster.api.delete(kube.RUNS, NS, name)
    await _wait(
        lambda: not emulator.versions(MPI_RES, jobs[0]) or emulator.versions(MPI_RES, jobs[0])[-1][1] is None,
        timeout,
        f"{name}'s children deleted",
    )
    return {
        "at": created,
        "create_to_prepare": prep_added - created,
        "prepare_to_mpijobs": mpi_added - prep_done,
        "create_to_mpijobs": mpi_added - created,
        "condition_to_status": shown - cond,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 (nearest rank) and max of ``values``, in seconds."""
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {
        "p50": rank(50),
        "p99": rank(99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "n": len(ordered),
    }


@contextlib.asynccontextmanager
async def operator_process(
    url: str, workdir: Path, extra_env: dict[str, str] | None = None, wrap: str | None = None
) -> AsyncIterator[Any]:
    """``rlhf-operator run`` against ``url`` (kubeconfig + config file); yields its psutil.Process.

    ``wrap`` replaces ``python`` in ``python -m rlhf_operator.cli run ...`` (``{python}`` in it is
    this interpreter), e.g. ``{python} -m memray run --native -o ops.bin``; the wrapper must run
    the module in the same process (its RSS is the one measured)."""
    import aiohttp
    import psutil

    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emu",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "bench"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}],
            }
        )
    )
    config = workdir / "operator.yaml"
    config.write_text(yaml.safe_dump(config_data(namespaces=[NS])))  # the pool the runs name
    live = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    log = (workdir / "operator.log").open("wb")
    python = shlex.split(wrap.replace("{python}", sys.executable)) if wrap else [sys.executable]
    proc = await asyncio.create_subprocess_exec(
        *python,
        "-m",
        "rlhf_operator.cli",
        "run",
        "--config",
        str(config),
        "--liveness",
        f"http://127.0.0.1:{live}/healthz",
        "--metrics-port",
        "0",
        env=env,
        stdout=log,
        stderr=log,
        cwd=str(workdir),
    )
    try:

        async def healthy() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{live}/healthz") as rsp,
                ):
                    return rsp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        deadline = time.perf_counter() + 60
        while not await healthy():
            if proc.returncode is not None or time.perf_counter() > deadline:
                raise RuntimeError(
                    f"the operator did not start; log: {(workdir / 'operator.log').read_text()[-2000:]}"
                )
            await asyncio.sleep(0.1)
        yield psutil.Process(proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
        log.close()


def _rss_mib(process) -> float:
    return process.memory_info().rss / 2**20


async def bench(
    levels: list[int],
    probes: int,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    concurrency: int = 16,
    wrap: str | None = None,
) -> dict[str, Any]:
    """Every level in increasing order on one operator (background runs accumulate)."""
    out: dict[str, Any] = {
        "levels": {},
        "probes": probes,
        "operator_env": extra_env or {},
        "concurrency": concurrency,
    }
    if wrap:
        out["operator_wrap"] = wrap
    async with TimedKubernetes() as emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        cluster = Cluster(emulator, url)
        driver = Driver(cluster, emulator)
        serving = asyncio.get_running_loop().create_task(driver.serve())
        try:
            async with operator_process(url, workdir, extra_env, wrap) as proc:
                await asyncio.sleep(1.0)
                out["rss_mib_idle"] = _rss_mib(proc)
                live = 0
                for level in sorted(levels):
                    load_seconds = (
                        await load_background(
                            cluster, emulator, driver, proc, level - 1 - live, live, concurrency
                        )
                        if level - 1 > live
                        else 0.0
                    )
                    live = max(live, level - 1)
                    samples = [await probe(cluster, emulator, f"probe{level}-{i:03d}") for i in range(probes)]
                    row: dict[str, Any] = {
                        key: percentiles([s[key] for s in samples]) for key in samples[0] if key != "at"
                    }
                    row["samples"] = samples
                    row.update(
                        live_runs=live + 1,
                        load_seconds=load_seconds,
                        rss_mib=_rss_mib(proc),
                        cpu_seconds=sum(proc.cpu_times()[:2]),
                    )
                    out["levels"][str(level)] = row
                out["rss_mib_peak"] = max(r["rss_mib"] for r in out["levels"].values())
                out["emulator_objects"] = len(emulator.objects)
        finally:
            serving.cancel()
            await cluster.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,100,1000", help="live runs, comma-separated")
    parser.add_argument("--probes", type=int, default=40, help="measured runs per level")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the operator process (an experiment, e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="background runs created at once")
    parser.add_argument(
        "--wrap",
        metavar="COMMAND",
        help="run the operator as COMMAND -m rlhf_operator.cli run ... ({python}: this "
        "interpreter), e.g. '{python} -m memray run --native -o /tmp/op.bin'",
    )
    parser.add_argument(
        "--workdir", help="where the kubeconfig and the operator's log go (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        extra_env = dict(item.split("=", 1) for item in args.env)
        result = asyncio.run(bench(levels, args.probes, workdir, extra_env, args.concurrency, args.wrap))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
