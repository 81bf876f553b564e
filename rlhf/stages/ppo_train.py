"""Step 5 of a PPO iteration for one mini-batch: the actor's clipped policy loss (+ ptx), then the
critic's clipped value loss, each followed by its engine's backward and optimizer step.

One function, so that :class:`rlhf.stages.ppo.PPOTrainer` and the benchmark (``bench/step.py``,
against a plain PyTorch loop of the same models and batch) run the same code.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf import losses
from rlhf.config import PPOConfig
from rlhf.stages.ppo_models import PPOModels, update_ema
from rlhf.stages.rollout import Experience, actor_logprobs, critic_values, whiten_advantages, with_values


def train_minibatch(
    models: PPOModels,
    mb: Experience,
    cfg: PPOConfig,
    device: torch.device,
    ptx_batch: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Update actor and critic on ``mb``; returns the detached losses and statistics.

    When ``mb`` has no values yet (the rollout is this one mini-batch, :func:`critic_values_in_training`),
    the critic's forward here is its only one on these tokens: its detached values feed GAE and
    whitening before the actor's loss needs the advantages, and its graph serves the value loss."""
    seqs, mask = mb.sequences.to(device), mb.attention_mask.to(device)
    action = mb.action_mask.to(device)
    values = None
    if mb.values is None:  # 4b. the critic's one forward on these tokens: values for GAE and its loss
        values = critic_values(models.critic, seqs, mask)
        mb = whiten_advantages(with_values(mb, values.detach().cpu(), cfg), cfg, device)
    assert mb.advantages is not None and mb.values is not None and mb.returns is not None  # GAE has run
    # actor: clipped policy loss (+ ptx)
    logprobs = actor_logprobs(models.actor, seqs, mask)
    actor_loss, pstats = losses.policy_loss(
        logprobs, mb.logprobs.to(device), mb.advantages.to(device), action, cfg.ppo.cliprange
    )
    loss = actor_loss
    out: dict[str, torch.Tensor] = {}
    if ptx_batch is not None:
        batch = {k: v.to(device) for k, v in ptx_batch.items()}
        logits = models.actor(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        ptx_loss, _ = losses.causal_lm_loss(logits, batch["labels"], fp32=True)
        loss = loss + cfg.ptx.coef * ptx_loss
        out["ptx_loss"] = ptx_loss.detach()
    models.actor.backward(loss)
    models.actor.step()
    if cfg.engines.ema and models.actor.is_gradient_accumulation_boundary():  # every rank: ZeRO-3 gathers
        update_ema(models.ema, models.actor.module, cfg.engines.ema_decay)
    # critic: clipped value loss
    if values is None:
        values = critic_values(models.critic, seqs, mask)
    critic_loss, vstats = losses.value_loss(
        values, mb.values.to(device), mb.returns.to(device), action, cfg.ppo.cliprange_value
    )
    models.critic.backward(critic_loss)
    models.critic.step()
    out.update(
        actor_loss=actor_loss.detach(),
        critic_loss=critic_loss.detach(),
        actor_clipfrac=pstats["clipfrac"],
        approx_kl=pstats["approx_kl"],
        critic_clipfrac=vstats["clipfrac"],
    )
    return out


def collect(stats: dict[str, list[float]], step: dict[str, Any]) -> None:
    """Append one mini-batch's statistics to the iteration's lists (one host read per value)."""
    for name, value in step.items():
        stats.setdefault(name, []).append(float(value))
