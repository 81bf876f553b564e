"""Tokenization of records into the unpadded samples each phase trains on.

Prompt and answer are tokenized separately (``add_special_tokens=False``) and their ids
concatenated, so the prompt/answer boundary is exact. Samples are stored unpadded; padding is
done per batch by the collators.

========  ============================  ==============================================================
phase     columns                       content
========  ============================  ==============================================================
0 (SFT)   ``input_ids``, ``prompt_len``  prompt + answer [+ eot], cut to ``max_seq_len`` at the end;
                                        ``prompt_len`` prompt tokens kept
1 (RM)    ``chosen_ids``,               prompt + chosen [+ eot] and prompt + rejected [+ eot], each cut
          ``rejected_ids``              to ``max_seq_len`` at the end
2 (PPO)   ``prompt_ids``                the LAST ``max_prompt_len`` prompt tokens
========  ============================  ==============================================================

Dropped (and counted): samples with no answer token left after truncation (``truncated``) and
reward pairs whose chosen and rejected ids are identical (``identical``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from rlhf.data.sources import DataError, Record

COLUMNS: dict[int, tuple[str, ...]] = {
    0: ("input_ids", "prompt_len"),
    1: ("chosen_ids", "rejected_ids"),
    2: ("prompt_ids",),
}
_IDS = datasets.List(datasets.Value("int32"))
FEATURES: dict[int, datasets.Features] = {
    0: datasets.Features({"input_ids": _IDS, "prompt_len": datasets.Value("int32")}),
    1: datasets.Features({"chosen_ids": _IDS, "rejected_ids": _IDS}),
    2: datasets.Features({"prompt_ids": _IDS}),
}


def eot_token_id(tokenizer: Any, add_eot_token: bool, eot_token: str | None) -> int | None:
    """The id appended to every answer, or None when ``add_eot_token`` is off."""
    if not add_eot_token:
        return None
    token = eot_token or tokenizer.eos_token
    if token is None:
        raise DataError("data.add_eot_token is on but the tokenizer has no eos token: set data.eot_token")
    if token not in tokenizer.get_vocab():
        raise DataError(
            f"data.eot_token {token!r} is not in the tokenizer's vocabulary; it must be added to the "
            "tokenizer (and the model's embeddings resized) before preparing data, or use a token it has"
        )
    return int(tokenizer.convert_tokens_to_ids(token))


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def answer_rows(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], eot: Sequence[int | None]) -> list[list[int]]:
    """``prompt + answer (+ eot)`` token ids, prompt and answer tokenized on their own — the way the
    reward stage tokenized its pairs, so a reward model scores new answers on the same boundaries.
    ``eot[i]`` is the id appended to answer ``i`` (None: nothing, e.g. an answer cut by a length limit)."""
    return [p + a + ([e] if e is not None else [])
            for p, a, e in zip(_ids(tokenizer, prompts), _ids(tokenizer, answers), eot, strict=True)]


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    phase: int,
    *,
    max_seq_len: int,
    max_prompt_len: int | None = None,
    eot_id: int | None = None,
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Columns (see the module docstring) for ``records``, and counts of dropped samples."""
    dropped = {"truncated": 0, "identical": 0}
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS[phase]}
    prompts = _ids(tokenizer, [r.prompt for r in records])
    if phase == 2:
        if max_prompt_len is None or max_prompt_len < 1:
            raise ValueError("phase 2 (PPO prompts) needs max_prompt_len >= 1")
        cols["prompt_ids"] = [p[-max_prompt_len:] for p in prompts]
        return cols, dropped
    eot = [] if eot_id is None else [eot_id]

    def join(prompt: list[int], answer: list[int]) -> list[int] | None:
        ids = (prompt + answer + eot)[:max_seq_len]
        return ids if len(ids) > len(prompt) else None  # None: no answer token left

    chosen = _ids(tokenizer, [r.chosen for r in records])
    if phase == 0:
        for p, a in zip(prompts, chosen, strict=True):
            ids = join(p, a)
            if ids is None:
                dropped["truncated"] += 1
                continue
            cols["input_ids"].append(ids)
            cols["prompt_len"].append(len(p))
        return cols, dropped
    if phase != 1:
        raise ValueError(f"phase must be 0, 1 or 2, got {phase}")
    if any(r.rejected is None for r in records):
        raise DataError("reward-model data needs a 'rejected' answer in every record")
    rejected = _ids(tokenizer, [r.rejected or "" for r in records])
    for p, c, r in zip(prompts, chosen, rejected, strict=True):
        c_ids, r_ids = join(p, c), join(p, r)
        if c_ids is None or r_ids is None:
            dropped["truncated"] += 1
        elif c_ids == r_ids:
            dropped["identical"] += 1
        else:
            cols["chosen_ids"].append(c_ids)
            cols["rejected_ids"].append(r_ids)
    return cols, dropped


def to_dataset(columns: dict[str, list[Any]], phase: int) -> datasets.Dataset | None:
    """An arrow Dataset of the columns, or None when there are no samples."""
    if not columns[COLUMNS[phase][0]]:
        return None
    return datasets.Dataset.from_dict(columns, features=FEATURES[phase])
