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


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, fp32: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
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
        return (
            -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean(),
            chosen_scores,
            rejected_scores,
        )
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
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    mean: torch.Tensor | float | None = None,
    var: torch.Tensor | float | None = None,
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
    rewards = rewards.scatter_add(
        1, end[:, None], (clipped * mask.gather(1, end[:, None]).squeeze(1))[:, None]
    )
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
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
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
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v) - R)^2)`` over answer tokens; returns
    (loss, {clipfrac})."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_sq, clipped_sq), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_sq > unclipped_sq).float(), mask)}
    return loss, stats


# --------------------------------------------------------------------------- DPO
# Shapes: chosen and rejected rows of B pairs, right-padded ``[B, T]``; per-action tensors ``[B, T-1]``.


def answer_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor
) -> torch.Tensor:
    """``[B, T-1]`` float mask of the actions that emit answer tokens: position ``t`` is 1 when token
    ``t + 1`` comes after the prompt and is real (the attention mask ends the sequence), as
    :func:`sft_labels` marks what SFT learns."""
    labels = sft_labels(input_ids, attention_mask, prompt_lens, loss_on_prompt=False)
    return (labels[:, 1:] != IGNORE_INDEX).float()


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the log-probability of its masked tokens (``mask`` ``[B, T-1]``, e.g.
    :func:`answer_mask`): the sum of :func:`logprobs_of` over them, in float32."""
    return (logprobs_of(logits, tokens) * mask.float()).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO on sequence log-probs ``[B]``; returns (loss per pair, chosen rewards, rejected rewards).

    With ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` the loss is
    ``-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``: ``eps = label_smoothing`` is
    conservative DPO's probability that a pair's label is flipped (0: Rafailov et al.'s DPO). The
    implicit rewards are ``beta * (policy - ref)`` of each answer; their difference is ``beta * h``.
    """
    h = (policy_chosen.float() - ref_chosen.float()) - (policy_rejected.float() - ref_rejected.float())
    loss = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    chosen_rewards = beta * (policy_chosen.float() - ref_chosen.float()).detach()
    rejected_rewards = beta * (policy_rejected.float() - ref_rejected.float()).detach()
    return loss, chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------- sampling


def warp_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
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


# --------------------------------------------------------------------------- GRPO / RLOO
# A rollout holds ``group_size`` answers per prompt, a group's answers adjacent: rewards [N] with
# N = prompts x group_size, answer ``i`` of prompt ``p`` at ``p * group_size + i``.


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    baseline: str = "group",
    scale: str = "group",
    eps: float = 1e-4,
    batch_std: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Each answer's advantage, its reward against the rewards of its group; shape [N].

    ``baseline``: ``group`` (GRPO) subtracts the group's mean reward; ``leave_one_out`` (RLOO)
    subtracts the mean of the group's *other* answers, ``r_i - (sum_g - r_i) / (G - 1)``, which is
    ``G / (G - 1) * (r_i - mean_g)``. ``scale``: ``group`` divides by the group's sample standard
    deviation (Bessel-corrected, as GRPO's implementations do) plus ``eps``; ``batch`` by
    ``batch_std`` (default: the standard deviation of all of ``rewards``) plus ``eps``; ``none``
    leaves the advantages unscaled. A group whose answers are all rewarded alike gets 0 everywhere.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be [N] with N a multiple of group_size ({group_size}), got {tuple(rewards.shape)}"
        )
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if baseline == "leave_one_out":
        centred = centred * (group_size / (group_size - 1))
    elif baseline != "group":
        raise ValueError(f"unknown baseline {baseline!r} (group, leave_one_out)")
    if scale == "group":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        std = rewards.float().std() if batch_std is None else torch.as_tensor(batch_std, dtype=torch.float32)
        centred = centred / (std + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r} (group, batch, none)")
    return centred.reshape(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(actor || reference) from the sampled tokens' log-probabilities
    (Schulman's estimators; with ``log r = ref_logprob - logprob``): ``k1 = -log r``,
    ``k2 = (log r)^2 / 2``, ``k3 = r - 1 - log r`` (unbiased and never negative; GRPO's)."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def grpo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    estimator: str = "k3",
    aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss over answer tokens: the clipped surrogate with each answer's (sequence-level)
    advantage ``advantages`` [B] on every one of its tokens, plus ``kl_coef`` times the per-token KL
    estimate to the reference (:func:`kl_estimate`; skipped when ``kl_coef`` is 0).

    Ratios are clipped to ``[1 - cliprange, 1 + (cliprange_high or cliprange)]``. ``aggregation``:
    ``token`` averages over every answer token of the batch; ``sequence`` over each answer's tokens,
    then over answers. Returns (loss, {clipfrac, approx_kl, kl}) — ``kl`` the mean per-token
    estimate (0 without a reference).
    """
    mask = mask.to(logprobs.dtype)
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype)[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - cliprange, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    kl = None
    if kl_coef and ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, estimator)
        per_token = per_token + kl_coef * kl
    if aggregation == "token":
        loss = masked_mean(per_token, mask)
    elif aggregation == "sequence":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    else:
        raise ValueError(f"unknown aggregation {aggregation!r} (token, sequence)")
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "kl": masked_mean(kl.detach(), mask) if kl is not None else torch.zeros(()),
        }
    return loss, stats
