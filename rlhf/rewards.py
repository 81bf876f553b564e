"""Rewards computed by code: reward functions named by import path (``rewards.functions``).

A reward function scores a batch of answers::

    def my_reward(prompts: list[str], answers: list[str], rows: list[dict]) -> Sequence[float]:
        ...

* ``prompts[i]``: the prompt of answer ``i`` as the model read it (rendered by ``data.chat_format``,
  decoded, special tokens removed);
* ``answers[i]``: answer ``i``, decoded without special tokens and without the token that ended it;
* ``rows[i]``: the dataset record the prompt came from, a dict with ``prompt`` (the dataset's text,
  or for a conversation a list of ``{"role", "content"}`` turns), ``chosen`` and ``rejected`` (the
  record's answers, None where it has none) and ``source`` (its file and record); for prompts of
  ``evaluation.prompts`` only ``prompt`` and ``source``. The answers of one prompt's group share
  one dict: do not modify it.

It returns one real number per answer (int or float; not a boolean, not NaN or infinite).
``rlhf.data.synthetic:reward`` is an example: the synthetic task's checker as a verifiable
reward. A function that raises or returns anything else stops the stage with one line naming the
function (its key and import path) and the dataset row; to name the row of an exception, the
function is called again one row at a time, so it should not depend on the batch it is given.
The stage's reward is the weighted sum of every function's value and the reward model's score
(:func:`weighted_sum`). No torch here.
"""

from __future__ import annotations

import importlib
import math
import numbers
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf.config.parts import RewardsConfig
from rlhf.errors import UserError

RewardFn = Callable[[list[str], list[str], list[Mapping[str, Any]]], Sequence[float]]


def row_of(
    prompt: str | Sequence[Sequence[str]],
    chosen: str | None = None,
    rejected: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The row a reward function gets for a prompt (text, or a conversation of ``(role, content)``
    turns) and the record's answers: JSON-ready, a conversation as ``{"role", "content"}`` dicts."""
    value: Any = (
        prompt
        if isinstance(prompt, str)
        else [{"role": role, "content": content} for role, content in prompt]
    )
    return {"prompt": value, "chosen": chosen, "rejected": rejected, "source": source}


class RewardError(UserError):
    """A reward function could not be loaded, raised, or returned something other than numbers."""


@dataclass(frozen=True)
class RewardFunction:
    """A loaded reward function: its config key (``rewards.functions[i]``), import path, weight and
    the name its mean is logged under (``reward/<metric>``)."""

    key: str
    name: str
    weight: float
    fn: RewardFn
    metric: str

    def __call__(self, prompts: list[str], answers: list[str], rows: list[Mapping[str, Any]]) -> list[float]:
        return call(self, prompts, answers, rows)


def load_function(name: str, key: str) -> RewardFn:
    """The callable at import path ``name`` (``package.module:function``, the function may be an
    attribute path ``Class.method``); a :class:`RewardError` naming ``key`` when it is not there."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"{key}: {name!r} is not an import path 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while it is imported
        raise RewardError(
            f"{key}: cannot import module {module_name!r} of {name!r}: {type(e).__name__}: {e}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"{key}: {module_name!r} has no attribute {attr!r} ({name!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"{key}: {name!r} is a {type(obj).__name__}, not a function")
    return obj


def load_functions(cfg: RewardsConfig) -> list[RewardFunction]:
    """Every configured reward function, imported (at stage start, before any model loads)."""
    out = []
    attrs = [f.name.rpartition(":")[2].rpartition(".")[2] for f in cfg.functions]
    for i, (f, attr) in enumerate(zip(cfg.functions, attrs, strict=True)):
        key = f"rewards.functions[{i}]"
        metric = attr if attrs.count(attr) == 1 else f"{attr}_{i}"
        out.append(RewardFunction(key, f.name, f.weight, load_function(f.name, key), metric))
    return out


def _where_raised(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _describe_row(rows: Sequence[Mapping[str, Any]], i: int) -> str:
    row = rows[i] if i < len(rows) else {}
    source = row.get("source") if isinstance(row, Mapping) else None
    prompt = row.get("prompt") if isinstance(row, Mapping) else None
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        prompt = prompt[-1].get("content")
    text = f"row {source}" if source else f"row {i} of the batch"
    if isinstance(prompt, str):
        short = " ".join(prompt.split())
        text += f" (prompt {short[:80] + '...' if len(short) > 80 else short!r})"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def call(
    f: RewardFunction, prompts: list[str], answers: list[str], rows: list[Mapping[str, Any]]
) -> list[float]:
    """``f``'s value of every answer, as floats; a :class:`RewardError` naming ``f`` and the row when
    it raises (the first row that raises alone) or returns anything but one real number per answer."""
    if not (len(prompts) == len(answers) == len(rows)):
        raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers and {len(rows)} rows")
    who = f"{f.key} ({f.name})"
    try:
        out = f.fn(prompts, answers, rows)
    except Exception as batch_error:
        for i in range(len(answers)):  # name the row: the first one that fails on its own
            try:
                f.fn(prompts[i : i + 1], answers[i : i + 1], rows[i : i + 1])
            except Exception as e:
                raise RewardError(
                    f"{who} raised {type(e).__name__}: {e}{_where_raised(e)} on {_describe_row(rows, i)}"
                ) from e
        raise RewardError(
            f"{who} raised {type(batch_error).__name__}: {batch_error}{_where_raised(batch_error)} "
            "on a batch of "
            f"{len(answers)} rows (every row alone passed), from {_describe_row(rows, 0)}"
        ) from batch_error
    if hasattr(out, "tolist"):  # a numpy array or torch tensor
        out = out.tolist()
    if isinstance(out, (str, bytes, Mapping)) or not hasattr(out, "__iter__"):
        raise RewardError(f"{who} returned a {type(out).__name__} ({out!r:.80}), not one number per answer")
    values = list(out)
    if len(values) != len(answers):
        raise RewardError(
            f"{who} returned {len(values)} values for {len(answers)} answers (one number per answer)"
        )
    for i, value in enumerate(values):
        if not _is_number(value):
            kind = (
                "a boolean"
                if isinstance(value, bool)
                else "not a finite number"
                if isinstance(value, numbers.Real)
                else f"a {type(value).__name__}, not a number"
            )
            raise RewardError(f"{who} returned {value!r:.80} ({kind}) for {_describe_row(rows, i)}")
    return [float(v) for v in values]


def weighted_sum(columns: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """``sum_k weights[k] * columns[k][i]`` for every answer ``i`` (each column one source's values)."""
    if len(columns) != len(weights) or not columns:
        raise ValueError(f"{len(columns)} reward columns and {len(weights)} weights")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("reward columns of different lengths")
    return [sum(w * c[i] for c, w in zip(columns, weights, strict=True)) for i in range(n)]
