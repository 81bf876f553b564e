"""Installing as the README says, on a real control plane without the MPI operator: the CRD and
the chart with the real kubectl and helm, namespaced installs, and what a missing MPI operator
looks like."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import NS, RELEASE, ROOT, SYSTEM_NS, chart_operator, helm, install_chart, prepare_cluster
from k8s_cluster import Cluster, Exit, PodScript, eventually, running_cluster
from test_runs import condition, manifest, run_status


@pytest.fixture(scope="module")
def bare() -> Iterator[Cluster]:
    """A cluster without the MPI operator (and without its CRD)."""
    with running_cluster(mpi_operator=False) as cluster:
        prepare_cluster(cluster)
        yield cluster


def test_installing_over_an_existing_crd_as_the_readme_says(bare: Cluster):
    """A cluster that already has an RLHFRun CRD (an earlier version, applied with kubectl): Helm 4
    server-side-applies crds/ on install and conflicts with kubectl's fields, so the README says to
    update the CRD with kubectl and install with --skip-crds. Both halves are checked here."""
    import yaml

    older = yaml.safe_load((ROOT / "crds" / "rlhfrun.yaml").read_text())
    older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["description"] = "older"
    bare.apply(older)
    plain = helm(
        bare,
        "install",
        RELEASE,
        str(ROOT / "charts" / "rlhf-operator"),
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        check=False,
    )
    assert plain.returncode != 0 and "conflict" in plain.stderr, plain.stderr  # what the README warns of
    helm(bare, "uninstall", RELEASE, "-n", SYSTEM_NS, check=False)
    bare.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "rlhfrun.yaml"))
    install_chart(bare, "--skip-crds")
    assert helm(bare, "status", RELEASE, "-n", SYSTEM_NS).returncode == 0
    stored = bare.get("crd", "rlhfruns.rlhf.dev")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert stored["properties"]["spec"]["description"] != "older"


def test_a_namespaced_install_needs_its_namespaces(bare: Cluster):
    missing = helm(
        bare,
        "install",
        "tenant",
        str(ROOT / "charts" / "rlhf-operator"),
        "-n",
        "tenant-system",
        "--create-namespace",
        "--skip-crds",
        "--set",
        "watchNamespaces={no-such-ns}",
        check=False,
    )
    assert missing.returncode != 0
    assert "no-such-ns" in missing.stderr and "does not exist" in missing.stderr, missing.stderr
    helm(
        bare,
        "install",
        "tenant",
        str(ROOT / "charts" / "rlhf-operator"),
        "-n",
        "tenant-system",
        "--create-namespace",
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{NS}}}",
    )
    role = bare.get("role", "tenant-rlhf-operator", NS)
    assert role is not None and bare.get("clusterrole", "tenant-rlhf-operator") is None
    helm(bare, "uninstall", "tenant", "-n", "tenant-system")


def test_without_the_mpi_operator_the_run_says_so(bare: Cluster):
    if helm(bare, "status", RELEASE, "-n", SYSTEM_NS, check=False).returncode != 0:
        install_chart(bare)
    op = chart_operator(bare)
    op.start()
    try:
        with PodScript(bare, NS) as script:
            script.set("lonely", "prepare", Exit(0))
            bare.apply(manifest("lonely"))
            status = eventually(
                lambda: (
                    (st := run_status(bare, "lonely"))
                    and "MPI Operator" in condition(st, "SFTSucceeded").get("message", "")
                    and st
                ),
                timeout=120,
                what=lambda: (
                    f"SFT to say the MPI operator is missing: {run_status(bare, 'lonely')}\n{op.tail()}"
                ),
            )
            assert condition(status, "SFTSucceeded")["reason"] == "CreateFailed"
            assert status["phase"] == "Running"  # the platform team may still install it
    finally:
        op.stop()
