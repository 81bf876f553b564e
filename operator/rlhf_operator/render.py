"""Rendering: an admitted RLHFRun -> the dicts of its children. Pure: no cluster, no clock.

One jinja2 template per child kind (``templates/*.j2``): the MPIJob of a stage, the ConfigMap of a
step, the prepare Job. The environment is strict (an undefined variable is an error) and every
value reaches the text through :func:`to_yaml_scalar` (the ``tojson`` filter), which writes it as a
JSON/YAML double-quoted scalar or flow collection; the text is then parsed by YAML's safe
loader (``yaml.safe_load``). So a newline, a quote, ``{{ }}``, ``&anchor`` or ``!!tag`` inside any string of
a manifest stays part of that string: no value can add or change a field.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from rlhf.api import PVC_MOUNT_PATH, STAGE_NAMES, config_text
from rlhf.api.environment import stage_process_env
from rlhf_operator import names
from rlhf_operator.admission import Admitted
from rlhf_operator.config import OperatorConfig
from rlhf_operator.profiles import profile

TEMPLATES = Path(__file__).parent / "templates"
#: The operator retries a failed stage itself (delete + recreate, the trainer resumes from its
#: checkpoint), so the MPIJob fails on the first error and its pods are fresh on each attempt.
MPIJOB_BACKOFF_LIMIT = 0
#: The prepare Job retries in place (downloads can be flaky; it resumes what it has).
PREPARE_BACKOFF_LIMIT = 2
LAUNCHER_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
ENTRYPOINT = "rlhf-entrypoint"
#: yaml.safe_load's loader, in C when libyaml is there (same safe constructor, ~10x faster).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def to_yaml_scalar(value: Any) -> str:
    """``value`` as JSON, with every character outside printable ASCII escaped (YAML reads
    ``\\uXXXX``/``\\UXXXXXXXX``; JSON's surrogate pairs and raw U+2028 would not survive)."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False)
    if text.isascii() and "\x7f" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, through libyaml when it can (it refuses lone surrogates, which no
    manifest from the API server can hold; the pure-Python safe loader takes those)."""
    if SAFE_LOADER is not yaml.SafeLoader:
        try:
            return yaml.load(text, Loader=SAFE_LOADER)
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


@cache
def environment() -> jinja2.Environment:
    """The template environment: strict undefined, no autoescape, our ``tojson``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["tojson"] = to_yaml_scalar
    return env


def render_template(name: str, context: dict[str, Any]) -> dict[str, Any]:
    """Render ``templates/<name>`` with ``context`` and parse the text as one YAML document."""
    text = environment().get_template(name).render(**context)
    data = load_yaml(text)
    if not isinstance(data, dict):
        raise ValueError(f"template {name} did not render a mapping")
    return data


# ---------------------------------------------------------------------------------------------
# The pieces every child shares.


def _meta(
    admitted: Admitted,
    step: str,
    name: str,
    uid: str | None,
    annotations: dict[str, str] | None = None,
    queued: bool = True,
) -> dict[str, Any]:
    """Metadata of a child; ``queued`` children (the jobs) carry the run's Kueue queue label."""
    labels = names.labels(admitted.name, step)
    queue = admitted.run.spec.scheduling.queue_name
    if queue and queued:
        labels[names.QUEUE_LABEL] = queue
    return {
        "name": name,
        "namespace": admitted.namespace,
        "labels": labels,
        "annotations": annotations or {},
        "owner_references": [names.owner_reference(admitted.name, uid)] if uid else [],
    }


def image(admitted: Admitted, config: OperatorConfig) -> str:
    """The trainer image: the run's spec.image (admission checked it against the pool's
    allowedImages), else the operator's default for its accelerator."""
    return admitted.run.spec.image or config.image(admitted.run.spec.accelerator)


def scheduling(admitted: Admitted, config: OperatorConfig) -> dict[str, Any]:
    """Node selection of every pod: the run's pool (admin-defined, operator config) merged with
    what the pool let the run add.

    The pool's nodeSelector keys win (admission rejects a run that contradicts them); tolerations
    are the pool's then the run's (each one the pool allows), without duplicates.
    """
    spec = admitted.run.spec
    pool = admitted.pool
    node_selector = {**spec.scheduling.node_selector, **pool.node_selector}
    tolerations: list[dict[str, Any]] = []
    for tol in [*pool.tolerations, *spec.scheduling.tolerations]:
        item = tol.model_dump(mode="json", by_alias=True, exclude_none=True)
        if item not in tolerations:
            tolerations.append(item)
    return {
        "node_selector": node_selector,
        "tolerations": tolerations,
        "affinity": spec.scheduling.affinity or {},
        "priority_class_name": spec.scheduling.priority_class_name,
    }


def storage(admitted: Admitted) -> dict[str, Any]:
    """The run's PVC, mounted at PVC_MOUNT_PATH (with its subPath) in every pod."""
    pvc = admitted.run.spec.storage.pvc
    if pvc is None:  # admission guarantees it; keep the error readable all the same
        raise ValueError("spec.storage.pvc: required on a cluster")
    return {"claim_name": pvc.claim_name, "sub_path": pvc.sub_path, "mount_path": PVC_MOUNT_PATH}


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


def trainer_env(admitted: Admitted) -> dict[str, str]:
    """Environment of every stage process (:func:`rlhf.api.environment.stage_process_env`): the
    accelerator for the entrypoint, offline Hub access, the collective library's defaults."""
    return stage_process_env(admitted.run.spec.accelerator)


# ---------------------------------------------------------------------------------------------
# The children.


def config_map(admitted: Admitted, step: str, uid: str | None) -> dict[str, Any]:
    """The ConfigMap of ``step``: a stage's trainer config (``config.yaml``) or, for the prepare
    Job, the run's manifest (``run.yaml``)."""
    if step == names.PREPARE:
        file_name, content = names.RUN_MANIFEST_FILE, run_manifest_text(admitted)
    else:
        file_name = names.STAGE_CONFIG_FILE
        content = config_text(admitted.configs[step])
    return render_template(
        "configmap.yaml.j2",
        {
            "meta": _meta(admitted, step, names.config_map_name(admitted.name, step), uid, queued=False),
            "file_name": file_name,
            "content": content,
        },
    )


def run_manifest_text(admitted: Admitted) -> str:
    """The run as ``rlhf prepare`` reads it: apiVersion, kind, name/namespace and the spec."""
    run = admitted.run
    manifest = {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "metadata": {"name": admitted.name, "namespace": admitted.namespace},
        "spec": run.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def _suspend_annotations(suspend: bool) -> dict[str, str]:
    return {names.SUSPENDED_BY_RUN: "true"} if suspend else {}


def prepare_job(
    admitted: Admitted, config: OperatorConfig, uid: str | None, suspend: bool = False
) -> dict[str, Any]:
    """The batch/v1 Job running ``rlhf prepare /etc/rlhf/run.yaml`` on the run's storage.

    No ``ttlSecondsAfterFinished``: the operator deletes finished jobs itself once their result is
    in the run's status (:mod:`rlhf_operator.reconcile`), so a job the TTL controller removed while
    the operator was down can never be taken for one that never ran."""
    spec = admitted.run.spec
    env: list[dict[str, Any]] = _env({"TOKENIZERS_PARALLELISM": "false"})
    if spec.hub_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": spec.hub_token_secret, "key": "HF_TOKEN"}},
            }
        )
    res = config.prepare
    meta = _meta(
        admitted,
        names.PREPARE,
        names.job_name(admitted.name, names.PREPARE),
        uid,
        _suspend_annotations(suspend),
    )
    return render_template(
        "prepare-job.yaml.j2",
        {
            **_pod_context(admitted, config, names.PREPARE),
            "meta": meta,
            "backoff_limit": PREPARE_BACKOFF_LIMIT,
            "suspend": suspend,
            "active_deadline_seconds": spec.run_policy.active_deadline_seconds,
            "pod": {
                "labels": names.labels(admitted.name, names.PREPARE),
                "container": "prepare",
                "command": ["rlhf", "prepare", f"{names.CONFIG_DIR}/{names.RUN_MANIFEST_FILE}"],
                "env": env,
                "resources": {
                    "requests": {"cpu": res.cpu, "memory": res.memory},
                    "limits": {"memory": res.memory},
                },
                "host_ipc": False,
                "add_capabilities": [],
                "shm": None,
                "ports": [],
                "probes": None,
                "restart_policy": "Never",
            },
        },
    )


