"""Raw records from one configured data source.

A :class:`~rlhf.config.parts.DataSource` path is resolved, in this order, as:

1. ``local/jsonfile`` or ``local/jsonfile:DIR`` (DeepSpeed-Chat): ``DIR/data/train.json`` and
   ``DIR/data/eval.json`` (``DIR`` defaults to the working directory; ``DIR/train.json`` also works);
2. a JSON file (a list of objects; a ``.json`` file that is not a list is read as JSON lines) or a
   JSONL file (one object per line) -- train records only;
3. a directory written by ``datasets`` ``save_to_disk`` (a Dataset, or a DatasetDict with a
   ``train`` split and optionally ``eval``/``test``/``validation``);
4. a directory holding ``train.json[l]`` and optionally ``eval.json[l]``/``test.json[l]``
   (directly or under ``data/``);
5. otherwise, if the string is a Hub id by :func:`rlhf.api.hub.is_hub_id` (the rule the operator and
   ``rlhf prepare`` apply), a Hub dataset loaded with ``datasets.load_dataset`` (offline from the HF
   cache); anything else is a missing path.

The format (``auto``: by known Hub name, also matched against a local path's last components)
maps a raw row to a :class:`Record`: a prompt in DeepSpeed-Chat's text form (:mod:`rlhf.data.formats`)
or, from message lists, the conversation so far (:mod:`rlhf.data.chat`). ``generic`` (and ``hh``)
rows take any of these shapes:

* ``prompt``/``chosen``/``rejected`` strings, used verbatim (DeepSpeed-Chat's datasets);
* ``chosen``/``rejected`` message lists (``[{role, content}, ...]``) ending with the assistant's
  answer, the turns before it being the prompt (UltraFeedback), or with the prompt in ``prompt``
  as a message list or a string (TRL's conversational form);
* ``chosen``/``rejected`` whole ``Human: ... Assistant: ...`` transcripts without a ``prompt`` (hh-rlhf
  raw): the prompt is everything before the last ``Assistant:``, and must be the same in both;
* a ``messages`` list (SFT data): its last message is the answer.

A malformed record raises :class:`DataError` naming where it is, or is skipped and counted.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import datasets

from rlhf.api.datasets import KNOWN_FORMATS, is_local_jsonfile, known_format
from rlhf.api.hub import is_hub_id
from rlhf.config.parts import DataSource
from rlhf.data.chat import ChatError, Conversation, conversation, parse_transcript, split_last_answer
from rlhf.data.formats import ASSISTANT, format_answer, format_prompt


class DataError(ValueError):
    """Data cannot be loaded or prepared; the message names the file/dataset and record at fault."""


@dataclass(frozen=True)
class Record:
    """One example: a prompt and its chosen (and rejected) answer.

    A text prompt is DeepSpeed-Chat's form, ``prompt + chosen`` reading naturally (the answer with
    its leading space); a :data:`Conversation` prompt is the turns so far, the answers their bare
    content. :class:`rlhf.data.render.Renderer` turns either into the model's text. ``where`` names
    the record in error messages (file or dataset, record index).
    """

    prompt: str | Conversation
    chosen: str
    rejected: str | None = None
    where: str = field(default="", compare=False)


#: Split names, first match wins; ``*_prefs`` are the preference splits of UltraFeedback-style datasets.
TRAIN_NAMES = ("train", "train_prefs")
EVAL_NAMES = ("eval", "test", "validation", "test_prefs")
FIELDS = ("prompt", "chosen", "rejected", "messages")


@dataclass(frozen=True)
class ResolvedSource:
    """Where a source's data lives, found without reading any record."""

    spec: str  # the configured path
    format: str  # never "auto"
    kind: Literal["files", "disk", "hub"]
    location: str  # absolute path (files: the directory or file; disk: the directory) or Hub name
    train_file: Path | None = None
    eval_file: Path | None = None

    def files(self) -> list[Path]:
        """The local files the data is read from (for cache fingerprints)."""
        if self.kind == "files":
            return [f for f in (self.train_file, self.eval_file) if f is not None]
        if self.kind == "disk":
            return sorted(p for p in Path(self.location).rglob("*") if p.is_file())
        return []


@dataclass
class SourceData:
    """A source's records: ``eval`` is None when the source ships no eval split."""

    source: ResolvedSource
    train: list[Record]
    eval: list[Record] | None
    skipped: dict[str, int] = field(
        default_factory=dict
    )  # where (file, or name[split]) -> bad records skipped


