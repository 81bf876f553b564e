"""The RLHFRun API's names (group, version, kind) and the object metadata we model."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlhf.api.base import DNS_1035_LABEL, DNS_LABEL

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFRun"
LIST_KIND = "RLHFRunList"
PLURAL = "rlhfruns"
SINGULAR = "rlhfrun"
SHORT_NAMES = ("rlhf",)
CATEGORIES = ("ml", "rlhf")
CRD_NAME = f"{PLURAL}.{GROUP}"


#: Longest child-name suffix the operator creates: ``<name>-reward-launcher`` is a Job name that
#: ends up as a label value (63 characters at most), ``<name>-reward-worker-<i>`` a pod hostname.
LONGEST_CHILD_SUFFIX = "-reward-worker-9999"
#: Longest run name: a DNS-1123 label that leaves room for the suffix (and a little more).
MAX_NAME_LENGTH = 40
assert MAX_NAME_LENGTH + len(LONGEST_CHILD_SUFFIX) <= 63


def check_name(name: str) -> str:
    """Validate a run name: a DNS-1035 label of at most :data:`MAX_NAME_LENGTH` characters.

    DNS-1035, not the DNS-1123 label Kubernetes allows for object names: the MPI operator names the
    Service and hostnames of a stage's pods after the MPIJob (``<run>-<stage>``), and those must
    start with a letter; the API server would accept ``1run`` and the MPI operator never start it."""
    if not re.match(DNS_1035_LABEL, name):
        raise ValueError(
            f"{name!r} is not a valid name: use lowercase letters, digits and '-', starting with a "
            "letter and ending with a letter or digit (a DNS-1035 label: the MPI operator names "
            "Services and hostnames after it)"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{name!r} is {len(name)} characters long; at most {MAX_NAME_LENGTH}, so that child "
            f"objects like '<name>{LONGEST_CHILD_SUFFIX}' stay within 63"
        )
    return name


class ObjectMeta(BaseModel):
    """The metadata we read. Fields the API server adds (uid, resourceVersion, ...) are kept as is."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(description="Name of the run; a DNS-1123 label of at most 40 characters")
    namespace: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_name(value)

    def dump(self) -> dict[str, Any]:
        """As it appears in a manifest: unset and empty fields left out."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
