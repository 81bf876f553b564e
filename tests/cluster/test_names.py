"""Child names: ours and those the MPI operator and the Job controller derive from them never
collide, across runs, read from the MPI operator's own source."""

from __future__ import annotations

import itertools
import re

import k8s_components as components
import pytest
from rlhf_operator import names

from rlhf.api import MAX_NAME_LENGTH, STAGE_NAMES

#: The suffix constants in mpi_job_controller.go and what kind each names.
SOURCE_SUFFIXES = {
    "configSuffix": "ConfigMap",
    "sshAuthSecretSuffix": "Secret",
    "launcherSuffix": "Job",
    "workerSuffix": "Service",
}


@pytest.fixture(scope="module")
def mpi_suffixes() -> dict[str, str]:
    source = (
        components._module_dir("github.com/kubeflow/mpi-operator", components.MPI_OPERATOR_VERSION)
        / "pkg"
        / "controller"
        / "mpi_job_controller.go"
    ).read_text()
    found = dict(re.findall(r'^\s*(\w+Suffix)\s*=\s*"([^"]*)"', source, re.M))
    return {name: found[name] for name in SOURCE_SUFFIXES}


def test_our_table_of_the_mpi_operators_names_is_its_source(mpi_suffixes):
    for constant, kind in SOURCE_SUFFIXES.items():
        assert mpi_suffixes[constant] in names.MPI_OPERATOR_CHILDREN[kind], (constant, kind)


def objects_of(run: str) -> list[tuple[str, str]]:
    """(kind, name) of everything that exists for ``run``: ours, and what others derive from ours
    (pods by a pattern: ``*`` stands for the Job controller's random suffix, ``#`` a worker index)."""
    out = [("ConfigMap", names.config_map_name(run, step)) for step in names.steps(STAGE_NAMES)]
    out.append(("Job", names.job_name(run, names.PREPARE)))
    out.append(("Pod", names.job_name(run, names.PREPARE) + "-*"))
    for stage in STAGE_NAMES:
        job = names.job_name(run, stage)
        out += [("MPIJob", job), ("NetworkPolicy", names.network_policy_name(run, stage))]
        for kind, suffixes in names.MPI_OPERATOR_CHILDREN.items():
            for suffix in suffixes:
                out.append((kind, job + suffix + ("#" if kind == "Pod" else "")))
        out.append(("Pod", job + names.MPI_OPERATOR_CHILDREN["Job"][0] + "-*"))
    return out


def _same(a: str, b: str) -> bool:
    """Whether two name patterns can name the same object (``*``: 5 random characters of the Job
    controller's alphabet, ``#``: a worker index)."""

    def regex(pattern: str) -> str:
        return (
            re.escape(pattern).replace(r"\*", "[bcdfghjklmnpqrstvwxz2456789]{5}").replace("\\#", "[0-9]{1,4}")
        )

    return bool(re.fullmatch(regex(a), b.replace("*", "bbbbb").replace("#", "0"))) or a == b


#: Run names that share prefixes with each other's children.
TRICKY = [
    "a",
    "a-sft",
    "a-sft-trainer",
    "a-prepare",
    "a-run",
    "a-sft-launcher",
    "a-reward-worker",
    "a-ppo-config",
]


def test_no_two_runs_objects_share_a_name():
    for first, second in itertools.combinations(TRICKY, 2):
        for (kind_a, a), (kind_b, b) in itertools.product(objects_of(first), objects_of(second)):
            if kind_a == kind_b:
                assert not (_same(a, b) or _same(b, a)), f"{first} and {second}: {kind_a} {a} vs {b}"


def test_a_runs_own_objects_do_not_collide_with_each_other():
    objects = objects_of("run")
    for (kind_a, a), (kind_b, b) in itertools.combinations(objects, 2):
        if kind_a == kind_b:
            assert not (_same(a, b) or _same(b, a)), (kind_a, a, b)


def test_every_name_fits_kubernetes_limits():
    longest = "r" * MAX_NAME_LENGTH
    for _, name in objects_of(longest):
        assert len(name.replace("*", "bbbbb").replace("#", "9999")) <= 63, name
