"""Admission: is this RLHFRun something the operator can run on this cluster?

The RLHFRun's own checks (:func:`rlhf.spec.load_manifest`: schema, rules, every stage's trainer
config) plus what only the operator knows: its node pools and that a cluster needs a PVC. Problems
are ``field.path: message`` lines, the same for ``rlhf-operator render`` and the run's ``Valid``
condition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhf.spec import STAGE_NAMES, RLHFRun, SpecError, load_manifest, stage_config
from rlhf_operator.config import OperatorConfig

#: The parts of a core/v1 Affinity a run may set (all of it, but nothing else).
AFFINITY_KEYS = frozenset({"nodeAffinity", "podAffinity", "podAntiAffinity"})
DEFAULT_NAMESPACE = "default"
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
LABEL_VALUE = re.compile(rf"^({_NAME})?$")


def _label_problems(where: str, key: str | None, value: str | None) -> list[str]:
    """Kubernetes label syntax (nodeSelector, tolerations): the API server would reject the job."""
    out = []
    if key is not None and (not LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63 or len(key) > 317):
        out.append(f"{where}: {key!r} is not a valid label key")
    if value is not None and (not LABEL_VALUE.match(value) or len(value) > 63):
        out.append(f"{where}: {value!r} is not a valid label value")
    return out


class AdmissionError(SpecError):
    """The run cannot be run here; ``problems`` name the manifest fields."""


@dataclass(frozen=True)
class Admitted:
    """A run the operator accepted, with each stage's trainer config."""

    run: RLHFRun
    namespace: str
    configs: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.run.metadata.name


def _cluster_problems(run: RLHFRun, config: OperatorConfig) -> list[str]:
    spec = run.spec
    problems = []
    if spec.storage.pvc is None:
        problems.append("spec.storage.pvc: required on a cluster (spec.storage.localDir is for `rlhf run`)")
    pool = config.pool(spec.accelerator)
    for stage in STAGE_NAMES:
        wanted = spec.stages.get(stage).devices_per_node
        if wanted > pool.devices_per_node:
            problems.append(
                f"spec.stages.{stage}.devicesPerNode: {wanted} is more than the {pool.devices_per_node} "
                f"devices per node of this cluster's {spec.accelerator} pool"
            )
    for key, value in spec.scheduling.node_selector.items():
        if key in pool.node_selector and pool.node_selector[key] != value:
            problems.append(
                f"spec.scheduling.nodeSelector.{key}: {value!r} conflicts with the {spec.accelerator} "
                f"pool's {pool.node_selector[key]!r}"
            )
    for key, value in spec.scheduling.node_selector.items():
        problems += _label_problems(f"spec.scheduling.nodeSelector.{key}", key, value)
    for i, tol in enumerate(spec.scheduling.tolerations):
        problems += _label_problems(f"spec.scheduling.tolerations[{i}]", tol.key or None, tol.value)
    for key in sorted(set(spec.scheduling.affinity or {}) - AFFINITY_KEYS):
        problems.append(
            f"spec.scheduling.affinity.{key}: unknown field (expected {', '.join(sorted(AFFINITY_KEYS))})"
        )
    return problems


def admit(manifest: Mapping[str, Any], config: OperatorConfig, source: str = "") -> Admitted:
    """Check ``manifest`` (a dict, e.g. the object from the API server) and return the admitted run.

    Raises :class:`AdmissionError` with one line per problem, each naming the field at fault.
    """
    data = {k: v for k, v in manifest.items() if k != "status"}
    try:
        run = load_manifest(data, semantic=False)
    except SpecError as e:
        raise AdmissionError(e.problems, source) from None
    problems: list[str] = []
    configs: dict[str, dict[str, Any]] = {}
    for stage in STAGE_NAMES:
        try:
            configs[stage] = stage_config(run, stage)
        except SpecError as e:
            problems += [p for p in e.problems if p not in problems]
    problems += _cluster_problems(run, config)
    if problems:
        raise AdmissionError(problems, source or repr(run.metadata.name))
    return Admitted(run=run, namespace=run.metadata.namespace or DEFAULT_NAMESPACE, configs=configs)
