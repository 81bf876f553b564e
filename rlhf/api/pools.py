"""Admin-owned node pools: where a run may go on a shared cluster, and what it may choose there.

The platform team defines the pools in the operator's configuration (Helm value ``pools``), as
Kubeflow Trainer's admin-owned ClusterTrainingRuntimes define where and how TrainJobs run; a run
names one (``spec.pool``) or gets the first pool for its accelerator that its namespace may use::

    images: {nvidia: IMG, habana: IMG, cpu: IMG}   # default trainer image per accelerator
    pools:
      - name: a100                        # what spec.pool names (a DNS label, unique)
        accelerator: nvidia               # nvidia | habana | cpu
        devicesPerNode: 8                 # devices (GPUs, Gaudi cards; cores for cpu) of one node
        nodeSelector: {pool: a100}        # every pod of a run on this pool gets these ...
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]   # ... and these
        namespaces: [team-a]              # who may use it; empty: every namespace the operator watches
        allowedImages: [registry.example.com/ml/]         # trainer images besides the default
        allowedPriorityClasses: [ml-batch-low]            # spec.scheduling.priorityClassName
        allowedHubTokenSecrets: [hf-token]                # spec.hubTokenSecret
        allowedNodeLabelKeys: [topology.kubernetes.io/zone]   # spec.scheduling.nodeSelector / nodeAffinity
        allowedTolerations: [{key: spot, operator: Exists, effect: NoSchedule}]  # a run may add, verbatim
      - name: gaudi2
        accelerator: habana
        devicesPerNode: 8
        hugepages2Mi: 95000Mi             # habana: hugepages-2Mi of each worker pod ('0': none)
        privileged: true                  # habana: allow the hostIPC and SYS_NICE Gaudi training needs

Everything a run asks for beyond its pool is refused, one ``field.path: message`` line each,
by the operator's admission (``Valid=False``, reason ``InvalidSpec``), ``rlhf-operator render``
and ``rlhf validate --operator-config`` alike: all three call :meth:`PoolPolicy.check`. ``rlhf run``
(one machine) has no pools and ignores ``spec.pool``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from rlhf.api.base import DNS_LABEL, DNS_SUBDOMAIN, Quantity, RuleViolation
from rlhf.api.errors import SpecError, problems_from
from rlhf.api.run import Accelerator, RLHFRun, Toleration
from rlhf.config import ConfigError

#: The image tag of the default trainer images when the configuration names none.
DEFAULT_TAG = "0.1.0"
#: The namespace of a run whose manifest names none (as kubectl does).
DEFAULT_NAMESPACE = "default"
#: Accelerators whose worker pods need more than the PodSecurity "restricted" level, and what.
#: Gaudi's driver and HCCL share memory through the host's IPC namespace and raise thread priorities.
PRIVILEGED_NEEDS: dict[str, str] = {"habana": "hostIPC and the SYS_NICE capability"}
#: Keys of the operator configuration that hold the policy (the rest is the operator's own settings).
POLICY_KEYS = ("images", "pools")

# Kubernetes label syntax (nodeSelector keys and values, toleration keys, node-affinity keys).
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
LABEL_VALUE = re.compile(rf"^({_NAME})?$")

# Image references (the distribution reference grammar): [domain[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH}(?::[\w][\w.-]{{0,127}})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{{32,}})?$"
)
#: An allowedImages entry: a registry (``registry.example.com``, ``localhost:5000``), a registry
#: path ending in '/' (``registry.example.com/ml/``), a repository, or one exact image.
IMAGE_PREFIX = re.compile(rf"^(?:{_DOMAIN}/?|(?:{_DOMAIN}/)?{_PATH}/?|{IMAGE_REFERENCE.pattern[1:-1]})$")


def _label_failures(where: str, key: str | None, value: str | None = None) -> list[tuple[str, str]]:
    out = []
    if key is not None and (not LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63 or len(key) > 317):
        out.append((where, f"{key!r} is not a valid label key"))
    if value is not None and (not LABEL_VALUE.match(value) or len(value) > 63):
        out.append((where, f"{value!r} is not a valid label value"))
    return out


def label_problems(where: str, key: str | None, value: str | None = None) -> list[str]:
    """Kubernetes label syntax of ``key`` (and ``value``): the API server would reject the pods."""
    return [f"{field}: {message}" for field, message in _label_failures(where, key, value)]


# ---------------------------------------------------------------------------------------------
# Image references


_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


def _is_domain(part: str) -> bool:
    """Whether the first component of a reference is a registry (the container runtimes' rule)."""
    return "." in part or ":" in part or part == "localhost"


def _is_registry_entry(entry: str) -> bool:
    """An allowedImages entry without '/' names a registry when it looks like a host: a dot,
    or localhost (``ubuntu:22.04`` is an image, ``localhost:5000`` and ``registry.local`` registries)."""
    host = entry.split(":", 1)[0]
    return "/" not in entry and ("." in host or host == "localhost")


def _split(reference: str) -> tuple[str, str]:
    """(registry, path) of a reference; Docker Hub when it names none."""
    first, sep, rest = reference.partition("/")
    if sep and _is_domain(first):
        return ("docker.io" if first in _DOCKER_HUB_ALIASES else first), rest
    return "docker.io", reference


def normalize_image(reference: str) -> str:
    """``reference`` with its registry written out as the container runtime resolves it:
    ``ubuntu`` -> ``docker.io/library/ubuntu``, ``org/x`` -> ``docker.io/org/x``."""
    domain, path = _split(reference)
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return f"{domain}/{path}"


def _repository(reference: str) -> str:
    """The normalized repository of an image (no tag, no digest)."""
    name = normalize_image(reference).split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_allowed(image: str, prefix: str) -> bool:
    """Whether ``image`` is covered by the allowedImages entry ``prefix``, on path-component
    boundaries (``registry.example.com/ml`` covers ``registry.example.com/ml/x:1`` but not
    ``registry.example.com/ml-evil/x``). Both are compared with their registry written out
    (``ubuntu`` is ``docker.io/library/ubuntu``). An entry with a tag or digest covers that image only."""
    if not IMAGE_REFERENCE.match(image):
        return False
    bare = prefix.rstrip("/")
    if _is_registry_entry(bare):  # a registry: every image it serves
        domain = "docker.io" if bare in _DOCKER_HUB_ALIASES else bare
        return normalize_image(image).startswith(f"{domain}/")
    if prefix.endswith("/"):  # a registry path: every repository below it
        return normalize_image(image).startswith("/".join(_split(bare)) + "/")
    if "@" in prefix or _repository(prefix) != normalize_image(prefix):  # one exact image
        return normalize_image(image) == normalize_image(prefix)
    repository = _repository(image)  # a repository: any tag or digest of it, and repositories below it
    return repository == _repository(prefix) or repository.startswith(f"{_repository(prefix)}/")


# ---------------------------------------------------------------------------------------------
# Tolerations


def _toleration_key(tol: Toleration) -> tuple[Any, ...]:
    """A toleration with Kubernetes' defaults applied (operator Equal), for exact comparison."""
    return (tol.key or "", tol.operator or "Equal", tol.value or "", tol.effect or "", tol.toleration_seconds)


def is_wildcard(tol: Toleration) -> bool:
    """A toleration with no key and operator Exists tolerates every taint."""
    return not tol.key and tol.operator == "Exists"


def toleration_text(tol: Toleration) -> str:
    """A toleration the way ``kubectl taint`` writes taints: ``key=value:Effect``."""
    if is_wildcard(tol):
        text = "every taint (no key, operator Exists)"
    elif tol.operator == "Exists":
        text = f"{tol.key} (Exists)"
    else:
        text = f"{tol.key}={tol.value or ''}"
    text += f":{tol.effect}" if tol.effect else " (every effect)"
    if tol.toleration_seconds is not None:
        text += f" for {tol.toleration_seconds}s"
    return text


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


# ---------------------------------------------------------------------------------------------
# The policy types


class PolicyError(ConfigError):
    """The pool policy of an operator configuration is invalid; ``problems`` name the fields."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = list(problems)
        where = f" {source}" if source else ""
        super().__init__(
            f"invalid operator configuration{where}:\n" + "\n".join(f"  {p}" for p in self.problems)
        )


class PolicyModel(BaseModel):
    """Base of the policy types: camelCase keys, unknown keys refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True)


