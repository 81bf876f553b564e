"""Steps 2-4 of a PPO iteration: answer prompts, score the answers, turn scores into per-token
advantages. Everything here runs without gradients; the result is one batch of :class:`Experience`.

No model computes a forward pass twice on the same tokens when once would do: the actor's old
log-probs come from generation, and when the critic's first training forward would see the same
weights and tokens as its experience forward (:func:`critic_values_in_training`), the experience
leaves ``values``/``advantages``/``returns`` empty and training fills them (:func:`with_values`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from rlhf import losses
from rlhf.config import GRPOConfig, PPOConfig
from rlhf.data.tokenize import answer_rows
from rlhf.engine.setup import Runtime
from rlhf.generation import Generated, Sampling, generate
from rlhf.stages.base import pad_rows
from rlhf.stages.packed import Packed
from rlhf.stages.ppo_models import PPOModels

if TYPE_CHECKING:
    from rlhf.stages.grpo_models import GRPOModels


@dataclass
class Experience(Packed):
    """One rollout batch, right-packed ``[B, T]`` sequences; per-action tensors are ``[B, T-1]``."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    rewards: torch.Tensor
    scores: torch.Tensor  # the reward model's raw score per sequence
    kl: torch.Tensor
    # The critic's values and GAE over them; None until training's critic forward supplies them.
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None


def sampling(cfg: PPOConfig | GRPOConfig, *, greedy: bool = False) -> Sampling:
    gen = cfg.generation
    return Sampling(
        max_new_tokens=gen.max_answer_len,
        do_sample=gen.do_sample and not greedy,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
    )


def answer(
    models: PPOModels | GRPOModels,
    cfg: PPOConfig | GRPOConfig,
    rt: Runtime,
    prompts: list[list[int]],
    *,
    greedy: bool = False,
) -> Generated:
    """Step 2: the actor answers every one of ``prompts`` (KV cache; every rank in every forward pass
    under ZeRO-3). GRPO's too: its ``prompts`` hold each prompt ``group_size`` times."""
    tok = models.tokenizer
    engine = models.actor
    was_training = engine.module.training
    engine.eval()
    # DeepSpeed's hybrid engine (PPO's engines.hybrid_engine) generates through the engine (its
    # inference kernels); else the module.
    hybrid = isinstance(cfg, PPOConfig) and cfg.engines.hybrid_engine
    model = engine if hybrid else engine.module
    try:
        return generate(
            model,
            prompts,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
            sampling=sampling(cfg, greedy=greedy),
            device=rt.device,
            synced_gpus=models.actor_ds_config["zero_optimization"]["stage"] == 3,
            static_prompt_len=cfg.generation.max_prompt_len if rt.accel.static_shapes else None,
            decoder="transformers" if hybrid else cfg.generation.decoder,
            cache_len=cfg.generation.max_prompt_len + cfg.generation.max_answer_len,
        )
    finally:
        engine.train(was_training)


def static_length(cfg: PPOConfig | GRPOConfig, rt: Runtime) -> int | None:
    """The fixed length of PPO's reward-model inputs and ptx batches under static shapes (Gaudi, or
    data.pad_to_max_length): data.max_seq_len; None pads to the longest row."""
    return cfg.data.max_seq_len if rt.accel.static_shapes or cfg.data.pad_to_max_length else None


def reward_inputs(
    models: PPOModels | GRPOModels, cfg: PPOConfig | GRPOConfig, gen: Generated, rt: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the reward model for ``gen``: what the reward stage trained on,
    ``prompt + answer (+ eot if it ended)`` right-padded with a length mask — the actor's own tokens,
    or the decoded text re-tokenized (then, under static shapes, padded to :func:`static_length`,
    keeping the last tokens of a longer row: the score is read at its end)."""
    if models.same_reward_tokenizer:
        positions = torch.arange(gen.sequences.size(1))[None, :]
        return gen.sequences, (positions < gen.score_lens[:, None]).long()
    actor_tok, rm_tok = models.tokenizer, models.reward_tokenizer
    prompts = [
        actor_tok.decode(gen.sequences[i, : int(n)].tolist(), skip_special_tokens=True)
        for i, n in enumerate(gen.prompt_lens)
    ]
    answers = [actor_tok.decode(a, skip_special_tokens=True) for a in gen.answers]
    eot = [rm_tok.eos_token_id if ended else None for ended in gen.ended.tolist()]
    rows = answer_rows(rm_tok, prompts, answers, eot)
    length = static_length(cfg, rt)
    if length is not None:
        rows = [row[-length:] for row in rows]
    return pad_rows(rows, rm_tok.pad_token_id, length or max(map(len, rows)))


@torch.no_grad()
def reward_model_scores(
    models: PPOModels | GRPOModels, cfg: PPOConfig | GRPOConfig, gen: Generated, rt: Runtime, lowest: float
) -> torch.Tensor:
    """The frozen reward model's score of each answer; an answer shorter than
    ``generation.min_answer_len`` gets ``lowest`` instead."""
    reward = models.reward
    assert reward is not None, "no reward model to score with"  # GRPO's is optional
    ids, mask = (t.to(rt.device) for t in reward_inputs(models, cfg, gen, rt))
    values = reward(ids, attention_mask=mask)
    scores = reward.module.scores(values, mask).float().cpu()
    too_short = gen.content_lens < cfg.generation.min_answer_len
    return torch.where(too_short, torch.full_like(scores, lowest), scores)


def score(models: PPOModels, cfg: PPOConfig, gen: Generated, rt: Runtime) -> torch.Tensor:
    """Step 3: the frozen reward model's score of each answer (too-short answers get the lowest reward)."""
    return reward_model_scores(models, cfg, gen, rt, -cfg.ppo.clip_reward_value)


def actor_logprobs(engine, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    logits = engine(input_ids=sequences, attention_mask=attention_mask, use_cache=False).logits
    return losses.logprobs_of(logits, sequences)


def critic_values(engine, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return engine(sequences, attention_mask=attention_mask)[:, :-1].float()


def critic_values_in_training(cfg: PPOConfig) -> bool:
    """Whether the critic's experience forward would repeat its first training forward exactly.

    True with one PPO epoch over a rollout that is a single mini-batch (DeepSpeed-Chat's step-3
    example) and a critic without dropout: training's forward sees the same weights and tokens, so
    its detached values serve as the experience's values and the experience forward is skipped.
    """
    rollout = cfg.generation.per_device_generation_batch_size * cfg.generation.generation_batches
    deterministic = not cfg.critic.dropout and not (cfg.critic_lora.enabled and cfg.critic_lora.dropout)
    return cfg.ppo.ppo_epochs == 1 and rollout == cfg.optim.per_device_train_batch_size and deterministic


def with_values(exp: Experience, values: torch.Tensor, cfg: PPOConfig) -> Experience:
    """Step 4b: advantages and returns by GAE over the critic's (detached) values ``[B, T-1]``."""
    advantages, returns = losses.gae(values, exp.rewards, exp.action_mask, cfg.ppo.gamma, cfg.ppo.lam)
    return replace(exp, values=values * exp.action_mask, advantages=advantages, returns=returns)


def whiten_across_ranks(x: torch.Tensor, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` whitened by the mean and variance over ``mask`` of every data-parallel rank's ``x``
    together (each rank passes its share; collective). On one rank: :func:`losses.whiten`."""
    import torch.distributed as dist

    def all_sum(*values: torch.Tensor) -> torch.Tensor:
        # summed locally in float64, reduced in float32 (Gaudi has no float64)
        packed = torch.stack([v.float() for v in values]).to(device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(packed)
        return packed.cpu().double()

    weight = mask.double()
    total, count = all_sum((x.double() * weight).sum(), weight.sum())
    mean = total / count.clamp(min=1)
    (squares,) = all_sum((((x.double() - mean) ** 2) * weight).sum())
    return losses.whiten(x, mask, mean=mean.item(), var=(squares / count.clamp(min=1)).item())


def whiten_advantages(exp: Experience, cfg: PPOConfig, device: torch.device) -> Experience:
    """Step 4c: the advantages of a whole rollout (every rank's together) whitened once, unless
    ``ppo.whiten_advantages`` is off: each mini-batch then trains on its rows of that, however the
    rollout is cut into mini-batches and ranks."""
    if not cfg.ppo.whiten_advantages or exp.advantages is None:
        return exp
    return replace(exp, advantages=whiten_across_ranks(exp.advantages, exp.action_mask, device))


@torch.no_grad()
def make_experience(
    models: PPOModels, cfg: PPOConfig, rt: Runtime, prompts: list[list[int]], *, values: bool = True
) -> tuple[Experience, Generated, dict[str, float]]:
    """Steps 2-4 for one generation batch: answers, scores, then KL-shaped rewards and GAE over the
    critic's values (unless ``values`` is false: training's critic forward then supplies them)."""
    t0 = time.perf_counter()
    gen = answer(models, cfg, rt, prompts)  # 2. generate
    t1 = time.perf_counter()
    scores = score(models, cfg, gen, rt)  # 3. score
    seqs, mask, action = (x.to(rt.device) for x in (gen.sequences, gen.attention_mask, gen.action_mask))
    if gen.logprobs is not None:  # 4. log-probs (the actor's from generation), values, rewards, GAE
        logprobs = gen.logprobs
    else:
        models.actor.eval()
        logprobs = actor_logprobs(models.actor, seqs, mask).cpu()
        models.actor.train()
    ref_logprobs = actor_logprobs(models.reference, seqs, mask).cpu()
    action = action.cpu().float()
    ppo = cfg.ppo
    rewards, kl = losses.shaped_rewards(
        logprobs, ref_logprobs, scores, action, ppo.kl_ctl, ppo.clip_reward_value
    )
    exp = Experience(gen.sequences, gen.attention_mask, action, logprobs, ref_logprobs, rewards, scores, kl)
    if values:
        models.critic.eval()
        exp = with_values(exp, critic_values(models.critic, seqs, mask).cpu(), cfg)
        models.critic.train()
    t2 = time.perf_counter()
    new_tokens = int(gen.answer_lens.sum())
    stats = {
        "generate_seconds": t1 - t0,
        "experience_seconds": t2 - t1,
        "generated_tokens": float(new_tokens),
    }
    return exp, gen, stats
