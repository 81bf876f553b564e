"""RLHFRuns driven by our operator through the real Job controller and the real MPI operator.

The operator runs as `rlhf-operator run` with the Helm chart's configuration and ServiceAccount
token; kwok runs the pods on fake GPU nodes and :class:`k8s_cluster.PodScript` ends each
launcher (and the prepare pod) with the exit code and termination message a test wants.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import NS, OperatorProcess
from k8s_cluster import Cluster, Exit, PodScript, eventually

STAGES = ("sft", "reward", "ppo")


def manifest(name: str, **changes: Any) -> dict[str, Any]:
    """A small NVIDIA run on the PVC rlhf-storage; keyword args replace spec keys."""
    spec: dict[str, Any] = {
        "accelerator": "nvidia",
        "models": {"actor": "facebook/opt-125m", "reward": "facebook/opt-125m"},
        "data": {"datasets": [{"path": "Dahoas/rm-static"}]},
        "storage": {"pvc": {"claimName": "rlhf-storage", "subPath": name}},
        "stages": {
            s: {"devicesPerNode": 1, "resources": {"cpu": 2, "memory": "8Gi"}, "retries": 1} for s in STAGES
        },
    }
    spec.update(changes)
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def summary(stage: str, **metrics: float) -> Exit:
    """A launcher that succeeded: its termination message is the stage's summary."""
    return Exit(0, json.dumps({"status": "completed", "stage": stage, "metrics": metrics}))


def failure(reason: str) -> Exit:
    return Exit(1, json.dumps({"status": "failed", "reason": reason, "exit_code": 1}))


SUCCESS = {
    "prepare": [Exit(0)],
    "sft": [summary("sft", **{"eval/perplexity": 3.5})],
    "reward": [summary("reward", **{"eval/accuracy": 0.75})],
    "ppo": [summary("ppo", **{"eval/reward_mean": 1.5})],
}


def run_status(k8s: Cluster, name: str) -> dict[str, Any]:
    return (k8s.get("rlhfrun", name, NS) or {}).get("status") or {}


def wait_phase(
    k8s: Cluster, op: OperatorProcess, name: str, phase: str, timeout: float = 240
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        if op.proc is not None and op.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{op.tail()}")
        status = run_status(k8s, name)
        return status if status.get("phase") == phase else None

    return eventually(
        reached,
        timeout=timeout,
        interval=0.5,
        what=lambda: (
            f"run {name} to be {phase}: {json.dumps(run_status(k8s, name), indent=1)}\n"
            f"operator:\n{op.tail(30)}"
        ),
    )


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def wait_reason(k8s: Cluster, name: str, type_: str, reason: str, timeout: float = 90) -> dict[str, Any]:
    """The run's status once its ``type_`` condition has ``reason``."""
    return eventually(
        lambda: (st := run_status(k8s, name)) and condition(st, type_).get("reason") == reason and st,
        timeout=timeout,
        what=lambda: f"{type_}={reason}: {run_status(k8s, name)}",
    )


def launchers(k8s: Cluster, run: str, stage: str) -> list[dict[str, Any]]:
    return k8s.list(
        "pods", NS, f"rlhf.dev/run={run},rlhf.dev/stage={stage},training.kubeflow.org/job-role=launcher"
    )


def events(k8s: Cluster, run: str) -> list[dict[str, Any]]:
    items = k8s.list("events", NS)
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == "RLHFRun" and e["involvedObject"]["name"] == run
    ]


@pytest.fixture
def script(k8s: Cluster) -> PodScript:
    with PodScript(k8s, NS) as s:
        yield s
        assert not s.errors, s.errors


def start(
    k8s: Cluster, script: PodScript, name: str, outcomes: dict[str, list[Exit]], **changes: Any
) -> None:
    for step, exits in outcomes.items():
        script.set(name, step, *exits)
    k8s.apply(manifest(name, **changes))


