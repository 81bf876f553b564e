"""The oldest Kubernetes the README claims: the CRD, every example, the chart and a whole run
through the real MPI operator, on that release's own kube-apiserver, controller manager and
scheduler."""

from __future__ import annotations

from collections.abc import Iterator

import k8s_components as components
import pytest
from conftest import NS, OperatorProcess, chart_operator, install_chart, prepare_cluster
from k8s_cluster import Cluster, PodScript, running_cluster
from test_api_server import EXAMPLES, server_dry_run
from test_runs import SUCCESS, condition, start, wait_phase

from rlhf.api import read_manifest

OLDEST = components.KUBERNETES_VERSIONS[-1]


@pytest.fixture(scope="module")
def old() -> Iterator[tuple[Cluster, OperatorProcess]]:
    with running_cluster(OLDEST) as cluster:
        prepare_cluster(cluster)
        install_chart(cluster)
        op = chart_operator(cluster)
        op.start()
        try:
            yield cluster, op
        finally:
            op.stop()


def test_the_release_is_the_oldest_claimed(old):
    cluster, _ = old
    version = cluster.kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "v{OLDEST}"' in version


def test_every_example_is_accepted(old):
    cluster, _ = old
    for path in EXAMPLES:
        ok, out = server_dry_run(cluster, read_manifest(path))
        assert ok, f"{path.name}: {out}"


def test_a_run_succeeds(old):
    cluster, op = old
    with PodScript(cluster, NS) as script:
        start(cluster, script, "vintage", SUCCESS)
        status = wait_phase(cluster, op, "vintage", "Succeeded")
        assert not script.errors, script.errors
    assert condition(status, "PPOSucceeded")["status"] == "True"