def _pod_context(admitted: Admitted, config: OperatorConfig, step: str) -> dict[str, Any]:
    """What every pod of the run shares (the pod template macro's globals)."""
    return {
        "user": names.USER_ID,
        "scheduling": scheduling(admitted, config),
        "image": image(admitted, config),
        "storage": storage(admitted),
        "config_dir": names.CONFIG_DIR,
        "config_map": names.config_map_name(admitted.name, step),
    }


def mpirun_command(admitted: Admitted, stage: str) -> list[str]:
    """The launcher's command: the entrypoint wraps ``mpirun``, which starts one
    ``rlhf-entrypoint stage`` per device on the workers (hostfile written by the MPI operator).
    Ranks started over ssh do not see the pod's env, so ``-x`` forwards it."""
    stage_spec = admitted.run.spec.stages.get(stage)
    config_file = f"{names.CONFIG_DIR}/{names.STAGE_CONFIG_FILE}"
    forwarded = [arg for name in ["PATH", *trainer_env(admitted)] for arg in ("-x", name)]
    return [
        ENTRYPOINT,
        "launch",
        "--config",
        config_file,
        "--",
        "mpirun",
        "-np",
        str(stage_spec.nodes * stage_spec.devices_per_node),
        "--hostfile",
        names.HOSTFILE,
        "-wdir",
        PVC_MOUNT_PATH,
        "--bind-to",
        "none",
        "--map-by",
        "slot",
        *forwarded,
        ENTRYPOINT,
        "stage",
        stage,
        "--config",
        config_file,
    ]


