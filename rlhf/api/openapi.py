"""Turn a pydantic model's JSON schema into a structural OpenAPI v3 schema for a CRD.

Kubernetes wants every node typed, no ``$ref``/``definitions``, no ``anyOf`` of types, OpenAPI
3.0's boolean ``exclusiveMinimum``, and no ``additionalProperties`` next to ``properties``. This
inlines references, drops the ``null`` branch of optional fields (absence means unset), and maps
free-form values to ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rlhf.api.base import TRAINER_KEY

_NULL = {"type": "null"}
_DROPPED = {"title", "$defs", TRAINER_KEY}
#: Key order in the output, for readable YAML; other keys follow in their original order.
_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
)


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``$ref``, single-element ``allOf`` and optional (``X | None``) ``anyOf`` at this node."""
    node = dict(schema)
    while True:
        if "$ref" in node:
            target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**target, **node}  # the field's own keys (description, default) win
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = {**node.pop("allOf")[0], **node}
        elif "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            branches = [b for b in node["anyOf"] if b != _NULL]
            if len(branches) != 1:
                raise ValueError(f"not structural: a value of several types ({node['anyOf']})")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**branches[0], **rest}
        else:
            return node


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The structural OpenAPI v3 form of a pydantic JSON schema node (``defs``: its ``$defs``)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = _inline(schema, defs)
    if node.get("default", 0) is None:
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out[key] = {"x-kubernetes-preserve-unknown-fields": True}
            elif value is not False and "properties" not in node:
                out[key] = structural(value, defs)
        elif key == "x-kubernetes-validations":
            keys = ("rule", "message", "fieldPath", "reason")
            out[key] = [{k: rule[k] for k in keys if k in rule} for rule in value]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "required" in out and not out["required"]:
        del out["required"]
    ranked = {k: i for i, k in enumerate(_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: ranked.get(kv[0], len(_ORDER))))


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model``, with manifest (camelCase) field names."""
    return structural(model.model_json_schema(by_alias=True, mode="validation"))
