"""Errors of the RLHFRun spec, one line per problem, each naming the manifest field at fault."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from rlhf.api.base import RuleViolation
from rlhf.config import ConfigError


class SpecError(ConfigError):
    """An RLHFRun manifest is invalid. ``problems`` holds one ``field.path: message`` line per problem."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = list(problems)
        where = f" {source}" if source else ""
        super().__init__(f"invalid RLHFRun{where}:\n" + "\n".join(f"  {p}" for p in self.problems))


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("spec", "data", "datasets", 0, "path")`` -> ``spec.data.datasets[0].path``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None``, ``list[X]``, ``dict[str, X]`` or ``Annotated[X, ...]``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        elif origin in (list, dict):
            annotation = typing.get_args(annotation)[-1]
        else:
            return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _known_fields(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Manifest names of the fields of the object ``loc`` (less its last part) points into."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        if part not in fields:
            return []
        model = _unwrap(fields[part].annotation)
        if model is None:
            return []
    return [info.alias or name for name, info in model.model_fields.items()]


def problems_from(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``field.path: message`` line per error of ``exc`` (raised validating ``root``)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = field_path(loc)
        error = err.get("ctx", {}).get("error")
        if isinstance(error, RuleViolation):
            lines += [f"{field_path((*loc, f)) if f else path}: {m}" for f, m in error.failures]
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            close = difflib.get_close_matches(str(loc[-1]), _known_fields(root, loc), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] in ("value_error", "assertion_error"):
            msg = str(error) if error is not None else err["msg"]
        else:
            msg = err["msg"]
            if err["type"] != "missing" and "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines
