"""Copy Hub models and datasets into the run's storage, so that stages run offline.

Each copy is made in ``<root>/hub/.partial/...`` and renamed into place
(``<root>/hub/models/<org>--<name>``, ``<root>/hub/datasets/<org>--<name>``) only once complete,
with a marker file (:data:`MARKER`) recording what it holds: a crash never leaves something that
looks finished, and a finished copy is never fetched again. An interrupted model download resumes
(``snapshot_download`` into the same partial directory).

The Hub token comes from the environment (``HF_TOKEN``, set by the operator from the run's
``hubTokenSecret``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import huggingface_hub

from rlhf.api.hub import HUB_DIR, local_name, prepared_dataset_dir, prepared_model_dir
from rlhf.prepare.needs import ModelKind

MARKER = ".rlhf-prepared.json"
#: Never needed to train with PyTorch: other frameworks' weights and export formats.
NEVER = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.mlmodel",
    "*.gguf",
    "onnx/*",
    "coreml/*",
    "openvino/*",
    "original/*",
]
#: PyTorch pickles, skipped when the repository also has safetensors weights.
PICKLES = ["*.bin", "*.pt", "*.pth"]
#: What a tokenizer needs (its config, vocabulary/merges, sentencepiece model, custom code).
TOKENIZER_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.vocab", "*.py"]


class PrepareError(RuntimeError):
    """A download or copy failed; the message names the repository."""


@dataclass(frozen=True)
class Copied:
    """One Hub repository in the run's storage: where, and whether this call fetched it."""

    repo_id: str
    what: str  # model, tokenizer or dataset
    path: Path
    fetched: bool
    seconds: float = 0.0
    detail: str = ""


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a finished copy in ``directory``, or None."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _publish(partial: Path, final: Path, marker: dict[str, Any]) -> None:
    """Mark ``partial`` finished and rename it to ``final`` (replacing an unfinished or lesser copy)."""
    (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)


def _partial(root: Path, kind: str, repo_id: str) -> Path:
    return root / HUB_DIR / ".partial" / kind / local_name(repo_id)


class Patterns(TypedDict, total=False):
    """The file filters of a ``snapshot_download`` call."""

    allow_patterns: list[str]
    ignore_patterns: list[str]


def model_patterns(repo_files: list[str], kind: ModelKind) -> Patterns:
    """``allow_patterns``/``ignore_patterns`` for ``snapshot_download``: a tokenizer's files only, or
    the repository without other frameworks' weights (and without pickles when safetensors exist)."""
    if kind == "tokenizer":
        return {"allow_patterns": TOKENIZER_FILES, "ignore_patterns": NEVER}
    has_safetensors = any(f.endswith(".safetensors") for f in repo_files)
    return {"ignore_patterns": NEVER + (PICKLES if has_safetensors else [])}


def ensure_model(root: Path, repo_id: str, kind: ModelKind) -> Copied:
    """Hub model (or just its tokenizer) ``repo_id`` in ``<root>/hub/models``; fetched unless already
    there."""
    final = Path(prepared_model_dir(str(root), repo_id))
    marker = read_marker(final)
    if marker and marker.get("repo_id") == repo_id and marker.get("kind") in ("model", kind):
        return Copied(repo_id, kind, final, fetched=False)
    partial = _partial(root, "models", repo_id)
    partial.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        files = huggingface_hub.list_repo_files(repo_id, token=_token())
        huggingface_hub.snapshot_download(
            repo_id, local_dir=str(partial), token=_token(), **model_patterns(files, kind)
        )
    except Exception as e:  # network, auth, missing repo: one clear line naming the repository
        raise PrepareError(
            f"{kind} {repo_id}: download failed ({type(e).__name__}: {e}); "
            "a gated or private model needs HF_TOKEN (spec.hubTokenSecret)"
        ) from e
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    n_files = sum(1 for p in partial.rglob("*") if p.is_file())
    _publish(partial, final, {"repo_id": repo_id, "kind": kind, "files": n_files, "prepared_at": time.time()})
    return Copied(
        repo_id, kind, final, fetched=True, seconds=time.monotonic() - start, detail=f"{n_files} files"
    )


def ensure_dataset(root: Path, repo_id: str, fmt: str) -> Copied:
    """Hub dataset ``repo_id`` saved (``save_to_disk``) in ``<root>/hub/datasets``, its format recorded."""
    final = Path(prepared_dataset_dir(str(root), repo_id))
    marker = read_marker(final)
    if marker and marker.get("repo_id") == repo_id and marker.get("kind") == "dataset":
        if marker.get("format") != fmt:  # same data, read another way: record the format asked for now
            (final / MARKER).write_text(json.dumps({**marker, "format": fmt}, indent=2) + "\n")
        return Copied(repo_id, "dataset", final, fetched=False, detail=f"format {fmt}")
    import datasets

    partial = _partial(root, "datasets", repo_id)
    cache = root / HUB_DIR / ".partial" / "cache" / local_name(repo_id)
    shutil.rmtree(partial, ignore_errors=True)  # save_to_disk cannot resume
    start = time.monotonic()
    try:
        loaded = datasets.load_dataset(repo_id, token=_token(), cache_dir=str(cache))
        loaded.save_to_disk(str(partial))
    except Exception as e:  # network, auth, missing repo, disk: one clear line naming the dataset
        raise PrepareError(f"dataset {repo_id}: download failed ({type(e).__name__}: {e})") from e
    splits = (
        {name: ds.num_rows for name, ds in loaded.items()}
        if isinstance(loaded, dict)
        else {"train": loaded.num_rows}
    )
    del loaded
    _publish(
        partial,
        final,
        {"repo_id": repo_id, "kind": "dataset", "format": fmt, "splits": splits, "prepared_at": time.time()},
    )
    shutil.rmtree(cache, ignore_errors=True)
    rows = ", ".join(f"{name} {n}" for name, n in splits.items())
    return Copied(
        repo_id,
        "dataset",
        final,
        fetched=True,
        seconds=time.monotonic() - start,
        detail=f"format {fmt}; {rows}",
    )
