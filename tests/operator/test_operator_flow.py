"""The real operator against the emulated API server: the whole life of a run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import kmock
import pytest
import yaml
from harness import NS, OperatorThread, cluster, config_data, eventually, free_port, manifest, operator_config

pytestmark = pytest.mark.asyncio


async def test_success_path_prepare_then_sft_and_reward_then_ppo():
    port = free_port()
    async with cluster(liveness=f"http://127.0.0.1:{port}/healthz") as (c, op):
        async def healthy():
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as rsp:
                    return rsp.status == 200
            except aiohttp.ClientConnectionError:
                return False
        await eventually(healthy, what="the liveness endpoint")
        await c.create_run(manifest())
        # prepare first, no stage job before it succeeded
        await c.finish_prepare()
        await eventually(lambda: c.mpijob("demo-sft"), what="the SFT MPIJob")
        await eventually(lambda: c.mpijob("demo-reward"), what="the reward MPIJob")
        assert await c.mpijob("demo-ppo") is None
        await c.run_stage("demo", "sft")
        await c.run_stage("demo", "reward")

        async def running():
            status = (await c.run()).get("status") or {}
            return status.get("phase") == "Running" and [s["state"] for s in status.get("stages", [])] == [
                "Running", "Running"]
        await eventually(running, what="SFT and reward Running")

        await c.finish_stage("demo", "sft", metrics={"eval/perplexity": 3.5})
        await c.finish_stage("demo", "reward", metrics={"eval/accuracy": 0.75})
        await eventually(lambda: c.mpijob("demo-ppo"), what="the PPO MPIJob")
        await c.finish_stage("demo", "ppo", metrics={"eval/reward": 1.25})

        async def succeeded():
            body = await c.run()
            return (body.get("status") or {}).get("phase") == "Succeeded" and body
        body = await eventually(succeeded, what="phase Succeeded")
        status = body["status"]
        stages = {s["name"]: s for s in status["stages"]}
        assert stages["sft"]["metrics"] == {"eval/perplexity": 3.5}
        assert stages["reward"]["metrics"] == {"eval/accuracy": 0.75}
        assert stages["ppo"]["metrics"] == {"eval/reward": 1.25}
        assert all(s["state"] == "Succeeded" and s["retries"] == 0 for s in stages.values())
        assert stages["ppo"]["jobName"] == "demo-ppo"
        assert status["observedGeneration"] == body["metadata"]["generation"]
        conds = {cond["type"]: cond for cond in status["conditions"]}
        assert conds["Succeeded"]["status"] == "True"
        assert conds["Failed"]["status"] == "False"
        for t in ("Prepared", "SFTSucceeded", "RewardSucceeded", "PPOSucceeded"):
            assert conds[t]["status"] == "True", conds[t]
        reasons = [e["reason"] for e in await c.events("demo")]
        assert "RunSucceeded" in reasons and "SFTSucceeded" in reasons
        for name in ("demo-sft", "demo-reward", "demo-ppo"):
            assert c.creations("kubeflow.org/v2beta1/mpijobs", name) == 1
        # the gauge is updated after the status write the test just saw: wait for it too
        async def counted():
            return 'rlhf_operator_runs{phase="Succeeded"} 1.0' in op.metrics.text()
        await eventually(counted, what="the runs gauge to count the run as Succeeded")
        assert body["metadata"]["namespace"] == NS


async def _phase(c, phase, run="demo"):
    async def check():
        body = await c.run(run)
        return (body.get("status") or {}).get("phase") == phase and body
    return await eventually(check, what=f"phase {phase}")


async def _stage_entry(c, stage, run="demo"):
    body = await c.run(run)
    return next((s for s in (body.get("status") or {}).get("stages", []) if s["name"] == stage), {})


async def test_failed_stage_is_retried_from_its_checkpoint_then_succeeds():
    async with cluster() as (c, _):
        await c.create_run(manifest())
        await c.finish_prepare()
        first = await eventually(lambda: c.mpijob("demo-sft"), what="SFT attempt 1")
        assert first["metadata"]["annotations"]["rlhf.dev/attempt"] == "1"
        await c.finish_stage("demo", "sft", ok=False, reason="NCCL timeout")

        async def second_attempt():
            job = await c.mpijob("demo-sft")
            return job and job["metadata"]["uid"] != first["metadata"]["uid"] and job
        second = await eventually(second_attempt, what="SFT attempt 2")
        assert second["metadata"]["annotations"]["rlhf.dev/attempt"] == "2"
        assert (await _stage_entry(c, "sft"))["retries"] == 1
        cond = await c.condition("demo", "SFTSucceeded")
        assert "NCCL timeout" in cond["message"] or cond["reason"] in ("Created", "Pending")
        assert "SFTRetrying" in [e["reason"] for e in await c.events("demo")]
        await c.finish_stage("demo", "sft", attempt=2, metrics={"eval/perplexity": 2.0})

        async def sft_done():
            entry = await _stage_entry(c, "sft")
            return entry.get("state") == "Succeeded" and entry
        entry = await eventually(sft_done, what="SFT Succeeded")
        assert entry["retries"] == 1 and entry["metrics"] == {"eval/perplexity": 2.0}
        assert c.creations("kubeflow.org/v2beta1/mpijobs", "demo-sft") == 2
        assert (await c.run())["status"]["phase"] == "Running"


async def test_retries_exhausted_fail_the_run_with_the_reason():
    data = manifest()
    data["spec"]["stages"]["reward"]["retries"] = 0
    async with cluster() as (c, _):
        await c.create_run(data)
        await c.finish_prepare()
        await eventually(lambda: c.mpijob("demo-reward"), what="reward MPIJob")
        await c.finish_stage("demo", "reward", ok=False, reason="CUDA out of memory")
        body = await _phase(c, "Failed")
        conds = {x["type"]: x for x in body["status"]["conditions"]}
        assert conds["Failed"]["status"] == "True"
        assert "CUDA out of memory" in conds["Failed"]["message"]
        assert conds["RewardSucceeded"]["reason"] == "Failed"
        entry = await _stage_entry(c, "reward")
        assert entry["state"] == "Failed" and entry["retries"] == 1
        assert c.creations("kubeflow.org/v2beta1/mpijobs", "demo-reward") == 1
        assert await c.mpijob("demo-ppo") is None
        assert "RunStageFailed" in [e["reason"] for e in await c.events("demo")]


async def test_suspend_suspends_running_jobs_and_resume_unsuspends_them():
    async with cluster() as (c, _):
        await c.create_run(manifest())
        await c.finish_prepare()
        await eventually(lambda: c.mpijob("demo-sft"), what="SFT MPIJob")
        await eventually(lambda: c.mpijob("demo-reward"), what="reward MPIJob")
        await c.run_stage("demo", "sft")
        await c.patch_run("demo", {"spec": {"runPolicy": {"suspend": True}}})

        async def suspended():
            jobs = [await c.mpijob(n) for n in ("demo-sft", "demo-reward")]
            return all(j["spec"]["runPolicy"]["suspend"] for j in jobs)
        await eventually(suspended, what="both MPIJobs suspended")
        body = await _phase(c, "Suspended")
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"] == 2
        await c.patch_run("demo", {"spec": {"runPolicy": {"suspend": False}}})

        async def resumed():
            jobs = [await c.mpijob(n) for n in ("demo-sft", "demo-reward")]
            return all(j["spec"]["runPolicy"]["suspend"] is False for j in jobs)
        await eventually(resumed, what="both MPIJobs resumed")
        await _phase(c, "Running")
        sft = await c.mpijob("demo-sft")
        assert "rlhf.dev/suspended-by-run" not in sft["metadata"].get("annotations", {})
        assert c.creations("kubeflow.org/v2beta1/mpijobs", "demo-sft") == 1
        reasons = [e["reason"] for e in await c.events("demo")]
        assert "Suspended" in reasons and "Resumed" in reasons


async def test_deleted_stage_job_is_recreated():
    async with cluster() as (c, _):
        await c.create_run(manifest())
        await c.finish_prepare()
        first = await eventually(lambda: c.mpijob("demo-sft"), what="SFT MPIJob")
        assert await c.api.delete(c.api_resource("MPIJob"), "team-a", "demo-sft")

        async def recreated():
            job = await c.mpijob("demo-sft")
            return job and job["metadata"]["uid"] != first["metadata"]["uid"] and job
        job = await eventually(recreated, what="the SFT MPIJob recreated")
        assert job["metadata"]["annotations"]["rlhf.dev/attempt"] == "1"  # a deletion is not a failure
        assert (await _stage_entry(c, "sft"))["retries"] == 0


async def test_operator_restart_mid_run_creates_no_duplicates():
    async with cluster() as (c, op):
        await c.create_run(manifest())
        await c.finish_prepare()
        await eventually(lambda: c.mpijob("demo-sft"), what="SFT MPIJob")
        await eventually(lambda: c.mpijob("demo-reward"), what="reward MPIJob")
        await c.run_stage("demo", "sft")
        await op.stop()
        # While the operator is down, SFT finishes.
        await c.finish_stage("demo", "sft", metrics={"eval/perplexity": 4.0})
        second = await OperatorThread(c.url, operator_config(resyncSeconds=30)).start()
        try:
            async def sft_done():
                return (await _stage_entry(c, "sft")).get("state") == "Succeeded"
            await eventually(sft_done, what="SFT Succeeded after the restart")
            await c.finish_stage("demo", "reward")
            await eventually(lambda: c.mpijob("demo-ppo"), what="PPO MPIJob")
        finally:
            await second.stop()
        for name in ("demo-sft", "demo-reward", "demo-ppo"):
            assert c.creations("kubeflow.org/v2beta1/mpijobs", name) == 1, name
        assert c.creations("batch/v1/jobs", "demo-prepare") == 1
        assert len(await c.mpijobs()) == 3


async def test_deleting_the_run_deletes_its_children():
    async with cluster() as (c, _):
        await c.create_run(manifest())
        await c.finish_prepare()
        await eventually(lambda: c.mpijob("demo-sft"), what="SFT MPIJob")
        assert await c.api.delete(c.api_resource("RLHFRun"), "team-a", "demo")

        async def gone():
            left = [await c.mpijobs(), await c.api.list(c.api_resource("ConfigMap"), "team-a"),
                    await c.api.list(c.api_resource("Job"), "team-a")]
            return not any(left)
        await eventually(gone, what="children deleted")


async def test_invalid_run_gets_a_condition_naming_the_field_and_no_job():
    data = manifest()
    data["spec"]["stages"]["sft"]["devicesPerNode"] = 16  # the nvidia pool has 8 per node
    async with cluster() as (c, _):
        await c.create_run(data)
        body = await _phase(c, "Failed")
        valid = next(x for x in body["status"]["conditions"] if x["type"] == "Valid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert "spec.stages.sft.devicesPerNode" in valid["message"]
        assert await c.mpijobs() == [] and await c.job("demo-prepare") is None
        assert "InvalidSpec" in [e["reason"] for e in await c.events("demo")]
        # Fixing the spec makes it valid and starts it.
        await c.patch_run("demo", {"spec": {"stages": {"sft": {"devicesPerNode": 4}}}})
        await eventually(lambda: c.job("demo-prepare"), what="prepare Job after the fix")
        assert (await c.condition("demo", "Valid"))["status"] == "True"


async def test_same_named_object_not_owned_is_a_condition_and_left_alone():
    async with cluster() as (c, _):
        foreign = {"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": "demo-prepare", "namespace": "team-a", "labels": {"owner": "someone"}},
                   "spec": {"template": {"spec": {"containers": []}}}}
        await c.api.create(c.api_resource("Job"), "team-a", foreign)
        await c.create_run(manifest())

        async def conflict():
            cond = await c.condition("demo", "Prepared")
            return cond.get("reason") == "NameConflict" and cond
        cond = await eventually(conflict, what="NameConflict")
        assert "not owned by this run" in cond["message"]
        job = await c.job("demo-prepare")
        assert job["metadata"]["labels"] == {"owner": "someone"} and "ownerReferences" not in job["metadata"]
        assert await c.mpijobs() == []


@pytest.mark.parametrize("command", ["rlhf-operator run", "kopf run"])
async def test_operator_process_with_kubeconfig_metrics_and_liveness(tmp_path, command):
    """`rlhf-operator run` (or `kopf run` on the package) as a process: kubeconfig login,
    /healthz, /metrics, SIGTERM."""
    async with cluster(start=False) as (c, _):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": c.url}}],
            "users": [{"name": "u", "user": {"token": "t0ken"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}],
        }))
        config = tmp_path / "operator.yaml"
        config.write_text(yaml.safe_dump(config_data(namespaces=[NS], resyncSeconds=30)))
        live, prom = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "RLHF_OPERATOR_CONFIG": str(config)}
        if command == "kopf run":
            args = ["-m", "kopf", "run", "-m", "rlhf_operator.kopf_app", "--standalone", "-n", NS,
                    "--liveness", f"http://127.0.0.1:{live}/healthz"]
        else:
            args = ["-m", "rlhf_operator.cli", "run", "--config", str(config),
                    "--liveness", f"http://127.0.0.1:{live}/healthz", "--metrics-port", str(prom)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async def get(url):
                try:
                    async with aiohttp.ClientSession() as http, http.get(url) as rsp:
                        return rsp.status == 200 and await rsp.text()
                except aiohttp.ClientConnectionError:
                    return False
            await eventually(lambda: get(f"http://127.0.0.1:{live}/healthz"), 30, "the liveness endpoint")
            await c.create_run(manifest())
            try:
                await eventually(lambda: c.job("demo-prepare"), 30, "the prepare Job")
            except AssertionError:
                proc.kill()
                raise AssertionError((await proc.stderr.read()).decode()[-3000:]) from None

            async def counted():
                text = await get(f"http://127.0.0.1:{prom}/metrics")
                return text and 'rlhf_operator_runs{phase="Running"} 1.0' in text and text
            if command == "rlhf-operator run":
                text = await eventually(counted, 30, "the run counted in /metrics")
                assert "rlhf_operator_reconcile_duration_seconds_count" in text
                assert "rlhf_operator_reconcile_errors_total" in text
            # Kopf's watch and our client's status writes both logged in with the kubeconfig's token.
            watches = [r for r in c.emulator if "rlhfruns" in str(r.url) and r.params.get("watch") == "true"]
            writes = [r for r in c.emulator if str(r.url).endswith("/demo/status") and r.method == "PATCH"]
            assert watches and writes
            assert {r.headers.get("Authorization") for r in watches + writes} == {"Bearer t0ken"}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                raise
        assert proc.returncode == 0, (await proc.stderr.read()).decode()[-2000:]


async def test_a_refused_job_creation_is_a_condition_until_it_goes_through():
    quota = {"full": True}

    def admission_webhook():  # a ResourceQuota at its limit answers 403
        if quota["full"]:
            raise kmock.KubernetesError(status=403, reason="Forbidden",
                                        message='exceeded quota: gpu, requested: requests.nvidia.com/gpu=4')

    async with cluster() as (c, _):
        c.emulator[kmock.action.CREATE, kmock.resource("kubeflow.org/v2beta1/mpijobs")] << admission_webhook
        await c.create_run(manifest())
        await c.finish_prepare()

        async def refused():
            cond = await c.condition("demo", "SFTSucceeded")
            return cond.get("reason") == "CreateFailed" and cond
        cond = await eventually(refused, what="CreateFailed")
        assert "exceeded quota" in cond["message"] and await c.mpijobs() == []
        assert "SFTCreateFailed" in [e["reason"] for e in await c.events("demo")]
        quota["full"] = False
        await c.patch_run("demo", {"metadata": {"annotations": {"retry": "now"}}})  # any event; or the resync
        await eventually(lambda: c.mpijob("demo-sft"), what="the SFT MPIJob once the quota allows it")
