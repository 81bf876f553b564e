"""Rendering: golden MPIJobs, the upstream MPIJob CRD schema, Kubernetes 1.30 strict pod schemas,
platform profiles, and inert user strings."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv
from rlhf_operator import render
from rlhf_operator.admission import AdmissionError, admit
from rlhf_operator.cli import dump_yaml
from rlhf_operator.config import parse_config

from rlhf.api import load_manifest, read_manifest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
MPIJOB_CRD = ROOT.parent / "shared" / "schemas" / "kubeflow.org_mpijobs.yaml"
UID = "6f0c1d2e-0000-4000-8000-000000000001"
K8S_VERSION = "1.30.0"
UPDATE = os.environ.get("RLHF_UPDATE_GOLDEN") == "1"
#: Every example meant for a cluster (the local ones, run with `rlhf run`, use storage.localDir).
CLUSTER_EXAMPLES = sorted(
    p.name
    for p in (ROOT / "examples").glob("*.yaml")
    if "localDir" not in (yaml.safe_load(p.read_text())["spec"]["storage"])
)

#: What a run of the examples may choose (the variants below add a priority, a zone, a toleration,
#: a custom image and a Hub-token Secret).
_RUNS_MAY = {
    "allowedImages": ["registry.example/"],
    "allowedPriorityClasses": ["high"],
    "allowedHubTokenSecrets": ["hf-token"],
    "allowedNodeLabelKeys": ["topology.kubernetes.io/zone"],
    "allowedTolerations": [
        {
            "key": "dedicated",
            "operator": "Equal",
            "value": "ml",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        }
    ],
}
CONFIG = parse_config(
    {
        "images": {
            "nvidia": "registry.example/rlhf/trainer-cuda:1.0",
            "habana": "registry.example/rlhf/trainer-gaudi:1.0",
            "cpu": "registry.example/rlhf/trainer-cuda:1.0",
        },
        "pools": [
            # examples/multi-tenant-kueue.yaml names this pool; only its namespace may use it.
            {
                "name": "team-a-gpus",
                "accelerator": "nvidia",
                "devicesPerNode": 4,
                "namespaces": ["team-a"],
                "nodeSelector": {"node.kubernetes.io/pool": "team-a-gpu"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"},
                ],
                "allowedPriorityClasses": ["ml-batch-low"],
            },
            {
                "name": "nvidia",
                "accelerator": "nvidia",
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "devicesPerNode": 8,
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                **_RUNS_MAY,
            },
            {
                "name": "habana",
                "accelerator": "habana",
                "nodeSelector": {"habana.ai/gaudi.present": "true"},
                "devicesPerNode": 8,
                "privileged": True,
                "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"}],
                **_RUNS_MAY,
            },
            {"name": "cpu", "accelerator": "cpu", "devicesPerNode": 16, **_RUNS_MAY},
        ],
    }
)


def children(data: dict[str, Any], config=CONFIG) -> list[dict[str, Any]]:
    return render.children(admit(data, config), config, uid=UID)


def example(name: str) -> dict[str, Any]:
    data = read_manifest(ROOT / "examples" / name)
    data["metadata"].setdefault("namespace", "ml")
    return data


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "MPIJob":
        return [spec["template"] for spec in doc["spec"]["mpiReplicaSpecs"].values()]
    return [doc["spec"]["template"]] if doc["kind"] == "Job" else []


# ---------------------------------------------------------------------------------------------
# Golden files: the exact MPIJobs (and prepare Job) for NVIDIA and Gaudi.


@pytest.mark.parametrize(
    "golden, source",
    [
        ("nvidia-llama2-7b-lora-2x8", "llama2-7b-lora-2x8.yaml"),
        ("gaudi-bloom", "gaudi-bloom.yaml"),
    ],
)
def test_golden_jobs(golden, source):
    docs = [d for d in children(example(source)) if d["kind"] in ("MPIJob", "Job")]
    text = dump_yaml(docs)
    path = GOLDEN / f"{golden}.yaml"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; regenerate with RLHF_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"rendered jobs drifted from {path.name}; review the diff and regenerate with "
        "RLHF_UPDATE_GOLDEN=1 pytest tests/operator/test_render.py"
    )


# ---------------------------------------------------------------------------------------------
# Schemas: the upstream MPIJob CRD, and Kubernetes' own (strict) for pods, Jobs, ConfigMaps.


@pytest.fixture(scope="module")
def mpijob_schema() -> dict[str, Any]:
    if not MPIJOB_CRD.exists():
        pytest.skip(f"{MPIJOB_CRD} is absent (../shared is not next to this clone)")
    crd = yaml.safe_load(MPIJOB_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v2beta1")
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune: not in a structural schema's ``properties``."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def variants() -> list[tuple[str, dict[str, Any]]]:
    """Every cluster example, plus suspended, scheduled (queue, priority, affinity) and CPU runs."""
    out = [(name, example(name)) for name in CLUSTER_EXAMPLES]
    sched = example("opt-1.3b-single-node.yaml")
    sched["spec"]["runPolicy"] = {
        "suspend": True,
        "activeDeadlineSeconds": 7200,
        "ttlSecondsAfterFinished": 60,
    }
    sched["spec"]["scheduling"] = {
        "queueName": "q",
        "priorityClassName": "high",
        "nodeSelector": {"topology.kubernetes.io/zone": "z1"},
        "tolerations": [
            {
                "key": "dedicated",
                "operator": "Equal",
                "value": "ml",
                "effect": "NoExecute",
                "tolerationSeconds": 60,
            }
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"rlhf.dev/run": "opt-1-3b"}},
                        },
                    }
                ]
            }
        },
    }
    out.append(("scheduled+suspended", sched))
    cpu = example("opt-1.3b-single-node.yaml")
    cpu["spec"]["accelerator"] = "cpu"
    cpu["spec"]["hubTokenSecret"] = "hf-token"
    for stage in cpu["spec"]["stages"].values():
        stage["dtype"] = "bf16"
        stage["devicesPerNode"] = 4
    out.append(("cpu", cpu))
    return out


@pytest.mark.parametrize("name, data", variants(), ids=[n for n, _ in variants()])
def test_mpijobs_match_the_upstream_crd_schema(name, data, mpijob_schema):
    mpijobs = of_kind(children(data), "MPIJob")
    assert len(mpijobs) == 3
    for job in mpijobs:
        jsonschema.validate(job, mpijob_schema, cls=jsonschema.Draft7Validator)
        assert unknown_fields(job, mpijob_schema) == [], f"{name}: fields the API server would prune"


@pytest.mark.parametrize("name, data", variants(), ids=[n for n, _ in variants()])
def test_pods_jobs_and_config_maps_validate_strictly_against_kubernetes_1_30(name, data):
    for doc in children(data):
        if doc["kind"] in ("Job", "ConfigMap"):
            kv.validate(doc, K8S_VERSION, strict=True)
        for i, template in enumerate(pod_templates(doc)):
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{doc['metadata']['name']}-{i}"},
                "template": template,
            }
            kv.validate(pod_template, K8S_VERSION, strict=True)


def test_strict_validation_catches_an_unknown_pod_field():
    template = copy.deepcopy(pod_templates(of_kind(children(example("gaudi-bloom.yaml")), "MPIJob")[0])[1])
    template["spec"]["containers"][0]["privileged"] = True  # belongs in securityContext
    with pytest.raises(kv.ValidationError):
        kv.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template},
            K8S_VERSION,
            strict=True,
        )


# ---------------------------------------------------------------------------------------------
# What the profiles put in the jobs.


def _replicas(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    specs = job["spec"]["mpiReplicaSpecs"]
    return specs["Launcher"], specs["Worker"]


def test_nvidia_mpijob():
    jobs = {
        j["metadata"]["labels"]["rlhf.dev/stage"]: j
        for j in of_kind(children(example("llama2-7b-lora-2x8.yaml")), "MPIJob")
    }
    job = jobs["sft"]
    assert job["metadata"]["name"] == "llama2-7b-lora-sft" and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rlhf.dev/v1alpha1",
            "kind": "RLHFRun",
            "name": "llama2-7b-lora",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "rlhf-operator",
        "rlhf.dev/run": "llama2-7b-lora",
        "rlhf.dev/stage": "sft",
    }
    spec = job["spec"]
    assert (
        spec["slotsPerWorker"],
        spec["launcherCreationPolicy"],
        spec["mpiImplementation"],
        spec["sshAuthMountPath"],
    ) == (8, "WaitForWorkersReady", "OpenMPI", "/home/mpiuser/.ssh")
    assert spec["runPolicy"] == {"backoffLimit": 0, "cleanPodPolicy": "Running", "suspend": False}
    launcher, worker = _replicas(job)
    assert worker["replicas"] == 2 and launcher["replicas"] == 1
    wpod, lpod = worker["template"]["spec"], launcher["template"]["spec"]
    wc, lc = wpod["containers"][0], lpod["containers"][0]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert wc["resources"]["requests"] == {"cpu": "96", "memory": "1000Gi"}
    assert wc["command"] == ["rlhf-entrypoint", "sshd"]
    cmd = lc["command"]
    assert cmd[:5] == ["rlhf-entrypoint", "launch", "--config", "/etc/rlhf/config.yaml", "--"]
    assert cmd[5:8] == ["mpirun", "-np", "16"] and cmd[cmd.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    assert cmd[-5:] == ["rlhf-entrypoint", "stage", "sft", "--config", "/etc/rlhf/config.yaml"]
    env = {e["name"]: e["value"] for e in wc["env"]}
    assert env["RLHF_ACCELERATOR"] == "cuda" and env["NCCL_DEBUG"] == "WARN" and env["HF_HUB_OFFLINE"] == "1"
    for name in env:
        assert cmd[cmd.index(name) - 1] == "-x", f"{name} is not forwarded to the ranks"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "512000Mi"}} in wpod["volumes"]
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "rlhf-shared"}} in wpod["volumes"]
    mounts = {m["name"]: m for m in wc["volumeMounts"]}
    assert mounts["storage"] == {"name": "storage", "mountPath": "/mnt/rlhf", "subPath": "llama2-7b-lora"}
    assert mounts["config"]["mountPath"] == "/etc/rlhf"
    assert {"name": "config", "configMap": {"name": "llama2-7b-lora-sft-trainer"}} in lpod["volumes"]
    for pod in (wpod, lpod):
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert "hostIPC" not in pod and "hostNetwork" not in pod
    assert lc["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "nvidia.com/gpu" not in str(lc["resources"])
    assert jobs["ppo"]["metadata"]["annotations"] == {"rlhf.dev/attempt": "1"}


def test_gaudi_mpijob():
    job = of_kind(children(example("gaudi-bloom.yaml")), "MPIJob")[0]
    assert job["spec"]["slotsPerWorker"] == 8
    launcher, worker = _replicas(job)
    pod = worker["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostIPC"] is True
    assert container["securityContext"]["capabilities"]["add"] == ["SYS_NICE"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["habana.ai/gaudi"] == 8
    assert limits["hugepages-2Mi"] == requests["hugepages-2Mi"] == "95000Mi"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RLHF_ACCELERATOR"] == "hpu" and "PT_HPU_LAZY_MODE" in env
    assert all(v["name"] != "dshm" for v in pod["volumes"])
    assert container["image"] == "registry.example/rlhf/trainer-gaudi:1.0"
    assert "hostIPC" not in launcher["template"]["spec"]


def test_scheduling_is_merged_with_the_pool_and_jobs_are_queued():
    docs = children(dict(variants())["scheduled+suspended"])
    job = of_kind(docs, "MPIJob")[0]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    # No ttlSecondsAfterFinished: the operator deletes finished jobs itself, once it recorded them.
    assert job["spec"]["runPolicy"] == {
        "backoffLimit": 0,
        "cleanPodPolicy": "Running",
        "suspend": False,
        "activeDeadlineSeconds": 7200,
    }
    pod = _replicas(job)[1]["template"]["spec"]
    assert pod["priorityClassName"] == "high"
    assert pod["nodeSelector"] == {"topology.kubernetes.io/zone": "z1", "nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert "podAntiAffinity" in pod["affinity"]
    prepare = of_kind(docs, "Job")[0]
    assert prepare["spec"]["activeDeadlineSeconds"] == 7200
    suspended = render.prepare_job(
        admit(dict(variants())["scheduled+suspended"], CONFIG), CONFIG, UID, suspend=True
    )
    assert suspended["spec"]["suspend"] is True
    assert suspended["metadata"]["annotations"] == {"rlhf.dev/suspended-by-run": "true"}
    assert prepare["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert all("kueue.x-k8s.io/queue-name" not in d["metadata"]["labels"] for d in of_kind(docs, "ConfigMap"))


def test_prepare_job_and_config_maps():
    docs = children(dict(variants())["cpu"])
    prepare = of_kind(docs, "Job")[0]
    container = prepare["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["rlhf", "prepare", "/etc/rlhf/run.yaml"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    } in container["env"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    maps = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap")}
    run_yaml = yaml.safe_load(maps["opt-1-3b-run"]["data"]["run.yaml"])
    assert run_yaml["metadata"] == {"name": "opt-1-3b", "namespace": "ml"}
    assert run_yaml["spec"]["accelerator"] == "cpu"
    assert (
        load_manifest(run_yaml).spec == admit(dict(variants())["cpu"], CONFIG).run.spec
    )  # what prepare reads
    sft = yaml.safe_load(maps["opt-1-3b-sft-trainer"]["data"]["config.yaml"])
    assert sft["checkpoint"]["output_dir"] == "/mnt/rlhf/sft"
    worker = of_kind(docs, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"][
        "containers"
    ][0]
    assert "limits" in worker["resources"] and not any("/" in k for k in worker["resources"]["limits"])


# ---------------------------------------------------------------------------------------------
# Admission problems the operator adds to the spec's own.


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["spec"]["stages"]["ppo"].update(devicesPerNode=9), "spec.stages.ppo.devicesPerNode"),
        (lambda d: d["spec"].update(storage={"localDir": "runs/x"}), "spec.storage.pvc"),
        (
            lambda d: d["spec"].update(scheduling={"nodeSelector": {"nvidia.com/gpu.present": "false"}}),
            "spec.scheduling.nodeSelector.nvidia.com/gpu.present",
        ),
        (
            lambda d: d["spec"].update(scheduling={"nodeSelector": {"zone": "a b"}}),
            "spec.scheduling.nodeSelector.zone",
        ),
        (
            lambda d: d["spec"].update(scheduling={"affinity": {"hostNetwork": True}}),
            "spec.scheduling.affinity.hostNetwork",
        ),
        (
            lambda d: d["spec"]["stages"]["sft"].update(trainerOptions={"optim.bogus": 1}),
            "spec.stages.sft.trainerOptions",
        ),
    ],
)
def test_admission_names_the_field(change, field):
    data = example("opt-1.3b-single-node.yaml")
    change(data)
    with pytest.raises(AdmissionError) as info:
        admit(data, CONFIG)
    assert any(p.startswith(field) for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------------------------------------
# Injection: every string a user can write stays one inert string.

PAYLOAD = (
    "x\n  injected: true\nkind: Secret\n\"'` {{ 7*7 }} {% raw %}{% endraw %} "
    "&a *a !!python/object/apply:os.system [id] --- \\n \u2028 \x85 \x07 \U0001f600 }} #"
)
MARKER = "inert marker"  # not a Hub id either, like the payload


def string_paths(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every string value (and every mapping key, as (..., ("key", k))) in ``obj``."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*path, ("key", k)))
            out += string_paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += string_paths(v, (*path, i))
    elif isinstance(obj, str):
        out.append(path)
    return out


def put(data: Any, path: tuple, value: str) -> Any:
    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if isinstance(last, tuple):  # a mapping key
        node[value] = node.pop(last[1])
    else:
        node[last] = value
    return data


def normalised(docs: list[dict[str, Any]], text: str) -> Any:
    """The docs with embedded YAML files parsed, and ``text`` replaced by the marker everywhere."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {walk(k): walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        if isinstance(obj, str):  # (the spec stores Hub ids in storage as org--name)
            return obj.replace(text, MARKER).replace(text.replace("/", "--"), MARKER)
        return obj

    docs = copy.deepcopy(docs)
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
    return walk(docs)


