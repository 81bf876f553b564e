"""Rendering on admin-owned pools: the chosen pool's nodes, tolerations, devices, hugepages and
privileges reach every pod; nothing privileged reaches a pod whose pool does not allow it; and the
PodSecurity level each accelerator's pods need (the chart README's table) is what they need."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from rlhf_operator import render
from rlhf_operator.admission import admit
from rlhf_operator.config import parse_config
from rlhf_operator.profiles import PROFILES

from rlhf.api import read_manifest
from rlhf.api.pools import PRIVILEGED_NEEDS

ROOT = Path(__file__).resolve().parents[2]
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
CONFIG = parse_config(
    {
        "pools": [
            {
                "name": "a100",
                "accelerator": "nvidia",
                "devicesPerNode": 8,
                "nodeSelector": {"pool": "a100"},
                "tolerations": [GPU_TAINT],
                "allowedNodeLabelKeys": ["topology.kubernetes.io/zone"],
                "allowedTolerations": [
                    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
                ],
            },
            {
                "name": "h100",
                "accelerator": "nvidia",
                "devicesPerNode": 8,
                "nodeSelector": {"pool": "h100"},
                "tolerations": [
                    GPU_TAINT,
                    {"key": "dedicated", "operator": "Equal", "value": "h100", "effect": "NoSchedule"},
                ],
            },
            {
                "name": "gaudi2",
                "accelerator": "habana",
                "devicesPerNode": 8,
                "privileged": True,
                "nodeSelector": {"habana.ai/gaudi.product": "HL-225"},
                "hugepages2Mi": "120000Mi",
            },
            {
                "name": "gaudi-nohuge",
                "accelerator": "habana",
                "devicesPerNode": 8,
                "privileged": True,
                "hugepages2Mi": "0",
            },
            {"name": "gaudi-locked", "accelerator": "habana", "devicesPerNode": 8},
            {"name": "cpu", "accelerator": "cpu", "devicesPerNode": 16},
        ],
    }
)


def manifest(example: str = "opt-1.3b-single-node.yaml", **spec: Any) -> dict[str, Any]:
    data = read_manifest(ROOT / "examples" / example)
    data["metadata"]["namespace"] = "ml"
    data["spec"].update(spec)
    return data


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec of the children: {"prepare": ..., "sft/Launcher": ..., "sft/Worker": ...}."""
    out = {}
    for doc in docs:
        if doc["kind"] == "Job":
            out["prepare"] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "MPIJob":
            stage = doc["metadata"]["labels"]["rlhf.dev/stage"]
            for role, replica in doc["spec"]["mpiReplicaSpecs"].items():
                out[f"{stage}/{role}"] = replica["template"]["spec"]
    return out


def children(data: dict[str, Any]) -> list[dict[str, Any]]:
    return render.children(admit(data, CONFIG), CONFIG)


def test_every_pod_gets_the_chosen_pools_nodes_and_tolerations():
    for pool, expected in (("a100", {"pool": "a100"}), ("h100", {"pool": "h100"})):
        rendered = pods(children(manifest(pool=pool)))
        assert len(rendered) == 7  # prepare + launcher and worker of three stages
        for name, pod in rendered.items():
            assert pod["nodeSelector"] == expected, name
            assert pod["tolerations"][0] == GPU_TAINT, name
    h100 = pods(children(manifest(pool="h100")))["sft/Worker"]
    assert [t["key"] for t in h100["tolerations"]] == ["nvidia.com/gpu", "dedicated"]