# --------------------------------------------------------------------------------------------- resolution


def _find_split_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    found = [directory / f"{n}{ext}" for n in names for ext in (".json", ".jsonl")]
    found = [f for f in found if f.is_file()]
    for name in names:  # first split name wins; both .json and .jsonl for it is ambiguous
        same = [f for f in found if f.stem == name]
        if len(same) > 1:
            raise DataError(f"{directory}: both {same[0].name} and {same[1].name} exist; keep one")
        if same:
            return same[0]
    return None


def _json_dir(directory: Path) -> tuple[Path, Path | None] | None:
    for d in (directory, directory / "data"):
        train = _find_split_file(d, TRAIN_NAMES) if d.is_dir() else None
        if train is not None:
            return train, _find_split_file(d, EVAL_NAMES)
    return None


def _is_saved_dataset(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("dataset_dict.json", "state.json"))


def resolve_source(source: DataSource) -> ResolvedSource:
    """Find where ``source`` lives and which format it has, without reading records."""
    spec = source.path
    fmt = source.format if source.format != "auto" else (known_format(spec) or "generic")
    if is_local_jsonfile(spec):
        base = Path(spec.partition(":")[2] or ".").expanduser().resolve()
        found = _json_dir(base)
        if found is None:
            raise DataError(
                f"{spec}: expected {base / 'data' / 'train.json'} (and optionally eval.json), "
                "DeepSpeed-Chat's local/jsonfile layout"
            )
        return ResolvedSource(spec, fmt, "files", str(base), found[0], found[1])
    path = Path(spec).expanduser()
    if path.is_file():
        return ResolvedSource(spec, fmt, "files", str(path.resolve()), path.resolve())
    if path.is_dir():
        path = path.resolve()
        if _is_saved_dataset(path):
            return ResolvedSource(spec, fmt, "disk", str(path))
        found = _json_dir(path)
        if found is None:
            raise DataError(
                f"{spec}: directory is neither a datasets save_to_disk directory nor holds "
                "train.json/train.jsonl (directly or under data/)"
            )
        return ResolvedSource(spec, fmt, "files", str(path), found[0], found[1])
    if not is_hub_id(spec):  # the rule the operator and `rlhf prepare` apply (rlhf.api.hub)
        raise DataError(f"{spec}: no such file or directory")
    return ResolvedSource(spec, fmt, "hub", spec)


@functools.lru_cache(maxsize=8)
def _load_hub(name: str) -> Any:
    try:
        return datasets.load_dataset(name)
    except Exception as e:  # any failure means the same to the user
        raise DataError(
            f"{name}: neither a local file/directory nor a loadable dataset "
            f"(datasets.load_dataset failed: {type(e).__name__}: {e})"
        ) from e


def fingerprint(src: ResolvedSource) -> Any:
    """What identifies the source's content: file path/size/mtime, or the Hub dataset's own fingerprints."""
    if src.kind == "hub":
        loaded = _load_hub(src.location)
        if isinstance(loaded, datasets.DatasetDict):
            return {split: getattr(ds, "_fingerprint", None) for split, ds in loaded.items()} or src.location
        return getattr(loaded, "_fingerprint", None) or src.location
    out = []
    for f in src.files():
        st = f.stat()
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


# ------------------------------------------------------------------------------------------------ reading


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


class _Bad(Exception):
    """A malformed record (index, field, reason), skippable."""

    def __init__(self, where: str, field_name: str | None, reason: str):
        super().__init__(where, field_name, reason)
        self.where, self.field, self.reason = where, field_name, reason

    def message(self, origin: str) -> str:
        what = f" field {self.field!r}" if self.field else ""
        return f"{origin}: {self.where}{what}: {self.reason}"


RawRow = dict[str, Any] | _Bad


def _json_rows(path: Path) -> Iterator[tuple[str, RawRow]]:
    """(location, row or _Bad) for each record of a JSON array / JSON lines file."""
    text = _read_text(path).removeprefix("\ufeff")
    stripped = text.lstrip()
    if path.suffix != ".jsonl" and stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        for i, row in enumerate(rows):
            where = f"record {i}"
            yield (
                where,
                row if isinstance(row, dict) else _Bad(where, None, f"not an object ({type(row).__name__})"),
            )
        return
    if path.suffix != ".jsonl" and len([line for line in text.splitlines() if line.strip()]) > 1:
        try:  # a multi-line .json that is one JSON value (not a list) is neither format
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None  # JSON lines
        if whole is not None:
            raise DataError(
                f"{path}: expected a JSON list of objects or JSON lines, got a {type(whole).__name__}"
            )
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"record {index} (line {lineno})"
        index += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, _Bad(where, None, f"not valid JSON ({e.msg})")
            continue
        yield (
            where,
            row if isinstance(row, dict) else _Bad(where, None, f"not an object ({type(row).__name__})"),
        )


def _dataset_rows(ds: Any) -> Iterator[tuple[str, RawRow]]:
    """Rows of a ``datasets.Dataset``, reading only the columns a format needs."""
    columns = [c for c in FIELDS if c in ds.column_names]
    data = ds.select_columns(columns).to_dict() if columns else {}
    for i in range(ds.num_rows):
        yield f"record {i}", {c: data[c][i] for c in columns}


# ------------------------------------------------------------------------------------------------ formats