def test_a_run_succeeds_through_the_real_mpi_operator(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    start(k8s, script, "happy", SUCCESS)
    status = wait_phase(k8s, operator, "happy", "Succeeded")
    assert [(s["name"], s["state"], s["retries"]) for s in status["stages"]] == [
        ("sft", "Succeeded", 0),
        ("reward", "Succeeded", 0),
        ("ppo", "Succeeded", 0),
    ]
    assert status["stages"][1]["metrics"] == {"eval/accuracy": 0.75}
    for type_ in ("Valid", "Prepared", "SFTSucceeded", "RewardSucceeded", "PPOSucceeded", "Succeeded"):
        assert condition(status, type_)["status"] == "True", (type_, status)
    # SFT and reward ran side by side, each through the MPI operator's own children.
    for stage in ("sft", "reward", "ppo"):
        assert len(launchers(k8s, "happy", stage)) <= 1
    # Every child is ours, owned by the run; trainer pods carry no API token; workers have probes.
    for kind in ("configmap", "networkpolicy", "mpijob", "job"):
        for obj in k8s.list(kind, NS, "rlhf.dev/run=happy"):
            if kind == "job" and obj["metadata"]["name"].endswith("-launcher"):
                continue  # the MPI operator's launcher Job, owned by the MPIJob
            refs = obj["metadata"].get("ownerReferences") or []
            assert any(r["kind"] == "RLHFRun" and r["name"] == "happy" for r in refs), obj["metadata"]
    launcher_pod = launchers(k8s, "happy", "ppo")[0]["spec"]
    assert not [v for v in launcher_pod["volumes"] if v["name"].startswith("kube-api-access")]  # no API token
    mpijob = k8s.get("mpijob", "happy-ppo", NS)
    for role in ("Launcher", "Worker"):
        pod = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert worker["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == 2222
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4096Mi"}} in worker["volumes"]
    reasons = [e["reason"] for e in events(k8s, "happy")]
    assert "RunSucceeded" in reasons and all(e["message"] for e in events(k8s, "happy"))


def test_a_failed_attempt_is_retried_and_resumes(k8s: Cluster, operator: OperatorProcess, script: PodScript):
    start(k8s, script, "retry", {**SUCCESS, "sft": [failure("CUDA out of memory"), summary("sft")]})
    status = wait_phase(k8s, operator, "retry", "Succeeded")
    sft = next(s for s in status["stages"] if s["name"] == "sft")
    assert sft["retries"] == 1 and sft["state"] == "Succeeded"
    assert len(script.ended[("retry", "sft")]) == 2
    assert any(
        e["reason"] == "SFTRetrying" and "CUDA out of memory" in e["message"] for e in events(k8s, "retry")
    )


def test_retries_exhausted_fail_the_run_and_stop_the_sibling(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    # The reward stage never ends on its own; SFT fails twice with one retry allowed.
    start(k8s, script, "doomed", {"prepare": [Exit(0)], "sft": [failure("bad data"), failure("bad data")]})
    status = wait_phase(k8s, operator, "doomed", "Failed")
    assert "bad data" in condition(status, "Failed")["message"]
    states = {s["name"]: s["state"] for s in status["stages"]}
    assert states["sft"] == "Failed" and states["reward"] == "Stopped", states
    assert condition(status, "RewardSucceeded")["reason"] == "Stopped"
    # The sibling's MPIJob is gone, so its pods no longer hold GPUs; PPO never started.
    eventually(
        lambda: k8s.get("mpijob", "doomed-reward", NS) is None, timeout=60, what="reward's MPIJob deleted"
    )
    assert k8s.get("mpijob", "doomed-ppo", NS) is None


def test_suspend_and_resume(k8s: Cluster, operator: OperatorProcess, script: PodScript):
    start(k8s, script, "pause", {"prepare": [Exit(0)]})
    eventually(lambda: launchers(k8s, "pause", "sft"), timeout=90, what="the SFT launcher")
    # both stages run: the STAGE column says so
    eventually(
        lambda: run_status(k8s, "pause").get("stage") == "sft,reward",
        timeout=90,
        what=lambda: f"status.stage sft,reward: {run_status(k8s, 'pause').get('stage')}",
    )
    k8s.kubectl(
        "patch", "rlhfrun", "pause", "-n", NS, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}'
    )
    wait_phase(k8s, operator, "pause", "Suspended")
    eventually(
        lambda: all(
            k8s.get("mpijob", f"pause-{s}", NS)["spec"]["runPolicy"]["suspend"] for s in ("sft", "reward")
        ),
        timeout=30,
        what="both MPIJobs suspended",
    )
    eventually(
        lambda: not launchers(k8s, "pause", "sft"), timeout=60, what="the MPI operator to remove the pods"
    )
    k8s.kubectl(
        "patch",
        "rlhfrun",
        "pause",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"runPolicy":{"suspend":false}}}',
    )
    script.set("pause", "sft", summary("sft"))
    script.set("pause", "reward", summary("reward"))
    script.set("pause", "ppo", summary("ppo"))
    wait_phase(k8s, operator, "pause", "Succeeded")
    told = [(e["reason"], e["message"]) for e in events(k8s, "pause")]
    assert [r for r, _ in told].count("Suspended") == 1 and [r for r, _ in told].count("Resumed") == 1, told
    assert all(m for _, m in told), told
    assert not any(r.endswith("Suspended") and r != "Suspended" for r, _ in told), told


def test_a_deleted_child_is_recreated(k8s: Cluster, operator: OperatorProcess, script: PodScript):
    start(k8s, script, "phoenix", {"prepare": [Exit(0)]})
    first = eventually(lambda: k8s.get("mpijob", "phoenix-sft", NS), timeout=90, what="the SFT MPIJob")
    k8s.kubectl("delete", "mpijob", "phoenix-sft", "-n", NS)
    again = eventually(
        lambda: (
            (j := k8s.get("mpijob", "phoenix-sft", NS))
            and j["metadata"]["uid"] != first["metadata"]["uid"]
            and j
        ),
        timeout=60,
        what="the SFT MPIJob recreated",
    )
    assert again["metadata"]["annotations"]["rlhf.dev/attempt"] == "1"
    k8s.kubectl("delete", "rlhfrun", "phoenix", "-n", NS)


def test_deleting_the_run_collects_its_children(k8s: Cluster, operator: OperatorProcess, script: PodScript):
    start(k8s, script, "ephemeral", {"prepare": [Exit(0)]})
    eventually(lambda: k8s.get("mpijob", "ephemeral-reward", NS), timeout=90, what="the reward MPIJob")
    k8s.kubectl("delete", "rlhfrun", "ephemeral", "-n", NS, "--wait=true")
    for kind in ("mpijob", "job", "configmap", "networkpolicy", "pod"):
        eventually(
            lambda kind=kind: not k8s.list(kind, NS, "rlhf.dev/run=ephemeral"),
            timeout=90,
            what=f"the run's {kind}s to be garbage-collected",
        )


