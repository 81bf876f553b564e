"""The operator's own configuration: watched namespaces, default trainer images and node pools.

One YAML file (camelCase keys, all optional), from ``--config`` or env ``RLHF_OPERATOR_CONFIG``; the
Helm chart mounts it at ``/etc/rlhf-operator/config.yaml``::

    namespaces: []                      # empty: cluster-wide; else exactly these
    images: {nvidia: IMG, habana: IMG, cpu: IMG}
    pools:
      nvidia: {nodeSelector: {}, tolerations: [], devicesPerNode: 8}
      habana: {nodeSelector: {}, tolerations: [], devicesPerNode: 8, hugepages2Mi: 95000Mi}
      cpu:    {nodeSelector: {}, tolerations: [], devicesPerNode: 64}
    prepare: {cpu: "2", memory: 8Gi}
    resyncSeconds: 60                   # the slow timer that re-checks every run
    maxConcurrentReconciles: 8          # event-driven reconciles in flight at once (bounds memory)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rlhf.spec import Toleration
from rlhf.spec.base import DNS_LABEL

ENV_VAR = "RLHF_OPERATOR_CONFIG"
DEFAULT_PATH = "/etc/rlhf-operator/config.yaml"
#: The image tag the operator defaults to when the configuration names none.
DEFAULT_TAG = "0.1.0"


class ConfigError(ValueError):
    """The operator configuration is invalid; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Pool(_Model):
    """Where one accelerator's worker pods go, and how many devices each node has."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    devices_per_node: int = Field(8, ge=1)
    hugepages2_mi: str | None = Field(
        None, alias="hugepages2Mi", description="Gaudi: hugepages-2Mi per worker pod (default 95000Mi; '0': none)"
    )


class Images(_Model):
    """Default trainer image per accelerator (a run's spec.image overrides it)."""

    nvidia: str = f"rlhf-trainer-cuda:{DEFAULT_TAG}"
    habana: str = f"rlhf-trainer-gaudi:{DEFAULT_TAG}"
    cpu: str = f"rlhf-trainer-cuda:{DEFAULT_TAG}"


class Pools(_Model):
    nvidia: Pool = Field(default_factory=lambda: Pool(devices_per_node=8))
    habana: Pool = Field(default_factory=lambda: Pool(devices_per_node=8))
    cpu: Pool = Field(default_factory=lambda: Pool(devices_per_node=64))


class PrepareResources(_Model):
    """Resources of the prepare Job (downloads and tokenisation; no accelerator)."""

    cpu: str = "2"
    memory: str = "8Gi"


class OperatorConfig(_Model):
    """The whole configuration file."""

    namespaces: list[str] = Field(default_factory=list)
    images: Images = Field(default_factory=Images)
    pools: Pools = Field(default_factory=Pools)
    prepare: PrepareResources = Field(default_factory=PrepareResources)
    resync_seconds: float = Field(60.0, gt=0)
    #: Event-driven reconciles in flight at once. Each holds the bodies it read; without a bound,
    #: a burst of new runs raised the resident memory for good (300 runs at once: 140 MiB
    #: unbounded, 107-113 MiB with 1-16; ``bench/results/experiments/operator-300-*``).
    max_concurrent_reconciles: int = Field(8, ge=1)

    def pool(self, accelerator: str) -> Pool:
        return getattr(self.pools, accelerator)

    def image(self, accelerator: str) -> str:
        return getattr(self.images, accelerator)


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
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{where}:\n  " + "\n  ".join(lines)) from None
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
