"""Pure tensor math: losses, label masks and score positions. No models, no I/O, no distributed.

Every function takes plain tensors and is unit-tested on tiny hand-computed cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor, loss_on_prompt: bool
) -> torch.Tensor:
    """Labels for causal-LM training: padding (and, unless ``loss_on_prompt``, the prompt) ignored."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    if not loss_on_prompt:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        labels = labels.masked_fill(positions[None, :] < prompt_lens[:, None], IGNORE_INDEX)
    return labels


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross entropy over labelled positions; returns (loss, number of tokens).

    ``logits[:, t]`` predicts ``labels[:, t + 1]``. With ``fp32`` the softmax runs in float32
    (DeepSpeed-Chat's --compute_fp32_loss), which matters for bf16/fp16 logits.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    if fp32:
        shift_logits = shift_logits.float()
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss / n_tokens.clamp(min=1), n_tokens


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last 1 in ``mask`` (0 for an all-zero row).

    The one rule for where a sequence ends: from its attention (or action) mask, never from token
    ids, so a pad id that is also the eos id (Llama, Mistral, Qwen, GPT-2), or that appears inside a
    prompt, is never mistaken for padding. A reward model's score is its value at
    ``last_index(attention_mask)``, the last real token, in training, PPO scoring and rw-eval alike.
    """
    positions = torch.arange(mask.size(1), device=mask.device)[None, :]
    return (positions * (mask > 0)).amax(dim=1)


def gather_at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[i, index[i]]`` for every row."""
    return values.gather(1, index[:, None]).squeeze(1)


def pairwise_reward_loss(
    chosen_values: torch.Tensor,
    rejected_values: torch.Tensor,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    kind: str = "last_token",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise reward-model loss; returns (loss, chosen scores, rejected scores).

    Scores are the values at each sequence's last real token (:func:`last_index` of its mask).
    ``kind``:

    - ``last_token`` (Bradley-Terry): ``-logsigmoid(score_chosen - score_rejected)`` averaged over
      pairs. It trains exactly the score that evaluation and PPO read.
    - ``divergence`` (DeepSpeed-Chat): ``-logsigmoid(v_chosen - v_rejected)`` averaged over the token
      positions from where the two sequences first differ to where the longer one ends, then over
      pairs; identical pairs use only the last position. Positions past the shorter sequence's end
      compare against values of padding, which a model can learn to exploit.

    Both id tensors (and masks) must have the same (padded) length.
    """
    seq_len = chosen_ids.size(1)
    c_last, r_last = last_index(chosen_mask), last_index(rejected_mask)
    c_end, r_end = c_last + 1, r_last + 1
    differs = (chosen_ids != rejected_ids) | (chosen_mask != rejected_mask)
    diverged = differs.any(dim=1)
    divergence = torch.where(diverged, differs.int().argmax(dim=1), torch.full_like(c_end, seq_len - 1))
    span_end = torch.where(diverged, torch.maximum(c_end, r_end), torch.full_like(c_end, seq_len))
    positions = torch.arange(seq_len, device=chosen_ids.device)[None, :]
    span = (positions >= divergence[:, None]) & (positions < span_end[:, None])
    chosen_scores = gather_at(chosen_values, c_last)
    rejected_scores = gather_at(rejected_values, r_last)
    if kind == "last_token":
        return -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean(), chosen_scores, rejected_scores
    if kind != "divergence":
        raise ValueError(f"unknown pairwise loss {kind!r}")
    per_token = -F.logsigmoid(chosen_values.float() - rejected_values.float())
    per_pair = (per_token * span).sum(dim=1) / span.sum(dim=1).clamp(min=1)
    return per_pair.mean(), chosen_scores, rejected_scores


# --------------------------------------------------------------------------- PPO
# Shapes: B sequences of T tokens, right-padded; position t of a [B, T-1] tensor is the action
# that emitted token t+1. ``mask`` marks answer tokens (the end-of-text token included).


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 if there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
    mean: torch.Tensor | float | None = None, var: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the masked positions; others become 0.

    ``mean`` and ``var`` (population variance) default to those of ``x`` over ``mask``; give them to
    whiten a part of a larger set (a mini-batch of a rollout, one rank's share) by the whole set's.
    """
    if mean is None:
        mean = masked_mean(x, mask)
    if var is None:
        var = masked_mean((x - mean) ** 2, mask)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``logits[:, t]`` scored on ``tokens[:, t + 1]``; shape [B, T-1].

    Computed in float32 (bf16 log-softmax is too coarse for PPO ratios).
    """
    logp = F.log_softmax(logits[:, :-1, :].float(), dim=-1)
    return logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def shaped_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_ctl: float,
    clip_reward_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_ctl * (logprob - ref_logprob)`` on every answer token, plus the
    sequence score clipped to ``+-clip_reward_value`` on its last answer token. Returns (rewards, kl)
    with ``kl`` the per-token estimate ``logprob - ref_logprob``; both zero outside ``mask``."""
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_ctl * kl
    clipped = scores.to(rewards.dtype).clamp(-clip_reward_value, clip_reward_value)
    end = last_index(mask)
    rewards = rewards.scatter_add(1, end[:, None], (clipped * mask.gather(1, end[:, None]).squeeze(1))[:, None])
    return rewards, kl


def gae(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the answer tokens; returns (advantages, returns).

    The episode ends after the last masked position: the value after it is 0. Positions outside
    ``mask`` get 0 advantage and return.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    steps = values.size(1)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        next_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        running = delta + gamma * lam * running * next_mask
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss over answer tokens; returns (loss, {clipfrac, approx_kl})."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v) - R)^2)`` over answer tokens; returns (loss, {clipfrac})."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_sq, clipped_sq), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_sq > unclipped_sq).float(), mask)}
    return loss, stats


# --------------------------------------------------------------------------- sampling


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits as transformers' sampling warpers leave them, in their order: divided by
    ``temperature``, then all but the ``top_k`` largest set to ``-inf`` (0: off), then the smallest
    whose cumulative probability stays within ``1 - top_p`` set to ``-inf`` (1: off; the most likely
    token always stays). Shape [B, V]; no data-dependent control flow, so it compiles to one graph."""
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits
