"""Generate the RLHFRun CustomResourceDefinition from the typed spec.

python -m rlhf.api.crd > crds/rlhfrun.yaml      # regenerate
python -m rlhf.api.crd --check crds/rlhfrun.yaml  # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import yaml

from rlhf.api.base import DNS_1035_LABEL
from rlhf.api.meta import (
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    LIST_KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from rlhf.api.openapi import model_schema
from rlhf.api.run import RLHFRun, RLHFRunSpec
from rlhf.api.status import RLHFRunStatus

HEADER = "# Generated from rlhf/api by `python -m rlhf.api.crd > crds/rlhfrun.yaml`; do not edit.\n"

PRINTER_COLUMNS = [
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.stage",
        "description": "Stage running now, or last run",
    },
    {"name": "State", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the run"},
    {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of an RLHFRun."""
    fields = RLHFRun.model_fields
    spec = model_schema(RLHFRunSpec)
    status = model_schema(RLHFRunStatus)
    return {
        "description": inspect.cleandoc(RLHFRun.__doc__ or ""),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": f"APIVersion of this object, {GROUP}/{VERSION}", "type": "string"},
            "kind": {"description": "Kind of this object, " + KIND, "type": "string"},
            "metadata": {  # the API server allows restricting name and generateName only
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": DNS_1035_LABEL},
                },
            },
            "spec": {**spec, "description": fields["spec"].description},
            "status": {**status, "description": fields["status"].description},
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of RLHFRun, as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "rlhf-operator"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: no YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    """The CRD as the YAML text committed in crds/rlhfrun.yaml."""
    return HEADER + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.api.crd", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the generated CRD"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.check.is_file() or args.check.read_text(encoding="utf-8") != text:
            regenerate = f"python -m rlhf.api.crd > {args.check}"
            print(f"{args.check} is stale; regenerate it with: {regenerate}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
