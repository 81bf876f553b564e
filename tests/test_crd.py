"""The RLHFRun CRD: generated from the typed spec, structural, and in agreement with it on examples."""

from __future__ import annotations

import copy
import difflib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from rlhf.api import STAGE_NAMES, SpecError, load_manifest, read_manifest
from rlhf.api.crd import crd, render

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "rlhfrun.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REGENERATE = "python -m rlhf.api.crd > crds/rlhfrun.yaml"

# Keys of apiextensions/v1 JSONSchemaProps that a structural schema may use (we also leave out
# title, allOf, oneOf and not, which the generator never needs).
ALLOWED = {
    "description",
    "type",
    "format",
    "default",
    "enum",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "multipleOf",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "anyOf",
    "nullable",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


def the_schema(obj: dict[str, Any] | None = None) -> dict[str, Any]:
    return (obj or crd())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Why ``node`` is not a structural schema (Kubernetes' rules, a little stricter); [] if it is."""
    where = path or "<root>"
    problems = [f"{where}: {key} is not allowed" for key in node if key not in ALLOWED]
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not (int_or_string or preserve):
        problems.append(f"{where}: no type")
    if "anyOf" in node and not (int_or_string and node["anyOf"] == INT_OR_STRING):
        problems.append(f"{where}: anyOf is only allowed as int-or-string")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    if isinstance(node.get("additionalProperties"), bool):
        problems.append(f"{where}: additionalProperties must be a schema")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            problems.append(f"{where}: {key} must be a boolean (OpenAPI 3.0)")
    if node.get("uniqueItems"):
        problems.append(f"{where}: uniqueItems is forbidden")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{where}: an array needs items")
    missing = set(node.get("required", ())) - set(node.get("properties", {}))
    if missing:
        problems.append(f"{where}: required {sorted(missing)} not in properties")
    kind = JSON_TYPES.get(node.get("type", ""))
    for value in node.get("enum", ()):
        if kind and (not isinstance(value, kind) or isinstance(value, bool) != (node["type"] == "boolean")):
            problems.append(f"{where}: enum value {value!r} is not a {node['type']}")
    if "default" in node:
        try:
            jsonschema.Draft4Validator(node).validate(node["default"])
        except jsonschema.ValidationError as e:
            problems.append(f"{where}: default {node['default']!r} is invalid: {e.message}")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", ()):
            defaulted = "default" in item.get("properties", {}).get(key, {})
            if key not in item.get("required", ()) and not defaulted:
                problems.append(f"{where}: list map key {key} must be required")
    for name, prop in node.get("properties", {}).items():
        problems += structural_problems(prop, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{where}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{where}.*")
    return problems


def closed(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``schema`` with unknown fields rejected, as the API server does under strict field validation."""
    node = copy.deepcopy(schema)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and path != "metadata":
        node["additionalProperties"] = False
    for name, prop in node.get("properties", {}).items():
        node["properties"][name] = closed(prop, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        node["items"] = closed(node["items"], path + "[*]")
    if node.get("x-kubernetes-list-type") == "set":  # the API server refuses duplicates in a set
        node["uniqueItems"] = True
    return node


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """What the CRD's openAPIV3Schema (without its CEL rules) rejects in ``manifest``."""
    validator = jsonschema.Draft4Validator(closed(the_schema()))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def rules_at(path: str) -> list[dict[str, Any]]:
    """The x-kubernetes-validations of the schema node at dotted ``path`` (e.g. spec.storage)."""
    node = the_schema()
    for part in path.split("."):
        node = node["properties"][part]
    return node.get("x-kubernetes-validations", [])


def test_committed_crd_is_generated():
    committed = CRD_FILE.read_text(encoding="utf-8") if CRD_FILE.is_file() else ""
    generated = render()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(True), generated.splitlines(True), "crds/rlhfrun.yaml", "generated"
                )
            )[:40]
        )
        pytest.fail(f"crds/rlhfrun.yaml is stale; regenerate it with `{REGENERATE}`\n{diff}")


def test_crd_is_a_valid_customresourcedefinition():
    kubernetes_validate.validate(read_manifest(CRD_FILE), latest_version(), strict=True)
    names = crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "RLHFRun",
        "rlhfruns",
        ["rlhf"],
        ["ml", "rlhf"],
    )
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Stage", "State", "Accelerator", "Age"]