def test_restart_after_a_finished_job_would_have_expired(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    """ttlSecondsAfterFinished must not make the operator rerun a finished stage: with the operator
    down while SFT and reward finish, nothing removes their jobs before the operator has recorded
    the results; after its restart it records them, deletes the jobs, and goes on to PPO."""
    start(k8s, script, "ttl", {"prepare": [Exit(0)]}, runPolicy={"ttlSecondsAfterFinished": 1})
    eventually(
        lambda: launchers(k8s, "ttl", "sft") and launchers(k8s, "ttl", "reward"),
        timeout=90,
        what="both launchers",
    )
    operator.stop()
    try:
        script.set("ttl", "sft", summary("sft"))
        script.set("ttl", "reward", summary("reward"))
        for stage in ("sft", "reward"):
            eventually(
                lambda stage=stage: any(
                    c["type"] == "Succeeded" and c["status"] == "True"
                    for c in (k8s.get("mpijob", f"ttl-{stage}", NS) or {})
                    .get("status", {})
                    .get("conditions", [])
                ),
                timeout=60,
                what=f"{stage}'s MPIJob to succeed",
            )
        time.sleep(3)  # longer than the TTL: a TTL on the job itself would have removed it by now
        assert k8s.get("mpijob", "ttl-sft", NS) is not None
    finally:
        operator.start()
    script.set("ttl", "ppo", summary("ppo"))
    status = wait_phase(k8s, operator, "ttl", "Succeeded")
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    assert len(script.ended[("ttl", "sft")]) == 1 and len(script.ended[("ttl", "reward")]) == 1
    eventually(
        lambda: k8s.get("mpijob", "ttl-ppo", NS) is None,
        timeout=30,
        what="the PPO MPIJob removed after its TTL",
    )
    assert k8s.get("mpijob", "ttl-sft", NS) is None and k8s.get("job", "ttl-prepare", NS) is None


def test_pods_that_cannot_be_scheduled_are_reported(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    """No node matches the prepare pod: the run says why instead of 'waiting for its pod', and
    the step is not reported as running."""
    start(
        k8s,
        script,
        "stuck",
        {},
        stages={s: {"devicesPerNode": 1, "resources": {"cpu": 2, "memory": "8Gi"}} for s in STAGES},
        scheduling={"nodeSelector": {"kubernetes.io/hostname": "no-such-node"}},
    )
    status = wait_reason(k8s, "stuck", "Prepared", "Unschedulable")
    assert "cannot be scheduled" in condition(status, "Prepared")["message"]
    assert status["stage"] == "prepare"
    k8s.kubectl("delete", "rlhfrun", "stuck", "-n", NS)


def test_pods_refused_by_pod_security_are_reported(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    """Gaudi workers need hostIPC and SYS_NICE, which the namespace's PodSecurity level
    (restricted) forbids: the MPI operator cannot create them, and the run says so."""
    k8s.add_node(
        "gaudi-0",
        capacity={"habana.ai/gaudi": "8"},
        taints=[{"key": "habana.ai/gaudi", "value": "present", "effect": "NoSchedule"}],
    )
    start(k8s, script, "gaudi", {"prepare": [Exit(0)]}, accelerator="habana")
    status = eventually(
        lambda: (
            (st := run_status(k8s, "gaudi"))
            and "PodSecurity" in condition(st, "SFTSucceeded").get("message", "")
            and st
        ),
        timeout=120,
        what=lambda: f"SFT to report the PodSecurity refusal: {run_status(k8s, 'gaudi')}",
    )
    assert condition(status, "SFTSucceeded")["reason"] == "Blocked"
    assert "hostIPC" in condition(status, "SFTSucceeded")["message"]
    k8s.kubectl("delete", "rlhfrun", "gaudi", "-n", NS)


def test_an_invalid_run_gets_a_condition_naming_the_field_and_no_job(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    stages = {s: {"devicesPerNode": 1, "resources": {"cpu": 2, "memory": "8Gi"}} for s in STAGES}
    stages["sft"]["devicesPerNode"] = 16  # the pool's nodes have 8
    start(k8s, script, "invalid", {"prepare": [Exit(0)]}, stages=stages)
    status = wait_phase(k8s, operator, "invalid", "Failed")
    valid = condition(status, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.stages.sft.devicesPerNode" in valid["message"]
    assert k8s.get("job", "invalid-prepare", NS) is None
    assert "InvalidSpec" in [e["reason"] for e in events(k8s, "invalid")]
    # Fixing the spec makes it valid and starts it.
    k8s.kubectl(
        "patch",
        "rlhfrun",
        "invalid",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"stages":{"sft":{"devicesPerNode":4}}}}',
    )
    eventually(
        lambda: k8s.get("job", "invalid-prepare", NS), timeout=60, what="the prepare Job after the fix"
    )
    k8s.kubectl("delete", "rlhfrun", "invalid", "-n", NS)


def test_a_same_named_object_not_owned_is_reported_and_left_alone(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    k8s.kubectl("create", "configmap", "squatter-sft-trainer", "-n", NS, "--from-literal=owner=someone")
    start(k8s, script, "squatter", {"prepare": [Exit(0)]})
    status = wait_reason(k8s, "squatter", "SFTSucceeded", "NameConflict")
    assert "not owned by this run" in condition(status, "SFTSucceeded")["message"]
    assert k8s.get("configmap", "squatter-sft-trainer", NS)["data"] == {"owner": "someone"}
    assert k8s.get("mpijob", "squatter-sft", NS) is None
    eventually(
        lambda: k8s.get("mpijob", "squatter-reward", NS), timeout=90, what="the reward stage, unaffected"
    )
    k8s.kubectl("delete", "rlhfrun", "squatter", "-n", NS)
    k8s.kubectl("delete", "configmap", "squatter-sft-trainer", "-n", NS)


def test_a_quota_refusal_is_a_condition_until_it_goes_through(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-mpijobs", "namespace": NS},
            "spec": {"hard": {"count/mpijobs.kubeflow.org": "0"}},
        }
    )
    # until the quota controller has counted MPIJobs (it discovers a new CRD's resources within
    # ~30 s), the API server refuses with "status unknown for quota" instead
    eventually(
        lambda: (
            "count/mpijobs.kubeflow.org"
            in ((k8s.get("resourcequota", "no-mpijobs", NS) or {}).get("status") or {}).get("used", {})
        ),
        timeout=120,
        what="the quota controller to count MPIJobs",
    )
    try:
        start(k8s, script, "quota", {"prepare": [Exit(0)]})
        status = wait_reason(k8s, "quota", "SFTSucceeded", "CreateFailed")
        assert "exceeded quota" in condition(status, "SFTSucceeded")["message"]
        assert status["phase"] == "Running" and k8s.get("mpijob", "quota-sft", NS) is None
        assert "SFTCreateFailed" in [e["reason"] for e in events(k8s, "quota")]
    finally:
        k8s.kubectl("delete", "resourcequota", "no-mpijobs", "-n", NS)
    # Nothing about the run changes: the operator retries on its own (requeue, then the resync).
    eventually(
        lambda: k8s.get("mpijob", "quota-sft", NS),
        timeout=120,
        what="the SFT MPIJob once the quota allows it",
    )
    k8s.kubectl("delete", "rlhfrun", "quota", "-n", NS)


def test_the_operator_process_serves_liveness_and_metrics(operator: OperatorProcess):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=10) as rsp:
        assert rsp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    assert 'rlhf_operator_runs{phase="Succeeded"}' in text
    assert "rlhf_operator_reconcile_duration_seconds_count" in text


def test_a_run_may_not_choose_what_its_pool_does_not_allow(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    """The platform team's pools decide images, tolerations, PriorityClasses and Secrets: a run
    asking for more is refused naming the field, and nothing is created for it."""
    start(
        k8s,
        script,
        "greedy",
        {},
        image="registry.evil.example/miner:latest",
        scheduling={"tolerations": [{"operator": "Exists"}]},
        hubTokenSecret="someone-elses-secret",
    )
    status = wait_phase(k8s, operator, "greedy", "Failed")
    message = condition(status, "Valid")["message"]
    for field in ("spec.image", "spec.scheduling.tolerations[0]", "spec.hubTokenSecret"):
        assert field in message, message
    assert k8s.get("job", "greedy-prepare", NS) is None and k8s.get("configmap", "greedy-run", NS) is None
    k8s.kubectl("delete", "rlhfrun", "greedy", "-n", NS)


def test_suspending_during_prepare_and_hand_edits_are_undone(
    k8s: Cluster, operator: OperatorProcess, script: PodScript
):
    """The prepare Job follows the run's suspend like the MPIJobs do, and what the operator owns
    (a stage's NetworkPolicy, its trainer config) goes back to what the run says when edited."""
    start(k8s, script, "edited", {}, runPolicy={"suspend": False})
    eventually(lambda: k8s.get("job", "edited-prepare", NS), timeout=60, what="the prepare Job")
    k8s.kubectl(
        "patch",
        "rlhfrun",
        "edited",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"runPolicy":{"suspend":true}}}',
    )
    eventually(
        lambda: k8s.get("job", "edited-prepare", NS)["spec"].get("suspend") is True,
        timeout=60,
        what="the prepare Job suspended",
    )
    wait_phase(k8s, operator, "edited", "Suspended")
    policy = k8s.get("networkpolicy", "edited-sft", NS)
    k8s.kubectl(
        "patch",
        "networkpolicy",
        "edited-sft",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"podSelector":{"matchLabels":{"opened":"by-hand"}}}}',
    )
    k8s.kubectl(
        "patch",
        "configmap",
        "edited-ppo-trainer",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"data":{"config.yaml":"x: 1"}}',
    )
    k8s.kubectl(
        "patch",
        "rlhfrun",
        "edited",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"runPolicy":{"suspend":false}}}',
    )
    eventually(
        lambda: k8s.get("networkpolicy", "edited-sft", NS)["spec"] == policy["spec"],
        timeout=60,
        what="the NetworkPolicy restored",
    )
    eventually(
        lambda: k8s.get("configmap", "edited-ppo-trainer", NS)["data"]["config.yaml"] != "x: 1",
        timeout=60,
        what="the trainer config restored",
    )
    eventually(
        lambda: k8s.get("job", "edited-prepare", NS)["spec"].get("suspend") is False,
        timeout=60,
        what="the prepare Job resumed",
    )
    k8s.kubectl("delete", "rlhfrun", "edited", "-n", NS)


