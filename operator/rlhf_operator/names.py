"""Names, labels and annotations of the objects the operator creates: one place, deterministic.

Every child of run ``R`` is named from ``R`` alone, so an operator restart or a duplicated event
finds the same objects instead of creating new ones. Run names are at most
:data:`rlhf.api.MAX_NAME_LENGTH` (40) characters, which keeps every name below within 63.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rlhf.api import API_VERSION, KIND, MAX_NAME_LENGTH, STAGE_NAMES
from rlhf.api.graph import DEFAULT_PIPELINE

#: The batch/v1 Job that fills the run's storage before the stages (not an MPIJob).
PREPARE = "prepare"


def steps(stages: Iterable[str]) -> tuple[str, ...]:
    """The steps of a run with ``stages``: prepare, then the stages."""
    return (PREPARE, *stages)


def stages_of(body: Mapping[str, Any]) -> list[str]:
    """The stages of a run as the API server stored it (before admission; unknown names dropped)."""
    spec = body.get("spec") or {}
    pipeline = spec.get("pipeline") if isinstance(spec, Mapping) else None
    if not isinstance(pipeline, list):
        pipeline = list(DEFAULT_PIPELINE)
    return [s for s in STAGE_NAMES if s in pipeline]


MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR_NAME = "rlhf-operator"
RUN_LABEL = "rlhf.dev/run"
STAGE_LABEL = "rlhf.dev/stage"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Which attempt of a stage an MPIJob is (1 = first); a failed attempt k means k failures so far.
ATTEMPT_ANNOTATION = "rlhf.dev/attempt"
#: Set on a child the operator suspended because the run is suspended (Kueue may suspend others).
SUSPENDED_BY_RUN = "rlhf.dev/suspended-by-run"

# Labels the MPI operator puts on the pods of an MPIJob.
MPI_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
MPI_JOB_ROLE_LABEL = "training.kubeflow.org/job-role"

RUN_API_VERSION = API_VERSION
RUN_KIND = KIND
MPIJOB_API_VERSION = "kubeflow.org/v2beta1"

#: Where things live inside the pods.
CONFIG_DIR = "/etc/rlhf"
STAGE_CONFIG_FILE = "config.yaml"
RUN_MANIFEST_FILE = "run.yaml"
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
HOSTFILE = "/etc/mpi/hostfile"
USER_ID = 1000

#: What a stage's ConfigMap name ends with. Not ``-config``: the MPI operator names its own hostfile
#: ConfigMap ``<mpijob>-config``, which for our MPIJob ``<run>-<stage>`` is ``<run>-<stage>-config``;
#: when that name is taken it refuses to run the job (``ErrResourceExists``) and the stage hangs.
STAGE_CONFIG_SUFFIX = "-trainer"
#: Names other controllers derive from ours, by kind, as suffixes of the parent's name: the MPI
#: operator's children of an MPIJob (mpi_job_controller.go: configSuffix, sshAuthSecretSuffix,
#: launcherSuffix, workerSuffix, and a Service named after the MPIJob itself) and the Job
#: controller's pods of a Job (``<job>-<5 random characters>``). tests/cluster/test_names.py checks
#: this table against the MPI operator's source and that no two runs' objects can share a name.
MPI_OPERATOR_CHILDREN = {
    "ConfigMap": ("-config",),
    "Secret": ("-ssh",),
    "Job": ("-launcher",),
    "Service": ("", "-worker"),
    "Pod": ("-worker-",),
}
_LONGEST_SUFFIX = "-reward" + STAGE_CONFIG_SUFFIX
assert MAX_NAME_LENGTH + len(_LONGEST_SUFFIX) <= 63


def job_name(run: str, step: str) -> str:
    """The stage's MPIJob (or the prepare Job): ``<run>-<step>``."""
    return f"{run}-{step}"


def config_map_name(run: str, step: str) -> str:
    """The ConfigMap mounted at /etc/rlhf in the step's pods: a stage's trainer config
    (``<run>-<stage>-trainer``), or the run's manifest for the prepare Job (``<run>-run``)."""
    return f"{run}-run" if step == PREPARE else f"{run}-{step}{STAGE_CONFIG_SUFFIX}"


def network_policy_name(run: str, stage: str) -> str:
    """The NetworkPolicy of a stage's pods: named like its MPIJob (a different kind)."""
    return job_name(run, stage)


def labels(run: str, step: str) -> dict[str, str]:
    """Labels of every child of ``run`` for ``step`` (also on their pods)."""
    return {MANAGED_BY: OPERATOR_NAME, RUN_LABEL: run, STAGE_LABEL: step}


def selector() -> str:
    """Label selector of everything the operator manages."""
    return f"{MANAGED_BY}={OPERATOR_NAME}"


def launcher_selector(mpijob: str) -> str:
    """Label selector of the launcher pod(s) of an MPIJob, as the MPI operator labels them."""
    return f"{MPI_JOB_NAME_LABEL}={mpijob},{MPI_JOB_ROLE_LABEL}=launcher"


def owner_reference(name: str, uid: str) -> dict[str, object]:
    """The ownerReference every child carries: deleting the run deletes them."""
    return {
        "apiVersion": RUN_API_VERSION,
        "kind": RUN_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