def test_what_the_pool_lets_a_run_add_is_merged_after_the_pools_own():
    data = manifest(
        pool="a100",
        scheduling={
            "nodeSelector": {"topology.kubernetes.io/zone": "z1"},
            "tolerations": [
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                GPU_TAINT,
            ],
        },
    )
    for name, pod in pods(children(data)).items():
        assert pod["nodeSelector"] == {"topology.kubernetes.io/zone": "z1", "pool": "a100"}, name
        assert pod["tolerations"] == [
            GPU_TAINT,
            {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        ], name  # no duplicate


def test_default_pool_is_the_first_for_the_accelerator():
    assert admit(manifest(), CONFIG).pool.name == "a100"
    assert admit(manifest("gaudi-bloom.yaml"), CONFIG).pool.name == "gaudi2"


def test_gaudi_workers_get_host_ipc_sys_nice_and_the_pools_hugepages():
    rendered = pods(children(manifest("gaudi-bloom.yaml")))
    for name, pod in rendered.items():
        container = pod["containers"][0]
        caps = container["securityContext"]["capabilities"]
        if name.endswith("/Worker"):
            assert pod["hostIPC"] is True and caps["add"] == ["SYS_NICE"], name
            assert container["resources"]["limits"]["hugepages-2Mi"] == "120000Mi"
            assert pod["nodeSelector"] == {"habana.ai/gaudi.product": "HL-225"}
        else:  # the launcher and the prepare Job need nothing of the kind
            assert "hostIPC" not in pod and "add" not in caps, name
    worker = pods(children(manifest("gaudi-bloom.yaml", pool="gaudi-nohuge")))["ppo/Worker"]
    assert "hugepages-2Mi" not in worker["containers"][0]["resources"]["limits"]


def test_nothing_privileged_reaches_a_pool_that_does_not_allow_it():
    """Admission refuses a Gaudi run on a locked pool; render holds the line on its own too."""
    admitted = admit(manifest("gaudi-bloom.yaml"), CONFIG)
    locked = dataclasses.replace(admitted, pool=CONFIG.pool("gaudi-locked"))
    for name, pod in pods(render.children(locked, CONFIG)).items():
        assert "hostIPC" not in pod, name
        assert "add" not in pod["containers"][0]["securityContext"]["capabilities"], name


def test_the_profiles_that_need_privileged_pools_are_the_apis():
    assert {name for name, prof in PROFILES.items() if prof.privileged} == set(PRIVILEGED_NEEDS)


# ---------------------------------------------------------------------------------------------
# PodSecurity Standards (kubernetes.io/docs/concepts/security/pod-security-standards): the checks
# of the baseline and restricted levels that our pods could meet or miss.

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pod_security_level(pod: dict[str, Any]) -> str:
    """The most restrictive Pod Security Standard ``pod`` meets: restricted, baseline or privileged."""
    containers = pod["containers"] + pod.get("initContainers", [])
    contexts = [c.get("securityContext", {}) for c in containers]
    added = {cap for sc in contexts for cap in sc.get("capabilities", {}).get("add", [])}
    baseline = (
        not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        and not any(sc.get("privileged") for sc in contexts)
        and added <= BASELINE_CAPABILITIES
        and not any("hostPath" in v for v in pod.get("volumes", []))
        and not any(p.get("hostPort") for c in containers for p in c.get("ports", []))
    )
    if not baseline:
        return "privileged"
    pod_sc = pod.get("securityContext", {})
    restricted = (
        all(set(v) - {"name"} <= RESTRICTED_VOLUMES for v in pod.get("volumes", []))
        and all(sc.get("allowPrivilegeEscalation") is False for sc in contexts)
        and all(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True for sc in contexts)
        and all(sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0 for sc in contexts)
        and all(
            (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            in ("RuntimeDefault", "Localhost")
            for sc in contexts
        )
        and all("ALL" in sc.get("capabilities", {}).get("drop", []) for sc in contexts)
        and added <= {"NET_BIND_SERVICE"}
    )
    return "restricted" if restricted else "baseline"


@pytest.mark.parametrize(
    "example, accelerator, worker_level",
    [
        ("opt-1.3b-single-node.yaml", "nvidia", "restricted"),
        ("opt-1.3b-single-node.yaml", "cpu", "restricted"),
        ("gaudi-bloom.yaml", "habana", "privileged"),
    ],
)
def test_pod_security_level_each_accelerator_needs(example, accelerator, worker_level):
    data = manifest(example, accelerator=accelerator)
    if accelerator == "cpu":
        for stage in data["spec"]["stages"].values():
            stage.update(dtype="bf16", devicesPerNode=4)
    for name, pod in pods(children(data)).items():
        expected = worker_level if name.endswith("/Worker") else "restricted"
        assert pod_security_level(pod) == expected, name


def test_pod_security_check_is_not_vacuous():
    pod = pods(children(manifest()))["sft/Worker"]
    assert pod_security_level({**pod, "hostNetwork": True}) == "privileged"
    container = {
        **pod["containers"][0],
        "securityContext": {**pod["containers"][0]["securityContext"], "allowPrivilegeEscalation": True},
    }
    assert pod_security_level({**pod, "containers": [container]}) == "baseline"
