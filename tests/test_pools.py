"""The admin-owned pool policy (rlhf.api.pools): which pool a run gets, and what it may choose there.

Every refusal is one ``field.path: message`` line naming the field at fault; the operator's
admission, ``rlhf-operator render`` and ``rlhf validate --operator-config`` all use this check.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rlhf.api import load_manifest, read_manifest
from rlhf.api.pools import (
    PolicyError,
    PoolPolicy,
    default_pools,
    image_allowed,
    load_policy,
    normalize_image,
    parse_policy,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CUDA = "registry.example.com/ml/trainer-cuda:1.0"
POLICY = parse_policy(
    {
        "images": {
            "nvidia": DEFAULT_CUDA,
            "habana": "registry.example.com/ml/trainer-gaudi:1.0",
            "cpu": DEFAULT_CUDA,
        },
        "pools": [
            {
                "name": "a100",
                "accelerator": "nvidia",
                "devicesPerNode": 8,
                "namespaces": ["team-a"],
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "allowedImages": ["registry.example.com/team-a/", "nvcr.io/nvidia/pytorch"],
                "allowedPriorityClasses": ["ml-batch-low"],
                "allowedHubTokenSecrets": ["hf-token"],
                "allowedNodeLabelKeys": ["topology.kubernetes.io/zone"],
                "allowedTolerations": [
                    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
                ],
            },
            {
                "name": "h100",
                "accelerator": "nvidia",
                "devicesPerNode": 8,
                "namespaces": ["team-a", "team-b"],
                "nodeSelector": {"pool": "h100"},
            },
            {"name": "shared", "accelerator": "nvidia", "devicesPerNode": 4},
            {"name": "gaudi2", "accelerator": "habana", "devicesPerNode": 8, "privileged": True},
            {"name": "gaudi-locked", "accelerator": "habana", "devicesPerNode": 8},
            {
                "name": "cpu",
                "accelerator": "cpu",
                "devicesPerNode": 64,
                "allowedTolerations": [{"operator": "Exists"}],
            },
        ],
    }
)


def run(namespace: str = "team-a", example: str = "opt-1.3b-single-node.yaml", **spec: Any) -> dict[str, Any]:
    data = read_manifest(ROOT / "examples" / example)
    data["metadata"]["namespace"] = namespace
    for key, value in spec.items():
        if value is None:
            data["spec"].pop(key, None)
        else:
            data["spec"][key] = value
    for stage in data["spec"]["stages"].values():
        stage["devicesPerNode"] = min(stage.get("devicesPerNode", 1), 4)
    return data


def check(data: dict[str, Any], policy: PoolPolicy = POLICY) -> tuple[str | None, list[str]]:
    parsed = load_manifest(data)
    pool, problems = policy.check(parsed, parsed.metadata.namespace or "default")
    return (pool.name if pool else None), problems


def refused(data: dict[str, Any], field: str, policy: PoolPolicy = POLICY) -> str:
    """The one problem of ``data``, which must name ``field``."""
    _, problems = check(data, policy)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: "), problems
    return problems[0]


def scheduling(**fields: Any) -> dict[str, Any]:
    return {"scheduling": fields}


# ---------------------------------------------------------------------------------------------
# Which pool


def test_default_pool_is_the_first_open_to_the_namespace_for_the_accelerator():
    assert check(run("team-a")) == ("a100", [])
    assert check(run("team-b")) == ("h100", [])  # a100 is team-a's only
    assert check(run("team-c")) == ("shared", [])  # no namespaces: open to every namespace
    cpu = run("team-c", accelerator="cpu")
    for stage in cpu["spec"]["stages"].values():
        stage["dtype"] = "bf16"
    assert check(cpu) == ("cpu", [])


def test_a_named_pool_is_used_when_the_namespace_may():
    assert check(run("team-b", pool="shared")) == ("shared", [])
    assert check(run("team-a", pool="h100")) == ("h100", [])


def test_a_pool_closed_to_the_namespace_is_refused():
    line = refused(run("team-b", pool="a100"), "spec.pool")
    assert line == (
        'spec.pool: pool "a100" is not open to namespace "team-b" '
        '(nvidia pools open to namespace "team-b": h100, shared)'
    )


def test_an_unknown_pool_or_one_of_another_accelerator_is_refused():
    assert 'no pool "v100" in this cluster' in refused(run(pool="v100"), "spec.pool")
    assert 'pool "gaudi2" is for habana, not spec.accelerator nvidia' in refused(
        run(pool="gaudi2"), "spec.pool"
    )


def test_no_pool_open_to_the_namespace():
    policy = parse_policy(
        {"pools": [{"name": "a100", "accelerator": "nvidia", "devicesPerNode": 8, "namespaces": ["team-a"]}]}
    )
    line = refused(run("team-z"), "spec.accelerator", policy)
    assert 'no nvidia pool of this cluster is open to namespace "team-z"' in line


def test_the_stages_must_fit_the_pools_nodes():
    data = run("team-c")  # pool shared: 4 devices per node
    data["spec"]["stages"]["ppo"]["devicesPerNode"] = 8
    line = refused(data, "spec.stages.ppo.devicesPerNode")
    assert line == 'spec.stages.ppo.devicesPerNode: 8 is more than the 4 devices per node of pool "shared"'


def test_a_cluster_needs_a_pvc():
    data = run(storage={"localDir": "runs/x"})
    assert "required on a cluster" in refused(data, "spec.storage.pvc")


# ---------------------------------------------------------------------------------------------
# Images, PriorityClasses, Hub-token Secrets


def test_image_not_allowed_names_the_field_and_what_is_allowed():
    line = refused(run(image="registry.evil/x"), "spec.image")
    assert line == (
        'spec.image: registry.evil/x is not allowed by pool "a100" (allowed: the default '
        f"{DEFAULT_CUDA}; under registry.example.com/team-a/, nvcr.io/nvidia/pytorch)"
    )


@pytest.mark.parametrize(
    "image",
    [
        DEFAULT_CUDA,  # the default is always allowed
        "registry.example.com/team-a/trainer:2",
        "registry.example.com/team-a/sub/trainer@sha256:" + "a" * 64,
        "nvcr.io/nvidia/pytorch:24.05-py3",
    ],
)
def test_allowed_images(image):
    assert check(run(image=image)) == ("a100", [])


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/team-a-evil/trainer:1",  # prefix, but not on a path boundary
        "registry.example.com/team-b/trainer:1",
        "nvcr.io/nvidia/pytorch-evil:1",
        "registry.example.com/ml/trainer-cuda:1.1",  # the default's repository, another tag
        "pytorch",
    ],
)
def test_refused_images(image):
    refused(run(image=image), "spec.image")
    refused(run("team-b", image=image), "spec.image")  # h100 allows no image but the default


def test_an_image_that_is_no_reference_is_refused():
    assert "is not an image reference" in refused(run(image="registry.example.com/team-a/../x"), "spec.image")


def test_priority_classes_and_hub_token_secrets():
    assert check(run(scheduling={"priorityClassName": "ml-batch-low"}, hubTokenSecret="hf-token")) == (
        "a100",
        [],
    )
    line = refused(
        run(scheduling={"priorityClassName": "system-cluster-critical"}), "spec.scheduling.priorityClassName"
    )
    assert line.endswith('is not allowed by pool "a100" (allowed: ml-batch-low)')
    line = refused(run(hubTokenSecret="team-b-db-password"), "spec.hubTokenSecret")
    assert line == 'spec.hubTokenSecret: team-b-db-password is not allowed by pool "a100" (allowed: hf-token)'
    assert refused(run("team-b", hubTokenSecret="hf-token"), "spec.hubTokenSecret").endswith(
        "(allowed: none)"
    )


# ---------------------------------------------------------------------------------------------
# Node selection and tolerations a run adds


def test_node_selector_keys_the_pool_allows():
    assert check(run(**scheduling(nodeSelector={"topology.kubernetes.io/zone": "z1"}))) == ("a100", [])
    assert check(run(**scheduling(nodeSelector={"pool": "a100"}))) == (
        "a100",
        [],
    )  # the pool's own, same value
    line = refused(
        run(**scheduling(nodeSelector={"node-role.kubernetes.io/control-plane": ""})),
        "spec.scheduling.nodeSelector.node-role.kubernetes.io/control-plane",
    )
    assert 'is not allowed by pool "a100" (allowed keys: topology.kubernetes.io/zone)' in line
    line = refused(run(**scheduling(nodeSelector={"pool": "h100"})), "spec.scheduling.nodeSelector.pool")
    assert "conflicts with pool \"a100\"'s 'a100'" in line


def test_node_affinity_keys_the_pool_allows():
    def affinity(key: str, preferred: bool = False, field: str = "matchExpressions") -> dict[str, Any]:
        term = {field: [{"key": key, "operator": "In", "values": ["x"]}]}
        if preferred:
            node = {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": term}]}
        else:
            node = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        return run(**scheduling(affinity={"nodeAffinity": node}))

    assert check(affinity("topology.kubernetes.io/zone")) == ("a100", [])
    assert check(affinity("pool", preferred=True)) == ("a100", [])  # narrowing the pool's own key
    refused(
        affinity("team-b-nodes"),
        "spec.scheduling.affinity.nodeAffinity.requiredDuringSchedulingIgnored"
        "DuringExecution.nodeSelectorTerms[0].matchExpressions[0].key",
    )
    refused(
        affinity("team-b-nodes", preferred=True),
        "spec.scheduling.affinity.nodeAffinity.preferredDuring"
        "SchedulingIgnoredDuringExecution[0].preference."
        "matchExpressions[0].key",
    )
    refused(
        affinity("metadata.name", field="matchFields"),
        "spec.scheduling.affinity.nodeAffinity."
        "requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key",
    )
    bad = run(**scheduling(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}))
    refused(bad, "spec.scheduling.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution")


def test_pod_anti_affinity_is_not_a_node_selection():
    data = run(
        **scheduling(
            affinity={
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                    ]
                }
            }
        )
    )
    assert check(data) == ("a100", [])


SPOT = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


def test_tolerations_a_run_may_add_are_exact_matches():
    pool_own = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert check(run(**scheduling(tolerations=[SPOT, pool_own]))) == ("a100", [])
    for near_miss in (
        {**SPOT, "value": "false"},
        {**SPOT, "effect": "NoExecute"},
        {**SPOT, "tolerationSeconds": 5},
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true"},
    ):  # every effect
        line = refused(run(**scheduling(tolerations=[SPOT, near_miss])), "spec.scheduling.tolerations[1]")
        assert line.endswith('is not allowed by pool "a100" (a run may add: spot=true:NoSchedule)')
    line = refused(run("team-b", **scheduling(tolerations=[SPOT])), "spec.scheduling.tolerations[0]")
    assert line == (
        'spec.scheduling.tolerations[0]: spot=true:NoSchedule is not allowed by pool "h100" '
        "(a run may add: none)"
    )


def test_a_wildcard_toleration_is_refused_unless_listed_verbatim():
    line = refused(run(**scheduling(tolerations=[{"operator": "Exists"}])), "spec.scheduling.tolerations[0]")
    assert "a wildcard toleration, which tolerates every taint, is not allowed" in line
    refused(
        run(**scheduling(tolerations=[{"operator": "Exists", "effect": "NoSchedule"}])),
        "spec.scheduling.tolerations[0]",
    )
    cpu = run("team-c", accelerator="cpu", **scheduling(tolerations=[{"operator": "Exists"}]))
    for stage in cpu["spec"]["stages"].values():
        stage["dtype"] = "bf16"
    assert check(cpu) == ("cpu", [])  # the cpu pool lists it verbatim


# ---------------------------------------------------------------------------------------------
# Privileged Gaudi pods


def test_gaudi_needs_a_pool_that_allows_privileged_pods():
    assert check(run(example="gaudi-bloom.yaml")) == ("gaudi2", [])
    line = refused(run(example="gaudi-bloom.yaml", pool="gaudi-locked"), "spec.pool")
    assert 'pool "gaudi-locked" does not allow privileged Gaudi pods' in line
    assert "hostIPC and the SYS_NICE capability" in line
    assert "privileged: true on the pool (Helm value pools[4].privileged)" in line
    assert "pod-security.kubernetes.io/enforce=privileged" in line
    # The defaults leave it to the platform team: the habana pool is locked.
    line = refused(run(example="gaudi-bloom.yaml"), "spec.accelerator", PoolPolicy())
    assert "Helm value pools[1].privileged" in line


def test_problems_add_up_one_line_each():
    data = run(
        image="registry.evil/x",
        hubTokenSecret="other",
        **scheduling(
            priorityClassName="high",
            nodeSelector={"kubernetes.io/hostname": "cp-0"},
            tolerations=[{"operator": "Exists"}],
        ),
    )
    _, problems = check(data)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "spec.image",
        "spec.scheduling.priorityClassName",
        "spec.hubTokenSecret",
        "spec.scheduling.nodeSelector.kubernetes.io/hostname",
        "spec.scheduling.tolerations[0]",
    ]


# ---------------------------------------------------------------------------------------------
# The policy itself


def test_default_pools_one_per_accelerator_with_gaudi_locked():
    policy = PoolPolicy()
    assert [(p.name, p.accelerator, p.devices_per_node) for p in policy.pools] == [
        ("nvidia", "nvidia", 8),
        ("habana", "habana", 8),
        ("cpu", "cpu", 64),
    ]
    assert policy.pool("habana").privileged is False and policy.pool("habana").hugepages2_mi == "95000Mi"
    assert [t.key for t in policy.pool("nvidia").tolerations] == ["nvidia.com/gpu"]
    assert all(
        not p.namespaces and not p.allowed_images and not p.allowed_tolerations for p in default_pools()
    )


@pytest.mark.parametrize(
    "pools, line",
    [
        (
            [
                {"name": "a", "accelerator": "nvidia", "devicesPerNode": 8},
                {"name": "a", "accelerator": "cpu", "devicesPerNode": 8},
            ],
            "pools[1].name: 'a' is already the name of pools[0]",
        ),
        (
            [{"name": "a", "accelerator": "nvidia", "devicesPerNode": 8, "privileged": True}],
            "pools[0].privileged: only habana pools use it",
        ),
        (
            [{"name": "a", "accelerator": "cpu", "devicesPerNode": 8, "hugepages2Mi": "1Gi"}],
            "pools[0].hugepages2Mi: only habana pools use it",
        ),
        (
            [{"name": "a", "accelerator": "nvidia", "devicesPerNode": 8, "nodeSelector": {"bad key": "x"}}],
            "pools[0].nodeSelector.bad key: 'bad key' is not a valid label key",
        ),
        (
            [{"name": "a", "accelerator": "nvidia", "devicesPerNode": 8, "allowedImages": ["not an image"]}],
            "pools[0].allowedImages[0]: 'not an image' is not a registry",
        ),
        (
            [{"name": "a", "accelerator": "nvidia", "devicesPerNode": 8, "allowedNodeLabelKeys": ["-x"]}],
            "pools[0].allowedNodeLabelKeys[0]: '-x' is not a valid label key",
        ),
        (
            [{"name": "a", "accelerator": "nvidia", "devicesPerNode": 8, "alowedImages": []}],
            "pools[0].alowedImages: unknown field (did you mean 'allowedImages'?)",
        ),
        ([{"name": "A", "accelerator": "tpu", "devicesPerNode": 0}], "pools[0].name"),
        ([], "pools: List should have at least 1 item"),
        ({"nvidia": {"devicesPerNode": 8}}, "pools: expected a list of named pools"),
    ],
)
def test_bad_policies_name_the_field(pools, line):
    with pytest.raises(PolicyError) as info:
        parse_policy({"pools": pools, "prepare": {"cpu": "1"}}, "ops.yaml")
    assert any(p.startswith(line) for p in info.value.problems), info.value.problems
    assert str(info.value).startswith("invalid operator configuration ops.yaml:")


def test_the_policy_is_read_from_the_operator_configuration_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "namespaces: [team-a]\nresyncSeconds: 30\npools:\n- {name: x, accelerator: cpu, devicesPerNode: 2}\n"
    )
    assert [p.name for p in load_policy(path).pools] == ["x"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    path.write_text(bomb)
    with pytest.raises(PolicyError, match="expands to more than"):
        load_policy(path)


@pytest.mark.parametrize(
    "image, prefix, allowed",
    [
        ("registry.example.com/ml/x:1", "registry.example.com/ml", True),
        ("registry.example.com/ml:1", "registry.example.com/ml", True),
        ("registry.example.com/ml-evil/x:1", "registry.example.com/ml", False),
        ("registry.example.com/ml:1", "registry.example.com/ml/", False),
        ("registry.example.com/a/b", "registry.example.com", True),
        ("registry.example.com.evil/a/b", "registry.example.com", False),
        ("registry.example.com:5000/a", "registry.example.com", False),
        ("localhost:5000/x", "localhost:5000", True),
        ("ubuntu:22.04", "docker.io/library/", True),
        ("ubuntu:22.04", "docker.io", True),
        ("index.docker.io/library/ubuntu", "ubuntu", True),
        ("ubuntu:22.05", "ubuntu:22.04", False),
        ("r.io/x@sha256:" + "a" * 64, "r.io/x@sha256:" + "a" * 64, True),
        ("r.io/x:1", "r.io/x@sha256:" + "a" * 64, False),
        ("registry.example.com/ml/../evil", "registry.example.com/ml/", False),
    ],
)
def test_image_prefixes_match_on_path_boundaries(image, prefix, allowed):
    assert image_allowed(image, prefix) is allowed


def test_normalize_image():
    assert normalize_image("ubuntu") == "docker.io/library/ubuntu"
    assert normalize_image("org/x:1") == "docker.io/org/x:1"
    assert normalize_image("localhost/x") == "localhost/x"
    assert normalize_image("r.io:5000/a/b@sha256:00") == "r.io:5000/a/b@sha256:00"


def test_local_runs_ignore_pools():
    """spec.pool is an API field (typed, in the CRD) that only a cluster reads."""
    data = copy.deepcopy(read_manifest(ROOT / "examples" / "quickstart.yaml"))
    data["spec"]["pool"] = "anything"
    assert load_manifest(data).spec.pool == "anything"
    data["spec"]["pool"] = "Not_A_Name"
    with pytest.raises(Exception, match="spec.pool"):
        load_manifest(data)


# ---------------------------------------------------------------------------------------------
# `rlhf validate --operator-config`: the same policy, offline


CLI_CONFIG = """
namespaces: [team-a]            # the operator's own settings are the operator's to check
resyncSeconds: 30
images: {nvidia: registry.example.com/ml/trainer-cuda:1.0, habana: g:1, cpu: c:1}
pools:
- name: a100
  accelerator: nvidia
  devicesPerNode: 8
  namespaces: [team-a]
  allowedImages: [registry.example.com/ml/]