def host_ipc(admitted: Admitted) -> bool:
    """Whether worker pods share the host's IPC namespace: the profile's need (Gaudi), granted
    only by a pool whose admin allowed privileged pods (admission refuses Gaudi runs elsewhere)."""
    return profile(admitted.run.spec.accelerator).host_ipc and admitted.pool.privileged


def added_capabilities(admitted: Admitted) -> list[str]:
    """Capabilities a worker container adds back after dropping ALL (Gaudi: SYS_NICE), under the
    same grant as :func:`host_ipc`."""
    caps = profile(admitted.run.spec.accelerator).add_capabilities
    return list(caps) if admitted.pool.privileged else []


def worker_resources(admitted: Admitted, config: OperatorConfig, stage: str) -> dict[str, Any]:
    """A worker pod's resources: its node's devices (limits), the stage's cpu/memory (requests =
    limits), and on Gaudi the pool's hugepages."""
    spec = admitted.run.spec
    stage_spec = spec.stages.get(stage)
    prof = profile(spec.accelerator)
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if prof.device_resource:
        limits[prof.device_resource] = stage_spec.devices_per_node
    for key in ("cpu", "memory"):
        value = getattr(stage_spec.resources, key)
        if value is not None:
            limits[key] = requests[key] = value
    hugepages = admitted.pool.hugepages2_mi or prof.hugepages
    if prof.hugepages and hugepages and hugepages != "0":
        limits["hugepages-2Mi"] = requests["hugepages-2Mi"] = hugepages
    out: dict[str, Any] = {"limits": limits}
    if requests:
        out["requests"] = requests
    return out


#: The workers' sshd (``rlhf-entrypoint sshd``): the launcher's mpirun connects here. Readiness
#: matters: the MPI operator starts the launcher once every worker is Ready
#: (``launcherCreationPolicy: WaitForWorkersReady``), i.e. once sshd accepts connections.
SSHD_PORT = 2222
SSHD_PROBES = {
    "startup": {"tcpSocket": {"port": SSHD_PORT}, "periodSeconds": 2, "failureThreshold": 150},
    "readiness": {"tcpSocket": {"port": SSHD_PORT}, "periodSeconds": 10, "failureThreshold": 3},
}
#: /dev/shm of a worker (NCCL and DataLoader workers need more than the runtime's 64Mi): half the
#: worker's memory when the stage declares it, else this. A memory-backed volume counts against
#: the pod's memory either way; the limit keeps a runaway writer from taking the node's.
DEFAULT_SHM = "16Gi"
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity_bytes(value: str) -> float:
    """A Kubernetes memory quantity (``512Gi``, ``64G``, ``1e9``, ``1000``) in bytes."""
    text = str(value).strip()
    for suffix, scale in _BINARY.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    if text[-1:] == "m":
        return float(text[:-1]) / 1000
    if text[-1:] in _DECIMAL and text[-1:].isalpha():
        return float(text[:-1]) * _DECIMAL[text[-1]]
    return float(text)