def injection_base() -> dict[str, Any]:
    data = dict(variants())["scheduled+suspended"]
    data["spec"]["image"] = "registry.example/custom:1"
    data["spec"]["hubTokenSecret"] = "hf-token"
    data["spec"]["models"]["tokenizer"] = "facebook/opt-1.3b"
    data["spec"]["data"]["sftOnlyDatasets"] = [{"path": "org/sft-data"}]
    data["spec"]["stages"]["sft"]["lora"] = {"dim": 8, "targetModules": ["q_proj"]}
    data["spec"]["stages"]["sft"]["trainerOptions"]["optim.lr_scheduler"] = "cosine"
    data["metadata"]["labels"] = {"team": "a"}
    data["metadata"]["annotations"] = {"note": "n"}
    return data


def test_injection_through_every_string_field_stays_inert():
    base = injection_base()
    admitted_paths = 0
    for path in string_paths(base):
        if path[:2] == ("metadata", "name") or path[-1] in (("key", "apiVersion"), ("key", "kind")):
            continue
        try:
            injected = children(put(base, path, PAYLOAD))
        except AdmissionError:
            continue  # refused at admission: nothing rendered, equally inert
        admitted_paths += 1
        reference = children(put(base, path, MARKER))
        assert normalised(injected, PAYLOAD) == normalised(reference, MARKER), path
        assert list(yaml.safe_load_all(dump_yaml(injected))) == injected  # the CLI's output too
    assert admitted_paths >= 8, "too few string fields reached the templates"