ImageReference = Annotated[str, Field(min_length=1, max_length=1024)]


class TrainerImages(PolicyModel):
    """The default trainer image per accelerator: what a run without ``spec.image`` runs, and
    always allowed whatever the pool's ``allowedImages``."""

    nvidia: ImageReference = f"rlhf-trainer-cuda:{DEFAULT_TAG}"
    habana: ImageReference = f"rlhf-trainer-gaudi:{DEFAULT_TAG}"
    cpu: ImageReference = f"rlhf-trainer-cuda:{DEFAULT_TAG}"

    @model_validator(mode="after")
    def _check_references(self) -> TrainerImages:
        failures = [
            (name, f"{value!r} is not an image reference (registry/repository:tag or @sha256:...)")
            for name, value in self.model_dump().items()
            if not IMAGE_REFERENCE.match(value)
        ]
        if failures:
            raise RuleViolation(failures)
        return self

    def of(self, accelerator: str) -> str:
        return getattr(self, accelerator)


class Pool(PolicyModel):
    """One admin-defined node pool: its nodes, what its pods get, who may use it, and what a run
    on it may choose for itself."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="What spec.pool names")
    accelerator: Accelerator = Field(description="nvidia, habana or cpu: the runs this pool takes")
    devices_per_node: int = Field(
        ge=1,
        description="Devices one node offers (GPUs, Gaudi cards; CPU cores for cpu): the most a stage's "
        "devicesPerNode may ask",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels of every pod on the pool"
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of every pod on the pool"
    )
    hugepages2_mi: Quantity | None = Field(
        None,
        alias="hugepages2Mi",
        description="habana: hugepages-2Mi of each worker pod (default 95000Mi; '0': none)",
    )
    privileged: bool = Field(
        False,
        description="habana: allow the hostIPC and SYS_NICE that Gaudi training needs (the namespace then "
        "needs the PodSecurity level privileged). Off: habana runs are refused on this pool",
    )
    namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list,
        description="Namespaces whose runs may use the pool; empty: every namespace",
    )
    allowed_images: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list,
        description="Trainer images a run may name in spec.image besides the default: a registry "
        "(registry.example.com), a registry path (registry.example.com/ml/), a repository (any tag or "
        "digest of it and repositories below it) or one exact image (with :tag or @digest)",
    )
    allowed_priority_classes: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        default_factory=list,
        description="PriorityClasses a run may name (spec.scheduling.priorityClassName)",
    )
    allowed_hub_token_secrets: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        default_factory=list,
        description="Secret names a run may give as spec.hubTokenSecret",
    )
    allowed_node_label_keys: list[str] = Field(
        default_factory=list,
        description="Node label keys a run may select on, in spec.scheduling.nodeSelector "
        "and the nodeAffinity of spec.scheduling.affinity (the pool's own nodeSelector always applies too)",
    )
    allowed_tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations a run may add, each matched exactly (a wildcard only when listed verbatim)",
    )

    @model_validator(mode="after")
    def _check_pool(self) -> Pool:
        failures: list[tuple[str | None, str]] = []
        for key, value in self.node_selector.items():
            failures += _label_failures(f"nodeSelector.{key}", key, value)
        for i, key in enumerate(self.allowed_node_label_keys):
            failures += _label_failures(f"allowedNodeLabelKeys[{i}]", key)
        for where, tols in (
            ("tolerations", self.tolerations),
            ("allowedTolerations", self.allowed_tolerations),
        ):
            for i, tol in enumerate(tols):
                failures += _label_failures(f"{where}[{i}]", tol.key or None, tol.value)
        for i, prefix in enumerate(self.allowed_images):
            if not IMAGE_PREFIX.match(prefix):
                failures.append(
                    (
                        f"allowedImages[{i}]",
                        f"{prefix!r} is not a registry, registry path (ending in '/'), repository or image",
                    )
                )
        if self.accelerator not in PRIVILEGED_NEEDS and self.privileged:
            failures.append(
                ("privileged", f"only habana pools use it ({self.accelerator} pods never need it)")
            )
        if self.accelerator != "habana" and self.hugepages2_mi is not None:
            failures.append(("hugepages2Mi", f"only habana pools use it, not {self.accelerator}"))
        if failures:
            raise RuleViolation(failures)
        return self

    def open_to(self, namespace: str) -> bool:
        """Whether runs in ``namespace`` may use the pool."""
        return not self.namespaces or namespace in self.namespaces

    def allows_image(self, image: str) -> bool:
        return any(image_allowed(image, prefix) for prefix in self.allowed_images)


def _pool(name: str, accelerator: str, devices: int, taint: str | None = None, **extra: Any) -> Pool:
    tolerations = [{"key": taint, "operator": "Exists", "effect": "NoSchedule"}] if taint else []
    return Pool.model_validate(
        {
            "name": name,
            "accelerator": accelerator,
            "devicesPerNode": devices,
            "tolerations": tolerations,
            **extra,
        }
    )


def default_pools() -> list[Pool]:
    """The pools of an operator configured with none (the Helm chart's defaults): one per
    accelerator, named after it, tolerating its device plugin's usual taint, open to every
    namespace, allowing nothing beyond it but the conventional Hub-token Secret ``hf-token``.
    Gaudi's privileged pods stay off until the platform team turns them on."""
    secrets: dict[str, Any] = {"allowedHubTokenSecrets": ["hf-token"]}
    return [
        _pool("nvidia", "nvidia", 8, "nvidia.com/gpu", **secrets),
        _pool("habana", "habana", 8, "habana.ai/gaudi", hugepages2Mi="95000Mi", privileged=False, **secrets),
        _pool("cpu", "cpu", 64, **secrets),
    ]


class PoolPolicy(PolicyModel):
    """The tenancy policy of a cluster: default trainer images and the node pools. The operator's
    configuration is this plus the operator's own settings."""

    images: TrainerImages = Field(default_factory=TrainerImages)
    pools: list[Pool] = Field(default_factory=default_pools, min_length=1)

    @field_validator("pools", mode="before")
    @classmethod
    def _pools_are_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError(
                "expected a list of named pools, e.g. [{name: nvidia, accelerator: nvidia, "
                "devicesPerNode: 8, tolerations: [...]}] (the mapping per accelerator of earlier versions "
                "is gone: give each entry a name and its accelerator)"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> PoolPolicy:
        seen: dict[str, int] = {}
        failures: list[tuple[str | None, str]] = []
        for i, pool in enumerate(self.pools):
            if pool.name in seen:
                failures.append(
                    (f"pools[{i}].name", f"{pool.name!r} is already the name of pools[{seen[pool.name]}]")
                )
            seen.setdefault(pool.name, i)
        if failures:
            raise RuleViolation(failures)
        return self

    # -- lookups ---------------------------------------------------------------------------------

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)

    def image(self, accelerator: str) -> str:
        """The default trainer image of ``accelerator``."""
        return self.images.of(accelerator)

    def open_pools(self, accelerator: str, namespace: str) -> list[Pool]:
        """The pools a run of ``accelerator`` in ``namespace`` may use, in configuration order."""
        return [p for p in self.pools if p.accelerator == accelerator and p.open_to(namespace)]

    # -- the check -------------------------------------------------------------------------------

    def select(self, run: RLHFRun, namespace: str) -> tuple[Pool | None, list[str]]:
        """The pool ``run`` goes to: ``spec.pool`` if it may use it, else the first pool for its
        accelerator open to ``namespace``; or None and the problem."""
        spec = run.spec
        usable = self.open_pools(spec.accelerator, namespace)
        choices = (
            f'{spec.accelerator} pools open to namespace "{namespace}": {_listing(p.name for p in usable)}'
        )
        if spec.pool is None:
            if usable:
                return usable[0], []
            return None, [
                f"spec.accelerator: no {spec.accelerator} pool of this cluster is open to namespace "
                f'"{namespace}" (pools: {_listing(f"{p.name} ({p.accelerator})" for p in self.pools)})'
            ]
        pool = self.pool(spec.pool)
        if pool is None:
            return None, [f'spec.pool: no pool "{spec.pool}" in this cluster ({choices})']
        if pool.accelerator != spec.accelerator:
            return None, [
                f'spec.pool: pool "{pool.name}" is for {pool.accelerator}, not spec.accelerator '
                f"{spec.accelerator} ({choices})"
            ]
        if not pool.open_to(namespace):
            return None, [f'spec.pool: pool "{pool.name}" is not open to namespace "{namespace}" ({choices})']
        return pool, []

    def check(self, run: RLHFRun, namespace: str) -> tuple[Pool | None, list[str]]:
        """Everything a cluster adds to the run's own checks: a PVC, well-formed scheduling
        fields, and the pool's policy. Returns the pool (None when none fits) and one
        ``field.path: message`` line per problem."""
        spec = run.spec
        problems = []
        if spec.storage.pvc is None:
            problems.append(
                "spec.storage.pvc: required on a cluster (spec.storage.localDir is for `rlhf run`)"
            )
        problems += _syntax_problems(run)
        pool, selection = self.select(run, namespace)
        problems += selection
        if pool is not None:
            problems += _pool_problems(run, pool, self.pools.index(pool), self.image(spec.accelerator))
        return pool, problems

    def admit(self, run: RLHFRun, namespace: str, source: str = "") -> Pool:
        """The pool of ``run``, or :class:`SpecError` naming every field the cluster refuses."""
        pool, problems = self.check(run, namespace)
        if problems or pool is None:
            raise SpecError(problems, source or repr(run.metadata.name))
        return pool


#: The parts of a core/v1 Affinity a run may set (all of it, but nothing else).
AFFINITY_KEYS = frozenset({"nodeAffinity", "podAffinity", "podAntiAffinity"})


def _syntax_problems(run: RLHFRun) -> list[str]:
    """Scheduling fields the API server would refuse on the pods (whatever the pool)."""
    scheduling = run.spec.scheduling
    problems = []
    for key, value in scheduling.node_selector.items():
        problems += label_problems(f"spec.scheduling.nodeSelector.{key}", key, value)
    for i, tol in enumerate(scheduling.tolerations):
        problems += label_problems(f"spec.scheduling.tolerations[{i}]", tol.key or None, tol.value)
    for key in sorted(set(scheduling.affinity or {}) - AFFINITY_KEYS):
        problems.append(
            f"spec.scheduling.affinity.{key}: unknown field (expected {', '.join(sorted(AFFINITY_KEYS))})"
        )
    return problems


def _node_affinity_keys(node_affinity: Any, where: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """(path, key) of every node-selector requirement in a NodeAffinity, and shape problems."""
    found: list[tuple[str, Any]] = []
    problems: list[str] = []

    def terms(value: Any, path: str) -> list[tuple[str, Any]]:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return []
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]

    def requirements(term: Any, path: str) -> None:
        if not isinstance(term, dict):
            problems.append(f"{path}: expected a node selector term (matchExpressions, matchFields)")
            return
        for field in ("matchExpressions", "matchFields"):
            for req_path, req in terms(term.get(field, []), f"{path}.{field}"):
                if not isinstance(req, dict):
                    problems.append(f"{req_path}: expected {{key, operator, values}}")
                else:
                    found.append((f"{req_path}.key", req.get("key")))

    if not isinstance(node_affinity, dict):
        return [], [f"{where}: expected a NodeAffinity"]
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is not None:
        req_where = f"{where}.requiredDuringSchedulingIgnoredDuringExecution"
        if not isinstance(required, dict):
            problems.append(f"{req_where}: expected a NodeSelector (nodeSelectorTerms)")
        else:
            for path, term in terms(required.get("nodeSelectorTerms", []), f"{req_where}.nodeSelectorTerms"):
                requirements(term, path)
    preferred = node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred is not None:
        for path, item in terms(preferred, f"{where}.preferredDuringSchedulingIgnoredDuringExecution"):
            if not isinstance(item, dict):
                problems.append(f"{path}: expected {{weight, preference}}")
            else:
                requirements(item.get("preference", {}), f"{path}.preference")
    return found, problems


def _pool_problems(run: RLHFRun, pool: Pool, index: int, default_image: str) -> list[str]:
    """What ``run`` asks for that ``pool`` (``pools[index]``) does not allow."""
    spec = run.spec
    scheduling = spec.scheduling
    name = f'pool "{pool.name}"'
    problems = []
    if spec.accelerator in PRIVILEGED_NEEDS and not pool.privileged:
        field = "spec.pool" if spec.pool else "spec.accelerator"
        problems.append(
            f"{field}: {name} does not allow privileged Gaudi pods: {spec.accelerator} training needs "
            f"{PRIVILEGED_NEEDS[spec.accelerator]}. A platform admin allows them by setting "
            f"privileged: true on the pool (Helm value pools[{index}].privileged) and the PodSecurity level "
            "privileged on the "
            "run's namespace (label pod-security.kubernetes.io/enforce=privileged)"
        )
    for stage in spec.stage_order:
        wanted = spec.stages.get(stage).devices_per_node
        if wanted > pool.devices_per_node:
            problems.append(
                f"spec.stages.{stage}.devicesPerNode: {wanted} is more than the {pool.devices_per_node} "
                f"devices per node of {name}"
            )
    if spec.image is not None and spec.image != default_image:
        if not IMAGE_REFERENCE.match(spec.image):
            problems.append(f"spec.image: {spec.image!r} is not an image reference (registry/repository:tag)")
        elif not pool.allows_image(spec.image):
            problems.append(
                f"spec.image: {spec.image} is not allowed by {name} (allowed: the default {default_image}"
                + (f"; under {', '.join(pool.allowed_images)}" if pool.allowed_images else "")
                + ")"
            )
    priority = scheduling.priority_class_name
    if priority is not None and priority not in pool.allowed_priority_classes:
        problems.append(
            f"spec.scheduling.priorityClassName: {priority} is not allowed by {name} "
            f"(allowed: {_listing(pool.allowed_priority_classes)})"
        )
    if spec.hub_token_secret is not None and spec.hub_token_secret not in pool.allowed_hub_token_secrets:
        problems.append(
            f"spec.hubTokenSecret: {spec.hub_token_secret} is not allowed by {name} "
            f"(allowed: {_listing(pool.allowed_hub_token_secrets)})"
        )
    allowed_keys = f"(allowed keys: {_listing(pool.allowed_node_label_keys)})"
    for key, value in scheduling.node_selector.items():
        if key in pool.node_selector:
            if pool.node_selector[key] != value:
                problems.append(
                    f"spec.scheduling.nodeSelector.{key}: {value!r} conflicts with {name}'s "
                    f"{pool.node_selector[key]!r}"
                )
        elif key not in pool.allowed_node_label_keys:
            problems.append(
                f"spec.scheduling.nodeSelector.{key}: node label {key} is not allowed by {name} "
                f"{allowed_keys}"
            )
    affinity = scheduling.affinity or {}
    if "nodeAffinity" in affinity:
        found, shape = _node_affinity_keys(affinity["nodeAffinity"], "spec.scheduling.affinity.nodeAffinity")
        problems += shape
        for path, key in found:
            if not isinstance(key, str):
                problems.append(f"{path}: expected a node label key")
            elif key not in pool.allowed_node_label_keys and key not in pool.node_selector:
                problems.append(f"{path}: node label {key} is not allowed by {name} {allowed_keys}")
    own = {_toleration_key(t) for t in pool.tolerations}
    allowed = {_toleration_key(t) for t in pool.allowed_tolerations}
    may_add = f"(a run may add: {_listing(toleration_text(t) for t in pool.allowed_tolerations)})"
    for i, tol in enumerate(scheduling.tolerations):
        tol_key = _toleration_key(tol)
        if tol_key in own or tol_key in allowed:
            continue
        what = (
            "a wildcard toleration, which tolerates every taint,"
            if is_wildcard(tol)
            else toleration_text(tol)
        )
        problems.append(f"spec.scheduling.tolerations[{i}]: {what} is not allowed by {name} {may_add}")
    return problems


# ---------------------------------------------------------------------------------------------
# Loading the policy from the operator's configuration file


def policy_errors(exc: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One ``field.path: message`` line per error of an operator configuration (``pools[0].name: ...``),
    ``root`` being the model validated (default :class:`PoolPolicy`)."""
    return problems_from(exc, root or PoolPolicy)


def parse_policy(data: Any, where: str = "operator config") -> PoolPolicy:
    """The policy of a parsed operator configuration: its ``images`` and ``pools`` (the operator's
    other settings are the operator's to check). Raises :class:`PolicyError` naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(["expected a mapping at the top level"], where)
    try:
        return PoolPolicy.model_validate({k: v for k, v in data.items() if k in POLICY_KEYS})
    except ValidationError as e:
        raise PolicyError(policy_errors(e), where) from None


def read_config(path: str | os.PathLike[str]) -> Any:
    """The YAML of an operator configuration file (aliases expanding past the manifest limit refused)."""
    from rlhf.api.load import ManifestLoader

    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"cannot read it: {e}"], str(target)) from None
    try:
        return yaml.load(text, Loader=ManifestLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
        raise PolicyError([f"not valid YAML: {e}"], str(target)) from None


def load_policy(path: str | os.PathLike[str]) -> PoolPolicy:
    """The policy of the operator configuration file at ``path`` (``rlhf validate --operator-config``)."""
    return parse_policy(read_config(path), str(path))


__all__ = [
    "AFFINITY_KEYS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "PRIVILEGED_NEEDS",
    "Pool",
    "PolicyError",
    "PoolPolicy",
    "TrainerImages",
    "default_pools",
    "image_allowed",
    "is_wildcard",
    "label_problems",
    "load_policy",
    "normalize_image",
    "parse_policy",
    "policy_errors",
    "read_config",
    "toleration_text",
]
