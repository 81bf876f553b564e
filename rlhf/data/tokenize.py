"""Tokenization of records into the unpadded samples each phase trains on.

Prompts and answers are rendered to text by :class:`rlhf.data.render.Renderer` (the chat template
or DeepSpeed-Chat's raw text, ``data.chat_format``), then tokenized separately
(``add_special_tokens=False``) and their ids concatenated, so the prompt/answer boundary is exact.
A sequence starts with the tokenizer's own default prefix (:func:`bos_prefix`: its BOS for Llama,
Mistral, Gemma and OPT, nothing for GPT-2, BLOOM, GPT-NeoX or Qwen2), unless its text already
begins with it (a chat template that writes ``{{ bos_token }}``) — so the ids are what
``tokenizer(text)`` would give, in every phase, in ``rw-eval`` and in ``rlhf chat``. An answer ends
with the end-of-text token (``data.add_eot_token``); under a chat template it ends at the
template's end-of-turn marker, which is that token when it is the eos (ChatML's ``<|im_end|>``),
else followed by it. Samples are stored unpadded; padding is done per batch by the collators.

========  ============================  ==============================================================
phase     columns                       content
========  ============================  ==============================================================
0 (SFT)   ``input_ids``, ``prompt_len``  prompt + answer [+ eot], cut to ``max_seq_len`` at the end;
                                        ``prompt_len`` prompt tokens kept
1 (RM)    ``chosen_ids``,               prompt + chosen [+ eot] and prompt + rejected [+ eot], each cut
          ``rejected_ids``,             to ``max_seq_len`` at the end; ``prompt_len`` prompt tokens kept
          ``prompt_len``                (both rows share them; DPO scores the answer tokens after them)
2 (PPO)   ``prompt_ids``                the prefix (BOS) and the LAST ``max_prompt_len`` - its length
                                        prompt tokens
========  ============================  ==============================================================

Dropped (and counted): samples with no answer token left after truncation (``truncated``) and
reward pairs whose chosen and rejected ids are identical (``identical``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets

from rlhf.data.sources import DataError, Record

COLUMNS: dict[int, tuple[str, ...]] = {
    0: ("input_ids", "prompt_len"),
    1: ("chosen_ids", "rejected_ids", "prompt_len"),
    2: ("prompt_ids",),
}
_IDS = datasets.List(datasets.Value("int32"))
FEATURES: dict[int, datasets.Features] = {
    0: datasets.Features({"input_ids": _IDS, "prompt_len": datasets.Value("int32")}),
    1: datasets.Features({"chosen_ids": _IDS, "rejected_ids": _IDS, "prompt_len": datasets.Value("int32")}),
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


def bos_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before every text by default (``add_special_tokens=True``): its BOS
    for Llama, Mistral, Gemma or OPT, none for GPT-2, BLOOM, GPT-NeoX or Qwen2. Special tokens it
    appends (an eos) are not included: answers end with their own end-of-text token."""
    probe = "a b"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    prefix = next(
        (full[:i] for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), []
    )
    return list(prefix)


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def with_prefix(ids: list[int], prefix: Sequence[int]) -> list[int]:
    """``ids`` starting with ``prefix`` (added unless already there, e.g. written by a chat template)."""
    n = len(prefix)
    return ids if not n or ids[:n] == list(prefix) else [*prefix, *ids]


def keep_last(ids: list[int], n: int, prefix: Sequence[int]) -> list[int]:
    """The prefix and the last tokens of ``ids``, ``n`` tokens at most (a prompt cut from the left)."""
    if len(ids) <= n:
        return ids
    head = list(prefix) if ids[: len(prefix)] == list(prefix) and len(prefix) < n else []
    return head + ids[len(ids) - (n - len(head)) :]


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return ids


class Encoder:
    """Token ids of prompts and answers, rendered by a :class:`Renderer` (``data.chat_format``)."""

    def __init__(self, tokenizer: Any, chat_format: str = "auto"):
        from rlhf.data.render import Renderer

        self.tokenizer = tokenizer
        self.renderer = Renderer(tokenizer, chat_format)
        self.prefix = bos_prefix(tokenizer)
        self._special = _special_ids(tokenizer)

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of rendered prompts, the tokenizer's prefix (BOS) first."""
        return [with_prefix(ids, self.prefix) for ids in _ids(self.tokenizer, texts)]

    def encode_answers(self, texts: Sequence[str], eot: Sequence[int | None]) -> list[list[int]]:
        """Ids of rendered answers, each ended by ``eot[i]`` (None: not ended, e.g. cut by a length
        limit). Under a chat template the answer is the assistant turn up to its end-of-turn marker,
        which stands for ``eot[i]`` when it is that token."""
        return [self._end(ids, e) for ids, e in zip(_ids(self.tokenizer, texts), eot, strict=True)]

    def _end(self, ids: list[int], eot: int | None) -> list[int]:
        if self.renderer.template:
            if eot is not None and eot in ids:
                return ids[: ids.index(eot) + 1]
            marker = next((i for i, t in enumerate(ids) if t in self._special), None)
            if marker is not None:
                ids = ids[: marker + 1]
        return ids + ([eot] if eot is not None else [])

    def prompts(self, prompts: Sequence[Any]) -> list[list[int]]:
        """Each prompt's ids (text or conversation, see :class:`Renderer`)."""
        return self.encode_prompts([self.renderer.prompt(p) for p in prompts])

    def answers(
        self, prompts: Sequence[Any], answers: Sequence[str], eot: Sequence[int | None]
    ) -> list[list[int]]:
        """Each answer's ids as it follows its prompt."""
        texts = [self.renderer.answer(p, a) for p, a in zip(prompts, answers, strict=True)]
        return self.encode_answers(texts, eot)

    def rows(
        self, prompts: Sequence[Any], answers: Sequence[str], eot: Sequence[int | None]
    ) -> list[list[int]]:
        """``prompt + answer (+ eot)`` ids of each pair."""
        return [
            p + a for p, a in zip(self.prompts(prompts), self.answers(prompts, answers, eot), strict=True)
        ]