def _text(row: dict[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise _Bad(where, name, "missing")
        return None
    if not isinstance(value, str):
        raise _Bad(where, name, f"wrong type: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(where, name, "empty")
    return value


def _after_last_assistant(text: str, name: str, where: str) -> str:
    answer = text.split(ASSISTANT)[-1]
    if not answer.strip():
        raise _Bad(where, name, f"empty after the last {ASSISTANT!r}")
    return answer


def _map_row(fmt: str, row: dict[str, Any], where: str, require_rejected: bool) -> Record:
    if fmt in ("hh", "generic"):
        return _generic_row(row, where, require_rejected)
    prompt = _text(row, "prompt", where)
    chosen = _text(row, "chosen", where)
    rejected = _text(row, "rejected", where, required=require_rejected)
    assert prompt is not None and chosen is not None
    if fmt == "gptj-pairwise":
        return Record(format_prompt(prompt), format_answer(chosen), rejected and format_answer(rejected))
    if fmt == "yitingxie":
        return Record(
            prompt + ASSISTANT,
            _after_last_assistant(chosen, "chosen", where),
            rejected and _after_last_assistant(rejected, "rejected", where),
        )
    raise ValueError(f"unknown data format {fmt!r}")


def _turns(row: dict[str, Any], name: str, where: str) -> Conversation:
    if not isinstance(row[name], list):
        raise _Bad(
            where,
            name,
            f"wrong type: expected a string or a list of {{role, content}} messages, "
            f"got {type(row[name]).__name__}",
        )
    try:
        return conversation(row[name], name)
    except ChatError as e:
        field_name, _, reason = str(e).partition(": ")
        raise _Bad(where, field_name, reason) from None


def _answer_of(row: dict[str, Any], name: str, where: str) -> tuple[Conversation | None, str]:
    """(the turns before the answer, or None when the field holds only the answer; the answer)."""
    value = row.get(name)
    if isinstance(value, str):
        if "prompt" in row:
            return None, _text(row, name, where) or ""
        turns = parse_transcript(value)  # a whole transcript (hh-rlhf raw)
        if turns is None:
            raise _Bad(
                where, "prompt", f"missing (and {name!r} is not a 'Human: ... Assistant: ...' transcript)"
            )
    else:
        turns = _turns(row, name, where)
    if turns[-1][0] != "assistant":
        raise _Bad(where, name, f"the last message must be the assistant's answer, got role {turns[-1][0]!r}")
    if not turns[-1][1].strip():
        raise _Bad(where, name, "empty answer")
    return turns[:-1] or None, turns[-1][1]


def _generic_row(row: dict[str, Any], where: str, require_rejected: bool) -> Record:
    """A row of any generic shape (see the module docstring) as a Record."""
    if "chosen" not in row and row.get("messages") is not None:  # SFT conversations
        try:
            prompt, answer = split_last_answer(_turns(row, "messages", where), "messages")
        except ChatError as e:
            raise _Bad(where, "messages", str(e).partition(": ")[2]) from None
        if require_rejected:
            raise _Bad(where, "rejected", "missing")
        if not answer.strip():
            raise _Bad(where, "messages", "empty answer")
        return Record(prompt, answer)
    if row.get("chosen") is None:
        raise _Bad(where, "chosen", "missing")
    texts = isinstance(row.get("chosen"), str) and isinstance(row.get("prompt"), str)
    if texts:  # DeepSpeed-Chat's text form, verbatim
        prompt_text = _text(row, "prompt", where)
        chosen_text = _text(row, "chosen", where)
        assert prompt_text is not None and chosen_text is not None  # required: _text raised otherwise
        return Record(prompt_text, chosen_text, _text(row, "rejected", where, required=require_rejected))
    before, chosen = _answer_of(row, "chosen", where)
    rejected = None
    if row.get("rejected") is not None:
        other, rejected = _answer_of(row, "rejected", where)
        if before is not None and other is not None and other != before:
            raise _Bad(where, "rejected", "its conversation before the answer differs from chosen's")
        before = before if before is not None else other
    elif require_rejected:
        raise _Bad(where, "rejected", "missing")
    if before is None:  # the prompt is a field of its own
        value = row.get("prompt")
        if value is None:
            raise _Bad(where, "prompt", "missing")
        before = (
            (("user", _text(row, "prompt", where) or ""),)
            if isinstance(value, str)
            else _turns(row, "prompt", where)
        )
    if before[-1][0] != "user":
        raise _Bad(
            where,
            "prompt",
            f"the conversation before the answer must end with the user's turn, not {before[-1][0]!r}",
        )
    return Record(before, chosen, rejected)


def _records(
    rows: Iterator[tuple[str, RawRow]],
    origin: str,
    fmt: str,
    require_rejected: bool,
    on_bad_record: str,
    skipped: dict[str, int],
) -> list[Record]:
    out = []
    for where, row in rows:
        try:
            if isinstance(row, _Bad):
                raise row
            record = _map_row(fmt, row, where, require_rejected)
            out.append(replace(record, where=f"{origin}: {where}"))
        except _Bad as bad:
            if on_bad_record == "error":
                raise DataError(
                    bad.message(origin) + " (set data.on_bad_record=skip to drop such records)"
                ) from None
            skipped[origin] = skipped.get(origin, 0) + 1
    return out


def load_source(
    source: DataSource | ResolvedSource, *, require_rejected: bool, on_bad_record: str = "error"
) -> SourceData:
    """Read every record of a source (train, and eval if it has one).

    ``require_rejected``: True for preference sources (data.paths), False for SFT-only sources,
    whose ``rejected`` is optional. ``on_bad_record``: "error" raises :class:`DataError`, "skip"
    drops the record and counts it in ``SourceData.skipped``.
    """
    src = source if isinstance(source, ResolvedSource) else resolve_source(source)
    skipped: dict[str, int] = {}

    def read(rows: Callable[[], Iterator[tuple[str, RawRow]]], origin: str) -> list[Record]:
        return _records(rows(), origin, src.format, require_rejected, on_bad_record, skipped)

    if src.kind == "files":
        assert src.train_file is not None
        train_file, eval_file = src.train_file, src.eval_file
        train = read(lambda: _json_rows(train_file), str(train_file))
        evals = read(lambda: _json_rows(eval_file), str(eval_file)) if eval_file else None
    else:
        loaded = _load_hub(src.location) if src.kind == "hub" else _load_disk(src.location)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        train_split = next((s for s in TRAIN_NAMES if s in loaded), None)
        if train_split is None:
            raise DataError(
                f"{src.spec}: no training split (none of {', '.join(TRAIN_NAMES)}; splits: {sorted(loaded)})"
            )
        eval_split = next((s for s in EVAL_NAMES if s in loaded), None)
        train = read(lambda: _dataset_rows(loaded[train_split]), f"{src.spec}[{train_split}]")
        evals = (
            read(lambda: _dataset_rows(loaded[eval_split]), f"{src.spec}[{eval_split}]")
            if eval_split
            else None
        )
    if not train:
        raise DataError(
            f"{src.spec}: no usable training records ({sum(skipped.values())} bad records skipped)"
        )
    return SourceData(src, train, evals, skipped)


def _load_disk(path: str) -> Any:
    try:
        return datasets.load_from_disk(path)
    except Exception as e:  # not a readable save_to_disk directory
        raise DataError(f"{path}: cannot load the save_to_disk dataset ({type(e).__name__}: {e})") from e


__all__ = [
    "DataError",
    "KNOWN_FORMATS",
    "Record",
    "ResolvedSource",
    "SourceData",
    "fingerprint",
    "load_source",
    "resolve_source",
]
