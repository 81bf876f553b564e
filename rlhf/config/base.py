"""Config machinery: strict pydantic sections, YAML loading, dotted overrides, readable errors.

Every config class derives from :class:`Section`, which forbids unknown keys, so a typo is an
error naming the key instead of a silently ignored option.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

T = TypeVar("T", bound="Section")


class ConfigError(ValueError):
    """A config could not be loaded; the message names the file and key at fault."""


def _types_in(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType}); Literals by value type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_types_in(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin is typing.Annotated:
        return _types_in(typing.get_args(annotation)[0])
    return {annotation}


def _is_number_field(annotation: Any) -> bool:
    """True when the field takes numbers but not booleans (pydantic would read ``true`` as 1)."""
    admitted = _types_in(annotation)
    return bool(admitted & {int, float}) and bool not in admitted and Any not in admitted


def _bool_for_number(value: Any, annotation: Any) -> bool:
    if isinstance(value, bool):
        return _is_number_field(annotation)
    if isinstance(value, (list, tuple)):  # e.g. data.split: tuple[float, float, float]
        inner = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return any(isinstance(v, bool) for v in value) and any(_is_number_field(a) for a in inner)
    return False


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and a
    boolean is never read as a number (``lora.dim: true`` is an error, not rank 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _bool_for_number(value, field.annotation):
            raise ValueError(f"expected a number, not a boolean (got {str(value).lower()})")
        return value


def _known_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that ``loc`` (minus its last part) points into."""
    model: Any = cls
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def format_validation_error(exc: ValidationError, cls: type[BaseModel], source: str = "") -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(cls, loc), n=1)
            if close:
                msg += f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("missing", "value_error", "assertion_error") and "input" in err:
                msg += f" (got {err['input']!r})"
        lines.append(f"  {key}: {msg}")
    where = f" in {source}" if source else ""
    return f"invalid {cls.__name__}{where}:\n" + "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(
            f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.learning_rate=1e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def build(cls: type[T], data: dict[str, Any], source: str = "") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls, source)) from None


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from an optional YAML file plus dotted ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    source = str(path) if path else "command-line overrides"
    if path and overrides:
        source += " + overrides"
    return build(cls, data, source)


def dump(cfg: Section) -> str:
    """The fully resolved config as YAML (defaults included), for ``config.yaml`` next to outputs."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
