"""Answering prompts with a causal LM: batched, KV-cached decoding, repacked for training.

Prompts are left-padded for generation (so every row's answer starts at the same column); the
result is repacked right-padded — prompt, answer (its end-of-text token included), padding — the
layout every other forward pass of PPO uses, so no model needs position ids for left padding.

Two decode loops give the same answers (greedy; sampling: the same distribution) and log-probs:
transformers' ``model.generate`` (``decoder="transformers"``, the default, and the only one under
ZeRO-3's ``synced_gpus``, Gaudi's static shapes and the repetition controls of ``rlhf chat``) and
:mod:`rlhf.decoding`'s loop over a static KV cache (``"static"``; ``"compiled"`` also puts each
decode step through ``torch.compile``, CUDA graphs on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from rlhf.decoding import CausalLM

Decoder = Literal["transformers", "static", "compiled"]


@dataclass
class Sampling:
    """Decoding options (a subset of transformers' GenerationConfig)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # the model's generation_config may carry sampling defaults that would only warn
            out.update(temperature=None, top_p=None, top_k=None)
        return out

    @property
    def repetition_controls(self) -> bool:
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0


@dataclass
class Generated:
    """Prompts and answers, right-packed: ``sequences[i] = prompt_i + answer_i + padding``.

    An answer is its content tokens plus the token that ended it, if any: the end-of-text token, or
    a sampled pad token (the policy chose it, so it is an action that rewards and penalties can land
    on). ``action_mask[i, t]`` (shape [B, T-1]) is 1 where token ``t+1`` is an answer token;
    ``answer_lens`` counts answer tokens (the ending token included), ``content_lens`` those before
    it, ``ended`` marks answers that ended with the end-of-text token (not cut by
    ``max_new_tokens`` or a sampled pad).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_lens: torch.Tensor
    answer_lens: torch.Tensor
    content_lens: torch.Tensor
    ended: torch.Tensor
    answers: list[list[int]]  # answer token ids, the ending token excluded
    logprobs: torch.Tensor | None = None  # [B, T-1]: log-prob of each answer token when it was generated

    @property
    def score_lens(self) -> torch.Tensor:
        """Tokens a reward model reads per row: prompt + content (+ end-of-text if it ended) — the
        layout the reward stage trained on; a sampled pad token is not part of it."""
        return self.prompt_lens + self.content_lens + self.ended.long()


def left_pad(
    rows: list[list[int]], pad_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``length`` (default the longest): (input_ids, attention_mask)."""
    length = max(map(len, rows)) if length is None else length
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"prompt {i} has {len(row)} tokens, more than {length}")
        if row:
            ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, length - len(row) :] = 1
    return ids, mask


def cut_answer(tokens: list[int], eos_id: int, pad_id: int) -> tuple[list[int], int | None]:
    """The answer up to its end: (content tokens, the token that ended it — ``eos_id``, ``pad_id``,
    or None when nothing did, e.g. cut by ``max_new_tokens``).

    A sampled pad token also ends it: what follows would be read as padding.
    """
    for i, tok in enumerate(tokens):
        if tok in (eos_id, pad_id):
            return tokens[:i], tok
    return list(tokens), None


def pack(
    prompts: list[list[int]],
    answers: list[list[int]],
    ends: list[int | None],
    eos_id: int,
    pad_id: int,
    length: int | None = None,
) -> Generated:
    """Right-packed sequences of ``prompt + answer + ending token (if any)``, padded to ``length`` or the
    longest.

    The attention mask comes from the lengths, so an ending pad token (or eos = pad) is a real token.
    """
    rows = [p + a + ([e] if e is not None else []) for p, a, e in zip(prompts, answers, ends, strict=True)]
    longest = max(map(len, rows))
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit in {length}")
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    action = torch.zeros((len(rows), max(length - 1, 0)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        action[i, len(prompts[i]) - 1 : len(row) - 1] = 1
    return Generated(
        sequences=ids,
        attention_mask=mask,
        action_mask=action,
        prompt_lens=torch.tensor([len(p) for p in prompts]),
        answer_lens=torch.tensor([len(r) - len(p) for r, p in zip(rows, prompts, strict=True)]),
        content_lens=torch.tensor([len(a) for a in answers]),
        ended=torch.tensor([e is not None and e == eos_id for e in ends]),
        answers=[list(a) for a in answers],
    )


@torch.no_grad()
def generate(
    model: CausalLM,
    prompts: list[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    sampling: Sampling,
    device: torch.device | None = None,
    synced_gpus: bool = False,
    static_prompt_len: int | None = None,
    decoder: Decoder = "transformers",
    cache_len: int | None = None,
) -> Generated:
    """Answer every prompt (one batch) with KV-cached decoding.

    ``synced_gpus`` must be set under ZeRO-3, where every rank takes part in every forward pass
    until all ranks are done. ``static_prompt_len`` pads prompts to a fixed width and the packed
    result to ``static_prompt_len + max_new_tokens`` (static shapes for Gaudi graphs). ``decoder``
    picks the loop (module docstring); ``cache_len`` is the static cache's length (default: the
    prompts' width + ``max_new_tokens``; give the largest there will be, so one compiled step serves
    every call).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot answer an empty prompt")
    ids, mask = left_pad(prompts, pad_id, static_prompt_len)
    device = device or next(model.parameters()).device
    step_logprobs: torch.Tensor | None
    if decoder != "transformers" and not (synced_gpus or static_prompt_len or sampling.repetition_controls):
        from rlhf.decoding import Choice, decoder_for

        cache_length = max(cache_len or 0, ids.size(1) + sampling.max_new_tokens)
        run = decoder_for(model, ids.size(0), cache_length, device, compile=decoder == "compiled")
        choice = Choice(sampling.do_sample, sampling.temperature, sampling.top_k, sampling.top_p)
        new_ids, step_logprobs = run(ids, mask, sampling.max_new_tokens, choice, eos_id, pad_id)
    else:
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            synced_gpus=synced_gpus,
            output_logits=True,
            return_dict_in_generate=True,
            **sampling.kwargs(),
        )
        new_ids = out.sequences[:, ids.size(1) :]
        step_logits = getattr(out, "logits", None)
        step_logprobs = _picked_logprobs(step_logits, new_ids) if step_logits else None
    answers, ends = zip(*(cut_answer(row, eos_id, pad_id) for row in new_ids.tolist()), strict=True)
    length = static_prompt_len + sampling.max_new_tokens if static_prompt_len else None
    packed = pack(prompts, list(answers), list(ends), eos_id, pad_id, length)
    if step_logprobs is not None:
        packed.logprobs = _answer_logprobs(step_logprobs.cpu(), packed)
    return packed


def _picked_logprobs(step_logits: tuple[torch.Tensor, ...], new_ids: torch.Tensor) -> torch.Tensor:
    """[B, steps]: the log-probability (temperature 1, unwarped) of each generated token."""
    return torch.stack(
        [
            torch.log_softmax(logits.float(), dim=-1).gather(-1, new_ids[:, t : t + 1]).squeeze(-1)
            for t, logits in enumerate(step_logits)
        ],
        dim=1,
    )


def _answer_logprobs(picked: torch.Tensor, gen: Generated) -> torch.Tensor:
    """The generated tokens' log-probabilities ``picked`` [B, steps] in the packed layout: the
    actor's forward pass over the answers, without running it again."""
    out = torch.zeros(gen.action_mask.shape, dtype=torch.float32)
    for i in range(out.size(0)):
        n, start = int(gen.answer_lens[i]), int(gen.prompt_lens[i]) - 1
        out[i, start : start + n] = picked[i, :n]
    return out
