"""Every CEL rule of the CRD, evaluated as the API server does (cel-python), without a cluster.

The API server checks each ``default`` of the schema against the ``x-kubernetes-validations`` of
its node and of the nodes below it, on the default value as written (nested defaults are not
applied first), and every object against all rules after defaulting. A default of ``{}`` under a
rule that reads ``self.offload`` fails there ("no such key"), which no JSON Schema check sees.
The cluster tier (tests/cluster) installs the same CRD on a real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from rlhf.api import read_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "rlhfrun.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: a missing property with a default gets a
    copy of it, then defaulting goes on inside every value present."""
    if isinstance(value, dict) and "properties" in node:
        for key, sub in node["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if key in node["properties"]:
                apply_defaults(node["properties"][key], item)
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for item in value.values():
            apply_defaults(node["additionalProperties"], item)
    elif isinstance(value, list) and "items" in node:
        for item in value:
            apply_defaults(node["items"], item)
    return value


def rule_failures(node: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    """The rules at ``node`` and below that ``value`` breaks (transition rules are skipped: with
    oldSelf they pass on the value itself)."""
    env = celpy.Environment()
    for rule in node.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        program = env.program(env.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as e:
            result = e
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            yield f"{path}: {rule['message']} ({rule['rule']!r} gave {result})"
    if isinstance(value, dict) and "properties" in node:
        for key, item in value.items():
            if key in node["properties"]:
                yield from rule_failures(node["properties"][key], item, f"{path}.{key}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            yield from rule_failures(node["items"], item, f"{path}[{i}]")


def defaults(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], Any]]:
    if "default" in node:
        yield path or "<root>", node, node["default"]
    for key, sub in (node.get("properties") or {}).items():
        yield from defaults(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        yield from defaults(node["items"], f"{path}[]")


DEFAULTS = list(defaults(schema()))


def test_the_crd_has_rules_and_defaults_to_check():
    assert len(DEFAULTS) > 20
    assert any(n.get("x-kubernetes-validations") for _, n, d in DEFAULTS if isinstance(d, dict))


@pytest.mark.parametrize("path, node, default", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_every_default_passes_the_rules_of_its_node(path, node, default):
    assert list(rule_failures(node, copy.deepcopy(default), path)) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_every_rule_after_defaulting(path):
    manifest = apply_defaults(schema(), read_manifest(path))
    assert list(rule_failures(schema(), manifest, "")) == []


def test_a_default_of_an_empty_section_under_a_rule_is_caught():
    """What the API server refused: a section defaulting to {} under a rule reading its keys."""
    node = schema()["properties"]["spec"]["properties"]["stages"]["properties"]["sft"]
    broken = {**node, "default": {}}
    failures = list(rule_failures(broken, {}, "spec.stages.sft"))
    assert failures and "offload needs zeroStage >= 1" in failures[0]


def test_the_rules_refuse_what_they_should():
    manifest = apply_defaults(schema(), read_manifest(ROOT / "examples" / "quickstart.yaml"))
    manifest["spec"]["stages"]["sft"]["offload"] = True  # with zeroStage 0
    assert any("offload needs zeroStage >= 1" in f for f in rule_failures(schema(), manifest, ""))
