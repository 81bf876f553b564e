"""The operator's own configuration: watched namespaces, default trainer images, node pools and
the operator's runtime settings.

One YAML file (camelCase keys, all optional), from ``--config`` or env ``RLHF_OPERATOR_CONFIG``; the
Helm chart mounts it at ``/etc/rlhf-operator/config.yaml``::

    namespaces: []                      # empty: cluster-wide; else exactly these
    images: {nvidia: IMG, habana: IMG, cpu: IMG}   # default trainer image per accelerator
    pools:                              # admin-owned node pools (rlhf.api.pools): a run picks one by name
      - {name: nvidia, accelerator: nvidia, devicesPerNode: 8, tolerations: [...], namespaces: [], ...}
      - {name: habana, accelerator: habana, devicesPerNode: 8, hugepages2Mi: 95000Mi, privileged: false}
      - {name: cpu, accelerator: cpu, devicesPerNode: 64}
    prepare: {cpu: "2", memory: 8Gi}
    resyncSeconds: 60                   # the slow timer that re-checks every run
    maxConcurrentReconciles: 8          # event-driven reconciles in flight at once (bounds memory)

``images`` and ``pools`` are the cluster's tenancy policy, typed and checked by the RLHFRun API
(:class:`rlhf.api.pools.PoolPolicy`, which this configuration extends), so that ``rlhf validate
--operator-config`` applies exactly what the operator's admission does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from rlhf.api.base import DNS_LABEL, RuleViolation
from rlhf.api.pools import DEFAULT_TAG, Pool, PoolPolicy, TrainerImages, policy_errors

ENV_VAR = "RLHF_OPERATOR_CONFIG"
DEFAULT_PATH = "/etc/rlhf-operator/config.yaml"
__all__ = [
    "DEFAULT_TAG",
    "ConfigError",
    "OperatorConfig",
    "Pool",
    "PrepareResources",
    "TrainerImages",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The operator configuration is invalid; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class PrepareResources(_Model):
    """Resources of the prepare Job (downloads and tokenisation; no accelerator)."""

    cpu: str = "2"
    memory: str = "8Gi"


class OperatorConfig(PoolPolicy):
    """The whole configuration file: the pool policy (``images``, ``pools``) and the operator's own
    settings."""

    model_config = ConfigDict(strict=False)

    namespaces: list[str] = Field(default_factory=list)
    prepare: PrepareResources = Field(default_factory=PrepareResources)
    resync_seconds: float = Field(60.0, gt=0)
    #: Event-driven reconciles in flight at once. Each holds the bodies it read; without a bound,
    #: a burst of new runs raised the resident memory for good (300 runs at once: 140 MiB
    #: unbounded, 107-113 MiB with 1-16; ``bench/results/experiments/operator-300-*``).
    max_concurrent_reconciles: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _pools_within_watched_namespaces(self) -> OperatorConfig:
        """A pool naming a namespace the operator does not watch is a typo or a stale entry."""
        if not self.namespaces:
            return self
        failures: list[tuple[str | None, str]] = []
        for i, pool in enumerate(self.pools):
            for j, ns in enumerate(pool.namespaces):
                if ns not in self.namespaces:
                    failures.append(
                        (
                            f"pools[{i}].namespaces[{j}]",
                            f"{ns!r} is not one of the namespaces the "
                            f"operator watches ({', '.join(self.namespaces)})",
                        )
                    )
        if failures:
            raise RuleViolation(failures)
        return self


def _check_namespaces(config: OperatorConfig, where: str) -> None:
    for i, ns in enumerate(config.namespaces):
        if not re.match(DNS_LABEL, ns):
            raise ConfigError(f"{where}: namespaces[{i}]: {ns!r} is not a namespace name")


def parse_config(data: Any, where: str = "operator config") -> OperatorConfig:
    """An :class:`OperatorConfig` from parsed YAML (None or {} gives the defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    try:
        config = OperatorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}:\n  " + "\n  ".join(policy_errors(e, OperatorConfig))) from None
    _check_namespaces(config, where)
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> OperatorConfig:
    """Load the configuration from ``path``, else env ``RLHF_OPERATOR_CONFIG``, else
    :data:`DEFAULT_PATH` if it exists, else the defaults."""
    explicit = path or os.environ.get(ENV_VAR)
    target = Path(explicit) if explicit else Path(DEFAULT_PATH)
    if not explicit and not target.exists():
        return OperatorConfig()
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read operator config {target}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{target} is not valid YAML: {e}") from None
    return parse_config(data, str(target))
