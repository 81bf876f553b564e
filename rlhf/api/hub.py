"""Hub id or path? The rule that decides, and where ``rlhf prepare`` puts what it downloads.

A model or dataset string of an RLHFRun is a **Hub id** when all of these hold, else a **path**:

* it is ``name`` or ``org/name`` (at most one ``/``), each part made of letters, digits, ``-``,
  ``_`` and ``.``, starting and ending with a letter, digit or ``_``, without ``--`` or ``..``,
  96 characters at most (the Hugging Face repo id rules);
* it does not end with a file suffix (:data:`FILE_SUFFIXES`, e.g. ``.json``, ``.jsonl``, ``.parquet``)
  nor with ``.git``;
* it is not DeepSpeed-Chat's ``local/jsonfile[:DIR]``.

So ``facebook/opt-1.3b``, ``gpt2`` and ``Dahoas/rm-static`` are Hub ids; ``/data/opt``,
``./models/actor``, ``~/m``, ``runs/x/models/actor`` and ``data/pairs.jsonl`` are paths. A relative
directory with at most one ``/`` must be written ``./dir`` or ``./dir/sub`` to count as a path.
The rule looks at the string only (never at a filesystem), so the operator, ``rlhf run`` and the
trainer decide alike. Paths are used as they are: relative ones are relative to the working
directory, which on a cluster is the run's storage root.

Hub ids are downloaded once by ``rlhf prepare`` into the run's storage (:func:`prepared_model_dir`,
:func:`prepared_dataset_dir`: ``<root>/hub/models/<org>--<name>``), and the stage configs point
there: stages run offline.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from rlhf.api.datasets import is_local_jsonfile, known_format

#: Suffixes that make a string a file path, never a Hub id.
FILE_SUFFIXES = (
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".parquet",
    ".arrow",
    ".txt",
    ".yaml",
    ".yml",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".zip",
    ".tar",
    ".bin",
    ".pt",
    ".pth",
    ".safetensors",
    ".gguf",
    ".git",
)
_PART = r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}", re.ASCII)
MAX_REPO_ID_LENGTH = 96
#: Under the storage root: downloaded models and datasets (``hub/models``, ``hub/datasets``).
HUB_DIR = "hub"


def is_hub_id(value: str) -> bool:
    """True when ``value`` names a Hugging Face Hub repository rather than a path (see the module doc)."""
    return (
        len(value) <= MAX_REPO_ID_LENGTH
        and _REPO_ID.fullmatch(value) is not None
        and "--" not in value
        and ".." not in value
        and not value.lower().endswith(FILE_SUFFIXES)
        and not is_local_jsonfile(value)
    )


def local_name(repo_id: str) -> str:
    """``org/name`` -> ``org--name`` (unambiguous: Hub ids never contain ``--``)."""
    return repo_id.replace("/", "--")


def prepared_model_dir(root: str, repo_id: str) -> str:
    """Where ``rlhf prepare`` puts Hub model (or tokenizer) ``repo_id``:
    ``<root>/hub/models/<org>--<name>``."""
    return posixpath.join(root, HUB_DIR, "models", local_name(repo_id))


def prepared_dataset_dir(root: str, repo_id: str) -> str:
    """Where ``rlhf prepare`` saves Hub dataset ``repo_id``: ``<root>/hub/datasets/<org>--<name>``."""
    return posixpath.join(root, HUB_DIR, "datasets", local_name(repo_id))


def model_location(root: str, value: str) -> str:
    """What the trainer loads for a model/tokenizer string: its prepared copy for a Hub id, else the path."""
    return prepared_model_dir(root, value) if is_hub_id(value) else value


def dataset_format(path: str, fmt: str) -> str:
    """The format a source is read with: ``fmt`` unless ``auto``, then by known Hub name, else generic
    (what the trainer's :func:`rlhf.data.sources.resolve_source` decides)."""
    return fmt if fmt != "auto" else (known_format(path) or "generic")


def dataset_location(root: str, source: dict[str, Any]) -> dict[str, Any]:
    """A data source (``{"path", "format"}``) as the trainer reads it: a Hub id becomes its prepared
    copy with the format it resolves to written out; a path stays as it is."""
    path, fmt = source["path"], source.get("format", "auto")
    if not is_hub_id(path):
        return dict(source)
    return {**source, "path": prepared_dataset_dir(root, path), "format": dataset_format(path, fmt)}