def shm_size(memory: str | None) -> str:
    """The /dev/shm size limit of a worker with ``memory`` (half of it, in Mi), or the default."""
    if memory is None:
        return DEFAULT_SHM
    return f"{max(64, int(quantity_bytes(memory) / 2 / 2**20))}Mi"


def mpijob(
    admitted: Admitted,
    config: OperatorConfig,
    stage: str,
    uid: str | None,
    attempt: int = 1,
    suspend: bool = False,
) -> dict[str, Any]:
    """The MPIJob of ``stage`` (its ``attempt``-th try), owned by the run.

    No ``ttlSecondsAfterFinished`` in its runPolicy: see :func:`prepare_job`."""
    if stage not in STAGE_NAMES:
        raise KeyError(f"unknown stage {stage!r}")
    spec = admitted.run.spec
    stage_spec = spec.stages.get(stage)
    prof = profile(spec.accelerator)
    run_policy: dict[str, Any] = {
        "backoffLimit": MPIJOB_BACKOFF_LIMIT,
        "cleanPodPolicy": "Running",
        "suspend": suspend,
    }
    if spec.run_policy.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    annotations = {names.ATTEMPT_ANNOTATION: str(attempt), **_suspend_annotations(suspend)}
    pod_labels = names.labels(admitted.name, stage)
    env = _env(trainer_env(admitted))
    return render_template(
        "mpijob.yaml.j2",
        {
            **_pod_context(admitted, config, stage),
            "meta": _meta(admitted, stage, names.job_name(admitted.name, stage), uid, annotations),
            "slots_per_worker": stage_spec.devices_per_node,
            "ssh_auth_mount_path": names.SSH_AUTH_MOUNT_PATH,
            "run_policy": run_policy,
            "workers": stage_spec.nodes,
            "launcher": {
                "labels": pod_labels,
                "container": "launcher",
                "command": mpirun_command(admitted, stage),
                "env": env,
                "resources": LAUNCHER_RESOURCES,
                "host_ipc": False,
                "add_capabilities": [],
                "shm": None,
                "ports": [],
                "probes": None,
                # the MPI operator sets it from the replica spec (and warns otherwise)
                "restart_policy": None,
            },
            "worker": {
                "labels": pod_labels,
                "container": "worker",
                "command": [ENTRYPOINT, "sshd"],
                "env": env,
                "resources": worker_resources(admitted, config, stage),
                "host_ipc": host_ipc(admitted),
                "add_capabilities": added_capabilities(admitted),
                "shm": shm_size(stage_spec.resources.memory) if prof.shm_volume else None,
                "ports": [{"name": "sshd", "containerPort": SSHD_PORT, "protocol": "TCP"}],
                "probes": SSHD_PROBES,
                "restart_policy": None,
            },
        },
    )


def network_policy(admitted: Admitted, stage: str, uid: str | None) -> dict[str, Any]:
    """The NetworkPolicy of ``stage``'s pods: reachable only from the same stage's pods. Named
    like the stage's MPIJob (a different kind; nothing else creates NetworkPolicies for it)."""
    pod_labels = names.labels(admitted.name, stage)
    return render_template(
        "networkpolicy.yaml.j2",
        {
            "meta": _meta(
                admitted, stage, names.network_policy_name(admitted.name, stage), uid, queued=False
            ),
            "pod_labels": pod_labels,
        },
    )


def children(admitted: Admitted, config: OperatorConfig, uid: str | None = None) -> list[dict[str, Any]]:
    """Every child the operator creates for the run, in creation order: the ConfigMaps, the
    stages' NetworkPolicies, the prepare Job, then one MPIJob per stage (first attempt). A suspended
    run gets its jobs as they are here once resumed (the operator starts no job while the run is
    suspended)."""
    out = [config_map(admitted, step, uid) for step in admitted.steps]
    out += [network_policy(admitted, stage, uid) for stage in admitted.stages]
    out.append(prepare_job(admitted, config, uid))
    out += [mpijob(admitted, config, stage, uid) for stage in admitted.stages]
    return out
