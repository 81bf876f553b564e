"""Load an RLHFRun manifest (YAML file or dict) into the typed spec, and check it as admission does."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhf.api.errors import SpecError, problems_from
from rlhf.api.run import RLHFRun
from rlhf.api.trainer import stage_configs

#: Most nodes a manifest may expand to once its YAML aliases are followed. A real RLHFRun has a few
#: hundred; an "alias bomb" (a billion laughs: aliases of aliases of lists) a few hundred bytes long
#: expands to billions, which any later walk over the parsed data (validation, rendering, dumping)
#: would try to visit.
MAX_EXPANDED_NODES = 100_000


class ManifestLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: ``5e-5`` is a float (PyYAML's YAML 1.1 rules would make it a
    string). Aliases are allowed, but a document expanding to more than :data:`MAX_EXPANDED_NODES`
    nodes is refused before anything is built from it."""

    def construct_document(self, node: yaml.Node) -> Any:
        expanded = _expanded_size(node, {})
        if expanded > MAX_EXPANDED_NODES:
            raise yaml.YAMLError(
                f"the document expands to more than {MAX_EXPANDED_NODES} nodes through its aliases "
                "(&anchor/*alias); refused"
            )
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Nodes in ``node`` with every alias followed, counted in time linear in the distinct nodes
    (an alias is the same node object, so its size is counted once and reused)."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = MAX_EXPANDED_NODES + 1  # a recursive alias counts as too big
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, seen)
            if total > MAX_EXPANDED_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, seen) + _expanded_size(v, seen)
            if total > MAX_EXPANDED_NODES:
                break
    seen[key] = total
    return total


ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The one YAML document in ``path`` (comments and ``---`` separators allowed), as a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"cannot read {path}: {e}"]) from None
    try:
        docs = [d for d in yaml.load_all(text, Loader=ManifestLoader) if d is not None]
    except yaml.YAMLError as e:
        raise SpecError([f"{path} is not valid YAML: {e}"]) from None
    if len(docs) != 1:
        raise SpecError([f"{path}: expected one YAML document, found {len(docs)}"])
    if not isinstance(docs[0], dict):
        raise SpecError([f"{path}: expected a mapping at the top level, got {type(docs[0]).__name__}"])
    return docs[0]


def validate(run: RLHFRun) -> None:
    """Semantic checks beyond the schema, as the operator runs them at admission: every stage's
    trainer config (``trainerOptions`` included) must build. Raises :class:`SpecError`."""
    stage_configs(run)


def load_manifest(source: str | os.PathLike[str] | Mapping[str, Any], *, semantic: bool = True) -> RLHFRun:
    """Parse an RLHFRun from a YAML file or a dict; errors name the field (``spec.stages.sft.nodes: ...``).

    With ``semantic`` (the default) also run :func:`validate`.
    """
    if isinstance(source, Mapping):
        data, where = dict(source), ""
    else:
        data, where = read_manifest(source), str(source)
    try:
        run = RLHFRun.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e, RLHFRun), where) from None
    if semantic:
        try:
            validate(run)
        except SpecError as e:
            raise SpecError(e.problems, where or repr(run.metadata.name)) from None
    return run
