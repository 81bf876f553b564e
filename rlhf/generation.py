"""Answering prompts with a causal LM: batched, KV-cached ``generate()``, repacked for training.

Prompts are left-padded for generation (so every row's answer starts at the same column); the
result is repacked right-padded — prompt, answer (its end-of-text token included), padding — the
layout every other forward pass of PPO uses, so no model needs position ids for left padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def kwargs(self) -> dict:
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
               "no_repeat_ngram_size": self.no_repeat_ngram_size, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # the model's generation_config may carry sampling defaults that would only warn
            out.update(temperature=None, top_p=None, top_k=None)
        return out


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


def left_pad(rows: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``length`` (default the longest): (input_ids, attention_mask)."""
    length = max(map(len, rows)) if length is None else length
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"prompt {i} has {len(row)} tokens, more than {length}")
        if row:
            ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, length - len(row):] = 1
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
    prompts: list[list[int]], answers: list[list[int]], ends: list[int | None], eos_id: int, pad_id: int,
    length: int | None = None,
) -> Generated:
    """Right-packed sequences of ``prompt + answer + ending token (if any)``, padded to ``length`` or the longest.

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
        sequences=ids, attention_mask=mask, action_mask=action,
        prompt_lens=torch.tensor([len(p) for p in prompts]),
        answer_lens=torch.tensor([len(r) - len(p) for r, p in zip(rows, prompts, strict=True)]),
        content_lens=torch.tensor([len(a) for a in answers]),
        ended=torch.tensor([e is not None and e == eos_id for e in ends]), answers=[list(a) for a in answers],
    )


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    sampling: Sampling,
    device: torch.device | None = None,
    synced_gpus: bool = False,
    static_prompt_len: int | None = None,
) -> Generated:
    """Answer every prompt (one batch) with KV-cached decoding.

    ``synced_gpus`` must be set under ZeRO-3, where every rank takes part in every forward pass
    until all ranks are done. ``static_prompt_len`` pads prompts to a fixed width and the packed
    result to ``static_prompt_len + max_new_tokens`` (static shapes for Gaudi graphs).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot answer an empty prompt")
    ids, mask = left_pad(prompts, pad_id, static_prompt_len)
    device = device or next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), eos_token_id=eos_id, pad_token_id=pad_id,
        synced_gpus=synced_gpus, output_logits=True, return_dict_in_generate=True, **sampling.kwargs(),
    )
    new_ids = out.sequences[:, ids.size(1):]
    answers, ends = zip(*(cut_answer(row, eos_id, pad_id) for row in new_ids.tolist()), strict=True)
    length = static_prompt_len + sampling.max_new_tokens if static_prompt_len else None
    packed = pack(prompts, list(answers), list(ends), eos_id, pad_id, length)
    if getattr(out, "logits", None):
        packed.logprobs = _answer_logprobs(out.logits, new_ids, packed)
    return packed


def _answer_logprobs(step_logits: tuple[torch.Tensor, ...], new_ids: torch.Tensor, gen: Generated) -> torch.Tensor:
    """The log-probability (temperature 1, unwarped) of every generated answer token, in the packed
    layout: the actor's forward pass over the answers, without running it again."""
    picked = torch.stack([
        torch.log_softmax(logits.float(), dim=-1).gather(-1, new_ids[:, t : t + 1]).squeeze(-1)
        for t, logits in enumerate(step_logits)
    ], dim=1).cpu()
    out = torch.zeros(gen.action_mask.shape, dtype=torch.float32)
    for i in range(out.size(0)):
        n, start = int(gen.answer_lens[i]), int(gen.prompt_lens[i]) - 1
        out[i, start : start + n] = picked[i, :n]
    return out
