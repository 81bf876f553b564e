"""Step 5 of a GRPO iteration for one mini-batch: the clipped policy loss with the KL term
(:func:`rlhf.losses.grpo_policy_loss`), the actor's backward and optimizer step.

One function, so that :class:`rlhf.stages.grpo.GRPOTrainer` and the benchmark (``bench/grpo.py``)
run the same code.
"""

from __future__ import annotations

import torch

from rlhf import losses
from rlhf.config import GRPOConfig
from rlhf.stages.grpo_models import GRPOModels
from rlhf.stages.grpo_rollout import Rollout
from rlhf.stages.rollout import actor_logprobs


def train_minibatch(
    models: GRPOModels, mb: Rollout, cfg: GRPOConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """Update the actor on ``mb`` (which has its advantages); returns the detached loss and statistics."""
    assert mb.advantages is not None, "advantages are computed before training (grpo_rollout.with_advantages)"
    seqs, mask, action = (t.to(device) for t in (mb.sequences, mb.attention_mask, mb.action_mask))
    logprobs = actor_logprobs(models.actor, seqs, mask)
    algo = cfg.grpo
    loss, stats = losses.grpo_policy_loss(
        logprobs,
        mb.logprobs.to(device),
        mb.advantages.to(device),
        action,
        algo.cliprange,
        algo.cliprange_high,
        ref_logprobs=None if mb.ref_logprobs is None else mb.ref_logprobs.to(device),
        kl_coef=algo.kl_coef,
        estimator=algo.kl_estimator,
        aggregation=algo.loss_aggregation,
    )
    models.actor.backward(loss)
    models.actor.step()
    return {"loss": loss.detach(), **stats}