def answer_rows(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], eot: Sequence[int | None]
) -> list[list[int]]:
    """``prompt + answer (+ eot)`` token ids of texts already rendered (e.g. decoded from another
    tokenizer's ids), prompt and answer tokenized on their own and the tokenizer's prefix (BOS) first —
    the way the reward stage tokenized its pairs, so a reward model scores new answers on the same
    boundaries. ``eot[i]`` is the id appended to answer ``i`` (None: nothing, e.g. an answer cut by a
    length limit)."""
    prefix = bos_prefix(tokenizer)
    return [
        with_prefix(p, prefix) + a + ([e] if e is not None else [])
        for p, a, e in zip(_ids(tokenizer, prompts), _ids(tokenizer, answers), eot, strict=True)
    ]


def _render_each(records: Sequence[Record], render: Callable[[Record], str]) -> list[str]:
    """``render(record)`` of every record; a record that cannot be rendered is named in the error."""
    out = []
    for i, record in enumerate(records):
        try:
            out.append(render(record))
        except DataError as e:
            raise DataError(f"{record.where or f'record {i}'}: {e}") from None
    return out


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    phase: int,
    *,
    max_seq_len: int,
    max_prompt_len: int | None = None,
    eot_id: int | None = None,
    chat_format: str = "auto",
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Columns (see the module docstring) for ``records``, and counts of dropped samples."""
    if phase not in (0, 1, 2):
        raise ValueError(f"phase must be 0, 1 or 2, got {phase}")
    dropped = {"truncated": 0, "identical": 0}
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS[phase]}
    enc = Encoder(tokenizer, chat_format)
    prompts = enc.encode_prompts(_render_each(records, lambda r: enc.renderer.prompt(r.prompt)))
    if phase == 2:
        if max_prompt_len is None or max_prompt_len < 1:
            raise ValueError("phase 2 (PPO prompts) needs max_prompt_len >= 1")
        cols["prompt_ids"] = [keep_last(p, max_prompt_len, enc.prefix) for p in prompts]
        return cols, dropped
    eot = [eot_id] * len(records)

    def answers(field: str) -> list[list[int]]:
        texts = _render_each(records, lambda r: enc.renderer.answer(r.prompt, getattr(r, field)))
        return enc.encode_answers(texts, eot)

    def join(prompt: list[int], answer: list[int]) -> list[int] | None:
        ids = (prompt + answer)[:max_seq_len]
        return ids if len(ids) > len(prompt) else None  # None: no answer token left

    chosen = answers("chosen")
    if phase == 0:
        for p, a in zip(prompts, chosen, strict=True):
            ids = join(p, a)
            if ids is None:
                dropped["truncated"] += 1
                continue
            cols["input_ids"].append(ids)
            cols["prompt_len"].append(len(p))
        return cols, dropped
    missing = next((r for r in records if r.rejected is None), None)
    if missing is not None:
        raise DataError(
            f"{missing.where or 'a record'}: reward-model data needs a 'rejected' answer in every record"
        )
    rejected = answers("rejected")
    for p, c, r in zip(prompts, chosen, rejected, strict=True):
        c_ids, r_ids = join(p, c), join(p, r)
        if c_ids is None or r_ids is None:
            dropped["truncated"] += 1
        elif c_ids == r_ids:
            dropped["identical"] += 1
        else:
            cols["chosen_ids"].append(c_ids)
            cols["rejected_ids"].append(r_ids)
            cols["prompt_len"].append(len(p))
    return cols, dropped


def to_dataset(columns: dict[str, list[Any]], phase: int) -> datasets.Dataset | None:
    """An arrow Dataset of the columns, or None when there are no samples."""
    if not columns[COLUMNS[phase][0]]:
        return None
    return datasets.Dataset.from_dict(columns, features=FEATURES[phase])
