"""Fixtures of the cluster tier: a real control plane (tests/cluster/k8s_cluster.py), our CRD, the
chart installed with the real helm, and our operator running with the chart's ServiceAccount."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/k8s_tools.py

import k8s_cluster  # noqa: E402
from k8s_cluster import Cluster, eventually, free_port, running_cluster  # noqa: E402

ROOT = k8s_cluster.ROOT
PYTHON = sys.executable
#: Where every run of the tier lives, and the PodSecurity level it enforces.
NS = "team-a"
RELEASE = "rlhf"
SYSTEM_NS = "rlhf-system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def k8s() -> Iterator[Cluster]:
    """The newest Kubernetes we test, with the MPI operator and kwok's fake GPU nodes: one per test
    module (a control plane starts in seconds). Never two at once: the MPI operator always serves
    its health check on :8080."""
    with running_cluster() as cluster:
        prepare_cluster(cluster)
        yield cluster


def prepare_cluster(cluster: Cluster) -> None:
    """Two fake 8-GPU nodes (tainted like a GPU pool), a CPU node, the tenant namespace at the
    PodSecurity level `restricted`, and a PersistentVolume for the runs' storage."""
    for i in range(2):
        cluster.add_node(
            f"gpu-{i}",
            capacity={"nvidia.com/gpu": "8"},
            taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        )
    cluster.add_node("cpu-0")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NS,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
        }
    )
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "rlhf-storage"},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "manual",
                    "hostPath": {"path": "/tmp/rlhf-storage"},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "rlhf-storage", "namespace": NS},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "manual",
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        ]
    )
    eventually(
        lambda: (cluster.get("pvc", "rlhf-storage", NS) or {}).get("status", {}).get("phase") == "Bound",
        timeout=60,
        what="the PVC to bind",
    )


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    from k8s_tools import ensure_tools

    proc = subprocess.run(
        [str(ensure_tools().helm), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc


class OperatorProcess:
    """``rlhf-operator run`` as the chart would run it: its configuration from the chart's
    ConfigMap and the chart's ServiceAccount token (so the chart's RBAC is what is tested)."""

    def __init__(self, cluster: Cluster, kubeconfig: Path, config: Path):
        self.cluster, self.kubeconfig, self.config = cluster, kubeconfig, config
        self.proc: subprocess.Popen | None = None
        self.log = cluster.folder / "rlhf-operator.log"
        self.health_port = free_port()
        self.metrics_port = free_port()

    def start(self) -> None:
        handle = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "rlhf_operator.cli",
                "run",
                "--config",
                str(self.config),
                "--liveness",
                f"http://127.0.0.1:{self.health_port}/healthz",
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-address",
                "127.0.0.1",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        handle.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def install_chart(cluster: Cluster, *extra: str) -> None:
    """helm install the chart into rlhf-system (it installs the CRD from its crds/), with the
    tier's pools (tests/cluster/values.yaml)."""
    helm(
        cluster,
        "install",
        RELEASE,
        str(ROOT / "charts" / "rlhf-operator"),
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--wait=false",
        "-f",
        str(Path(__file__).with_name("values.yaml")),
        *extra,
    )


def chart_operator(cluster: Cluster) -> OperatorProcess:
    """The operator with the installed chart's configuration and ServiceAccount."""
    configmap = eventually(
        lambda: cluster.get("configmap", f"{RELEASE}-rlhf-operator-config", SYSTEM_NS),
        timeout=30,
        what="the chart's ConfigMap",
    )
    config = cluster.folder / "operator-config.yaml"
    config.write_text(configmap["data"]["config.yaml"])
    token = cluster.token(SYSTEM_NS, f"{RELEASE}-rlhf-operator")
    kubeconfig = cluster.write_kubeconfig("rlhf-operator", token=token)
    return OperatorProcess(cluster, kubeconfig, config)


@pytest.fixture(scope="module")
def operator(k8s: Cluster) -> Iterator[OperatorProcess]:
    install_chart(k8s)
    op = chart_operator(k8s)
    op.start()
    yield op
    op.stop()