def test_schema_is_structural():
    schema = the_schema()
    assert structural_problems(schema) == []
    assert set(schema["properties"]["metadata"].get("properties", {})) <= {"name", "generateName"}
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"$defs"', '"definitions"', '"title"', '"const"', "x-rlhf"):
        assert forbidden not in text


def test_structural_checker_catches_violations():
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "b": {"$ref": "#/$defs/B"},
            "c": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False},
            "d": {"type": "number", "exclusiveMinimum": 0},
            "e": {"type": "integer", "default": "one"},
        },
    }
    problems = "\n".join(structural_problems(bad))
    for words in (
        "a: no type",
        "a: anyOf",
        "b: $ref is not allowed",
        "c: properties and additionalProperties",
        "d: exclusiveMinimum must be a boolean",
        "e: default 'one' is invalid",
    ):
        assert words in problems


def test_free_form_fields_only_where_needed():
    found = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(path)
        for name, prop in node.get("properties", {}).items():
            walk(prop, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")

    walk(the_schema(), "")
    stages = [f".spec.stages.{s}.trainerOptions.additionalProperties" for s in STAGE_NAMES]
    assert sorted(found) == sorted([".spec.scheduling.affinity", *stages])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_by_the_crd_and_the_typed_spec(path):
    manifest = read_manifest(path)
    assert schema_errors(manifest) == []
    run = load_manifest(path)
    assert schema_errors(run.to_manifest()) == []  # defaults filled in are valid too


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_read_as_kubectl_reads_them(path):
    out = subprocess.run(
        ["kubectl", "label", "-f", str(path), "--local", "-o", "json", "rlhf-test=1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    seen = json.loads(out)
    seen["metadata"]["labels"].pop("rlhf-test")
    if not seen["metadata"]["labels"]:
        del seen["metadata"]["labels"]
    assert seen == read_manifest(path)


def _set(path: str, value: Any):
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return mutate


# (id, mutation of examples/quickstart.yaml, field named in the error, words, where the API server
# rejects it: "schema", a CEL rule at a path, or None when only admission (validate) can).
INVALID = [
    ("bad-name", _set("metadata.name", "Bad_Name"), "metadata.name", "DNS-1035 label", "schema"),
    ("digit-name", _set("metadata.name", "1run"), "metadata.name", "DNS-1035 label", "schema"),
    ("long-name", _set("metadata.name", "r" * 41), "metadata.name", "at most 40", "schema"),
    (
        "unknown-field",
        _set("spec.stages.sft.devicePerNode", 2),
        "spec.stages.sft.devicePerNode",
        "did you mean 'devicesPerNode'",
        "schema",
    ),
    (
        "wrong-enum",
        _set("spec.accelerator", "gpu"),
        "spec.accelerator",
        "'nvidia', 'habana' or 'cpu'",
        "schema",
    ),
    (
        "zero-nodes",
        _set("spec.stages.sft.nodes", 0),
        "spec.stages.sft.nodes",
        "greater than or equal to 1",
        "schema",
    ),
    (
        "huge-nodes",
        _set("spec.stages.sft.nodes", 10**12),
        "spec.stages.sft.nodes",
        "less than or equal to 2048",
        "schema",
    ),
    (
        "huge-retries",
        _set("spec.stages.ppo.retries", 2**31),
        "spec.stages.ppo.retries",
        "less than or equal to 100",
        "schema",
    ),
    (
        "string-nodes",
        _set("spec.stages.reward.nodes", "2"),
        "spec.stages.reward.nodes",
        "valid integer",
        "schema",
    ),
    (
        "bad-quantity",
        _set("spec.stages.sft.resources.memory", "lots"),
        "spec.stages.sft.resources.memory",
        "not a Kubernetes quantity",
        "schema",
    ),
    ("bad-split", _set("spec.data.split", "1,2"), "spec.data.split", "three shares", "schema"),
    ("string-dataset", _set("spec.data.datasets", ["a.jsonl"]), "spec.data.datasets[0]", "mapping", "schema"),
    (
        "both-storages",
        _set("spec.storage.pvc", {"claimName": "runs"}),
        "spec.storage",
        "exactly one",
        "spec.storage",
    ),
    ("no-storage", _set("spec.storage.localDir", None), "spec.storage", "exactly one", "spec.storage"),
    ("fp16-on-cpu", _set("spec.stages.ppo.dtype", "fp16"), "spec.accelerator", "fp16", "spec"),
    (
        "offload-zero0",
        _set("spec.stages.sft.offload", True),
        "spec.stages.sft.offload",
        "zeroStage >= 1",
        "spec.stages.sft",
    ),
    (
        "lora-only-without-dim",
        _set("spec.stages.reward.lora", {"onlyOptimizeLora": True}),
        "spec.stages.reward.lora.onlyOptimizeLora",
        "dim > 0",
        "spec.stages.reward.lora",
    ),
    (
        "unknown-option",
        _set("spec.stages.sft.trainerOptions", {"optim.learnig_rate": 1.0e-4}),
        "spec.stages.sft.trainerOptions: optim.learnig_rate",
        "did you mean 'optim.learning_rate'",
        None,
    ),
    (
        "wrong-option-type",
        _set("spec.stages.reward.trainerOptions", {"logging.log_interval": "often"}),
        "spec.stages.reward.trainerOptions: logging.log_interval",
        "valid integer",
        None,
    ),
    (
        "owned-option",
        _set("spec.stages.sft.trainerOptions", {"deepspeed.zero_stage": 2}),
        "spec.stages.sft.trainerOptions: deepspeed.zero_stage",
        "set by spec.stages.sft.zeroStage",
        None,
    ),
    ("no-reward-share", _set("spec.data.split", "1,0,1"), "spec.data", "positive reward share", None),
    (
        "ppo-without-reward",
        _set("spec.pipeline", ["sft", "ppo"]),
        "spec.pipeline",
        "ppo starts its critic from the reward stage's model; add reward to spec.pipeline",
        "spec",
    ),
    (
        "reward-stage-without-its-model",
        _set("spec.models.reward", None),
        "spec.models",
        "the reward stage trains spec.models.reward",
        "spec",
    ),
    (
        "dpo-alone",
        _set("spec.pipeline", ["dpo"]),
        "spec.pipeline",
        "dpo starts its policy from the sft stage's model",
        "spec",
    ),
    (
        "unknown-stage",
        _set("spec.pipeline", ["sft", "rlaif"]),
        "spec.pipeline[1]",
        "'sft', 'reward'",
        "schema",
    ),
    (
        "repeated-stage",
        _set("spec.pipeline", ["sft", "sft", "reward", "ppo"]),
        "spec.pipeline",
        "listed twice",
        "schema",
    ),
]


@pytest.mark.parametrize(
    "mutate, field, words, enforced", [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid_manifest_is_rejected_naming_the_field(mutate, field, words, enforced):
    manifest = read_manifest(ROOT / "examples" / "quickstart.yaml")
    mutate(manifest)
    with pytest.raises(SpecError) as e:
        load_manifest(manifest)
    assert any(p.startswith(f"{field}:") and words in p for p in e.value.problems), e.value.problems
    if enforced == "schema":
        assert schema_errors(manifest), "the CRD's schema should reject this too"
    else:
        assert schema_errors(manifest) == []
        if enforced is not None:  # the same rule, as CEL for the API server
            messages = [r["message"] for r in rules_at(enforced)]
            assert any(m in str(e.value) for m in messages), messages