@pytest.mark.parametrize("pipeline", [["sft", "dpo"], ["sft", "reward", "grpo"]])
def test_other_pipelines_run_their_own_stage_graph(
    k8s: Cluster, operator: OperatorProcess, script: PodScript, pipeline
):
    """SFT -> DPO, and SFT || RM -> GRPO: each stage an MPIJob through the real MPI operator, in
    the order of the run's stage graph, and only the run's stages."""
    name = "-".join(["graph", *pipeline[1:]])
    outcomes = {"prepare": [Exit(0)], **{s: [summary(s, **{"eval/x": 1.0})] for s in pipeline}}
    start(
        k8s,
        script,
        name,
        outcomes,
        pipeline=pipeline,
        stages={s: {"devicesPerNode": 1, "resources": {"cpu": 2, "memory": "8Gi"}} for s in pipeline},
    )
    status = wait_phase(k8s, operator, name, "Succeeded")
    assert [s["name"] for s in status["stages"]] == pipeline
    last = pipeline[-1]
    assert condition(status, f"{last.upper()}Succeeded")["status"] == "True"
    mpijobs = {j["metadata"]["name"] for j in k8s.list("mpijob", NS, f"rlhf.dev/run={name}")}
    assert mpijobs <= {f"{name}-{s}" for s in pipeline}
    assert not k8s.list("mpijob", NS, f"rlhf.dev/run={name},rlhf.dev/stage=ppo")
    k8s.kubectl("delete", "rlhfrun", name, "-n", NS)