def test_to_yaml_scalar_round_trips_awkward_strings():
    for text in (PAYLOAD, "\ud800", "a\u2028b", "\x00\x7f", "{{ x }}", "&x *x", ": - ? |", "'\"\\"):
        assert yaml.safe_load(render.to_yaml_scalar(text)) == text
        assert render.load_yaml(render.to_yaml_scalar({text: [text]})) == {text: [text]}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_launcher_command_is_one_the_trainer_image_accepts(name):
    """The launcher runs ``rlhf-entrypoint launch -- mpirun ... rlhf-entrypoint stage STAGE``: both
    commands must parse with the image's own entrypoint, for every stage kind of every example."""
    from rlhf_entrypoint.entrypoint import build_parser

    parser = build_parser()
    data = example(name)
    data["spec"]["storage"] = {"pvc": {"claimName": "rlhf"}}  # the local examples' localDir too
    jobs = of_kind(children(data), "MPIJob")
    assert {j["metadata"]["labels"]["rlhf.dev/stage"] for j in jobs} == set(
        read_manifest(ROOT / "examples" / name)["spec"].get("pipeline", ["sft", "reward", "ppo"])
    )
    for job in jobs:
        launcher, _ = _replicas(job)
        command = launcher["template"]["spec"]["containers"][0]["command"]
        assert command[0] == render.ENTRYPOINT
        outer = parser.parse_args(command[1:])
        assert outer.command == "launch"
        inner = command[command.index(render.ENTRYPOINT, 1) + 1 :]
        parsed = parser.parse_args(inner)
        assert (parsed.command, parsed.stage) == ("stage", job["metadata"]["labels"]["rlhf.dev/stage"])
