"""Admission: is this RLHFRun something the operator can run on this cluster, and on which pool?

The RLHFRun's own checks (:func:`rlhf.api.load_manifest`: schema, rules, every stage's trainer
config) plus what only a cluster adds, all from the RLHFRun API: a PVC, well-formed scheduling
fields, and the admin-owned pool policy of the operator's configuration
(:meth:`rlhf.api.pools.PoolPolicy.check`: the pool the run may use, and what it may choose there).
Problems are ``field.path: message`` lines, the same for ``rlhf-operator render``, ``rlhf validate
--operator-config`` and the run's ``Valid`` condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhf.api import PREPARE, RLHFRun, SpecError, load_manifest, stage_configs
from rlhf.api.pools import AFFINITY_KEYS, DEFAULT_NAMESPACE, Pool
from rlhf_operator.config import OperatorConfig

__all__ = ["AFFINITY_KEYS", "DEFAULT_NAMESPACE", "AdmissionError", "Admitted", "admit"]


class AdmissionError(SpecError):
    """The run cannot be run here; ``problems`` name the manifest fields."""


@dataclass(frozen=True)
class Admitted:
    """A run the operator accepted: its pool and each stage's trainer config."""

    run: RLHFRun
    namespace: str
    configs: dict[str, dict[str, Any]]
    #: The admin-defined pool the run goes to (``spec.pool``, or the default for its accelerator).
    pool: Pool

    @property
    def name(self) -> str:
        return self.run.metadata.name

    @property
    def stages(self) -> list[str]:
        """The run's stages (``spec.pipeline``) in the order they start."""
        return self.run.spec.stage_order

    @property
    def steps(self) -> tuple[str, ...]:
        """prepare, then the stages."""
        return (PREPARE, *self.stages)


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
    try:
        configs = stage_configs(run)
    except SpecError as e:
        problems += e.problems
    namespace = run.metadata.namespace or DEFAULT_NAMESPACE
    pool, cluster = config.check(run, namespace)
    problems += cluster
    if problems or pool is None:
        raise AdmissionError(problems, source or repr(run.metadata.name))
    return Admitted(run=run, namespace=namespace, configs=configs, pool=pool)