"""


def test_validate_with_the_operator_config(tmp_path, capsys):
    from rlhf.cli import main

    config = tmp_path / "operator.yaml"
    config.write_text(CLI_CONFIG)
    example = ROOT / "examples" / "opt-1.3b-single-node.yaml"
    assert (
        main(["validate", str(example), "--operator-config", str(config), "-n", "team-a", "--stage", "sft"])
        == 0
    )
    assert "valid RLHFRun 'opt-1-3b' on pool 'a100' in namespace 'team-a'" in capsys.readouterr().err

    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        example.read_text().replace(
            "  accelerator: nvidia\n", "  accelerator: nvidia\n  image: registry.evil/x\n"
        )
    )
    assert main(["validate", str(manifest), "--operator-config", str(config), "-n", "team-a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid RLHFRun {manifest}:\n")
    assert 'spec.image: registry.evil/x is not allowed by pool "a100" (allowed: the default ' in err

    assert main(["validate", str(example), "--operator-config", str(config), "-n", "team-b"]) == 2
    assert (
        'spec.accelerator: no nvidia pool of this cluster is open to namespace "team-b"'
        in capsys.readouterr().err
    )
    assert main(["validate", str(example), "--operator-config", str(config)]) == 2  # namespace "default"
    assert 'namespace "default"' in capsys.readouterr().err


def test_validate_operator_config_errors(tmp_path, capsys):
    from rlhf.cli import main

    example = ROOT / "examples" / "multi-tenant-kueue.yaml"  # metadata.namespace: team-a
    config = tmp_path / "operator.yaml"
    config.write_text(CLI_CONFIG)
    assert main(["validate", str(example), "--operator-config", str(config), "-n", "team-b"]) == 2
    assert "does not match the manifest's metadata.namespace team-a" in capsys.readouterr().err
    assert main(["validate", str(example), "-n", "team-a"]) == 2
    assert "--namespace goes with --operator-config" in capsys.readouterr().err
    config.write_text("pools: [{name: a100, accelerator: nvidia}]\n")
    assert main(["validate", str(example), "--operator-config", str(config)]) == 2
    assert (
        f"invalid operator configuration {config}:\n  pools[0].devicesPerNode: Field required"
        in capsys.readouterr().err
    )
    assert main(["validate", str(example), "--operator-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err