def test_the_chart_rbac_is_exactly_what_the_operator_uses(k8s: Cluster, operator: OperatorProcess):
    """Runs last in this module: over all the runs above, the API server's audit log of the
    operator's ServiceAccount shows no refused request, and every verb the chart grants in a
    watched namespace was used (a grant nothing uses is a grant too many)."""
    import yaml
    from conftest import RELEASE, SYSTEM_NS, helm

    time.sleep(2)  # the audit log is written in batches of at most 1 s
    user = f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}-rlhf-operator"
    used: set[tuple[str, str, str]] = set()
    refused = []
    for event in k8s.audit(user):
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/apis, /version)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = (ref.get("apiGroup") or "", resource, event["verb"])
        used.add(key)
        if (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid":
            refused.append(key)  # RBAC said no (a 403 from a ResourceQuota is admission's, not RBAC's)
    assert not refused, f"the chart's RBAC refused the operator: {sorted(set(refused))}"
    manifest = helm(k8s, "get", "manifest", RELEASE, "-n", SYSTEM_NS).stdout
    role = next(
        d
        for d in yaml.safe_load_all(manifest)
        if d and d["kind"] == "ClusterRole" and not d["metadata"]["name"].endswith("crd-discovery")
    )
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # update on rlhfruns/finalizers is checked by OwnerReferencesPermissionEnforcement when a child
    # with blockOwnerDeletion is created; it is never a request of its own.
    unused = granted - used - {("rlhf.dev", "rlhfruns/finalizers", "update")}
    assert not unused, f"granted but never used: {sorted(unused)}"
