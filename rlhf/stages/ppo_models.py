"""PPO's models, each in its own DeepSpeed engine: actor and critic train; reference and reward are frozen.

* actor — the SFT model (LoRA optional), ``cfg.deepspeed``/``cfg.optim``; optional EMA copy.
* reference — the same weights, frozen, for the KL penalty: a copy in its own engine, or — with
  LoRA on a frozen base (``lora.only_optimize_lora``) — the actor itself with its adapters
  disabled (:class:`AdaptersOff`, as TRL does), which costs no memory at all.
* critic — the reward model's checkpoint, predicting a value per token; its own optimizer and ZeRO stage.
* reward — the frozen reward model; it may have its own tokenizer (then it scores decoded text).

Dropout is off in all four unless a model section sets ``dropout``: PPO's probability ratios and
values must not be noisy (DeepSpeed-Chat's --disable_actor_dropout). Every model is loaded in the
training dtype (``deepspeed.dtype``): DeepSpeed would cast it there anyway (its float32 master
weights are made from the cast ones), so a float32 load only cost a transient float32 copy. The EMA
copy (float32, for the precision of its small updates) lives on the main rank only, which saves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from rlhf.config import (
    ConfigError,
    DeepSpeedConfig,
    GRPOConfig,
    ModelConfig,
    OptimConfig,
    OptimizerConfig,
    PPOConfig,
)
from rlhf.data.cache import tokenizer_fingerprint
from rlhf.engine.ds_config import build_ds_config
from rlhf.engine.setup import Runtime, initialize_training, torch_dtype, zero3_model_init
from rlhf.models.loading import causal_lm_skeleton, load_causal_lm, load_tokenizer
from rlhf.models.lora import apply_lora
from rlhf.models.reward import RewardModel, load_reward_model

M = TypeVar("M", bound=ModelConfig)


def no_dropout(model: M) -> M:
    """``model`` with dropout off unless its section sets it (PPO's and GRPO's models)."""
    return model if model.dropout is not None else model.model_copy(update={"dropout": 0.0})


def critic_optim(cfg: PPOConfig) -> OptimConfig:
    """The critic's optimizer settings with the actor's batch sizes and epochs."""
    batching = cfg.optim.model_dump(exclude=set(OptimizerConfig.model_fields))
    return OptimConfig(**cfg.critic_optim.model_dump(), **batching)


def _with_stage(ds: DeepSpeedConfig, stage: int | None, offload: bool = False) -> DeepSpeedConfig:
    return ds.model_copy(update={"zero_stage": ds.zero_stage if stage is None else stage, "offload": offload})


def frozen_ds_config(
    cfg: PPOConfig | GRPOConfig, stage: int | None, offload: bool, world_size: int
) -> dict[str, Any]:
    """Engine config of a frozen model: ZeRO-3 if asked (or to offload its parameters), else stage 0
    (a full copy per rank; ZeRO-1/2 shard only optimizer state, which a frozen model has none of)."""
    stage = cfg.deepspeed.zero_stage if stage is None else stage
    stage = 3 if offload or stage == 3 else 0
    ds = _with_stage(cfg.deepspeed, stage, offload)
    return build_ds_config(
        ds,
        cfg.optim,
        world_size,
        train=False,
        micro_batch_size=cfg.generation.per_device_generation_batch_size,
    )


class AdaptersOff:
    """The actor engine with its LoRA adapters disabled (peft's ``disable_adapter``): with a frozen
    base, exactly the SFT model, so it serves as the reference without a copy. Called like an
    engine, in eval mode and without gradients (the reference is frozen)."""

    def __init__(self, actor: Any):
        self.actor = actor

    @property
    def module(self) -> nn.Module:
        return self.actor.module

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any):
        module = self.actor.module
        was_training = module.training
        module.eval()
        try:
            with module.disable_adapter():
                return self.actor(*args, **kwargs)
        finally:
            module.train(was_training)


def reference_from_adapters(cfg: PPOConfig) -> bool:
    """Whether the reference is the actor with its adapters disabled (``engines.reference``)."""
    frozen_base = cfg.lora.enabled and cfg.lora.only_optimize_lora
    choice = cfg.engines.reference
    if choice == "adapters" and not frozen_base:
        raise ConfigError(
            "engines.reference: adapters needs LoRA on a frozen base (lora.dim > 0 and "
            "lora.only_optimize_lora: true): the base weights train otherwise, and the actor without its "
            "adapters is no longer the SFT model"
        )
    return choice == "adapters" or (choice == "auto" and frozen_base)


@dataclass
class PPOModels:
    actor: Any  # DeepSpeed engines
    reference: Any  # an engine, or AdaptersOff(actor)
    critic: Any
    reward: Any
    tokenizer: Any  # the actor's (and the critic's)
    reward_tokenizer: Any
    same_reward_tokenizer: bool
    ema: nn.Module | None  # on the main rank only
    actor_ds_config: dict[str, Any]
    critic_ds_config: dict[str, Any]


def load_tokenizers(cfg: PPOConfig) -> tuple[Any, Any, bool]:
    """(actor tokenizer, reward-model tokenizer, whether they are the same). The critic must share
    the actor's tokenizer: it reads the actor's tokens."""
    tokenizer = load_tokenizer(cfg.actor, cfg.data, "actor")
    actor_fp = tokenizer_fingerprint(tokenizer)
    critic_tok = load_tokenizer(cfg.critic, cfg.data, "critic")
    if tokenizer_fingerprint(critic_tok) != actor_fp:
        where = "critic.tokenizer" if cfg.critic.tokenizer else "critic.name_or_path"
        raise ConfigError(
            f"{where}: the critic's tokenizer ({cfg.critic.tokenizer or cfg.critic.name_or_path}) differs "
            f"from the actor's ({cfg.actor.tokenizer or cfg.actor.name_or_path}); the critic reads the "
            "actor's tokens, so it needs the same tokenizer (a reward model with another tokenizer goes in "
            "reward_model)"
        )
    reward = cfg.reward
    if reward is cfg.critic:
        return tokenizer, tokenizer, True
    reward_tok = load_tokenizer(reward, cfg.data, "reward_model")
    same = tokenizer_fingerprint(reward_tok) == actor_fp
    return tokenizer, (tokenizer if same else reward_tok), same


def check_positions(cfg: PPOConfig) -> None:
    """Refuse at start what would fail hours in: rollouts (prompt + answer) longer than the actor's,
    critic's or reward model's positions, or ptx batches (data.max_seq_len) longer than the actor's."""
    from rlhf.models.checks import check_positions as check

    rollout = cfg.generation.max_prompt_len + cfg.generation.max_answer_len
    setting = "generation.max_prompt_len + max_answer_len"
    sections = [("actor", cfg.actor), ("critic", cfg.critic)]
    if cfg.reward_model is not None:
        sections.append(("reward_model", cfg.reward_model))
    for key, model in sections:
        check(model, key, rollout, setting)
    if cfg.ptx.coef > 0:
        check(cfg.actor, "actor", cfg.data.max_seq_len, "data.max_seq_len (ptx)")


def build_models(
    cfg: PPOConfig, rt: Runtime, total_steps: int, tokenizers: tuple[Any, Any, bool]
) -> PPOModels:
    """Load and wrap all models; ``total_steps`` sizes the lr schedules, ``tokenizers`` is
    :func:`load_tokenizers`' result."""
    import deepspeed

    if cfg.engines.hybrid_engine and rt.accel.name != "cuda":
        raise ConfigError(
            f"engines.hybrid_engine: DeepSpeed's hybrid engine needs CUDA (running on {rt.accel.name})"
        )
    tokenizer, reward_tokenizer, same = tokenizers
    world = rt.dist.world_size
    actor_cfg, critic_cfg = no_dropout(cfg.actor), no_dropout(cfg.critic)

    actor_ds = build_ds_config(cfg.deepspeed, cfg.optim, world)
    if cfg.engines.hybrid_engine:
        actor_ds["hybrid_engine"] = {
            "enabled": True,
            "max_out_tokens": cfg.generation.max_prompt_len + cfg.generation.max_answer_len,
            "inference_tp_size": 1,
            "release_inference_cache": False,
            "pin_parameters": True,
            "tp_gather_partition_size": 8,
        }
    dtype = torch_dtype(cfg.deepspeed)
    with zero3_model_init(actor_ds):
        actor = load_causal_lm(actor_cfg, tokenizer, dtype)
        if cfg.lora.enabled:
            actor = apply_lora(actor, cfg.lora, "CAUSAL_LM")
    actor_engine = initialize_training(actor, rt, actor_ds, cfg.deepspeed, cfg.optim, cfg.lora, total_steps)

    if reference_from_adapters(cfg):
        reference_engine: Any = AdaptersOff(actor_engine)
    else:
        ref_ds = frozen_ds_config(
            cfg, cfg.engines.reference_zero_stage, cfg.engines.offload_reference_model, world
        )
        with zero3_model_init(ref_ds):
            reference = load_causal_lm(actor_cfg, tokenizer, dtype).eval().requires_grad_(False)
        reference_engine, *_ = deepspeed.initialize(model=reference, config=ref_ds, dist_init_required=False)

    critic_ds_model = _with_stage(cfg.deepspeed, cfg.engines.critic_zero_stage, cfg.deepspeed.offload)
    c_optim = critic_optim(cfg)
    critic_ds = build_ds_config(critic_ds_model, c_optim, world)
    with zero3_model_init(critic_ds):
        critic = load_reward_model(critic_cfg, tokenizer, dtype)
        if cfg.critic_lora.enabled:
            critic = RewardModel(apply_lora(critic.model, cfg.critic_lora, "SEQ_CLS"))
    critic_engine = initialize_training(
        critic, rt, critic_ds, critic_ds_model, c_optim, cfg.critic_lora, total_steps
    )

    reward_stage = cfg.engines.reward_zero_stage
    reward_stage = cfg.engines.critic_zero_stage if reward_stage is None else reward_stage
    reward_ds = frozen_ds_config(cfg, reward_stage, cfg.engines.offload_reward_model, world)
    with zero3_model_init(reward_ds):
        reward = (
            load_reward_model(no_dropout(cfg.reward), reward_tokenizer, dtype).eval().requires_grad_(False)
        )
    reward_engine, *_ = deepspeed.initialize(model=reward, config=reward_ds, dist_init_required=False)

    ema = None
    if cfg.engines.ema and rt.is_main:
        with zero3_model_init({"zero_optimization": {"stage": 0}}):
            ema = load_causal_lm(actor_cfg, tokenizer).eval().requires_grad_(False)
    return PPOModels(
        actor_engine,
        reference_engine,
        critic_engine,
        reward_engine,
        tokenizer,
        reward_tokenizer,
        same,
        ema,
        actor_ds,
        critic_ds,
    )


def actor_skeleton(cfg: PPOConfig | GRPOConfig, tokenizer) -> nn.Module:
    """The actor's structure without weights (export materialises the gathered weights into it); PPO's
    and GRPO's."""
    model = causal_lm_skeleton(cfg.actor, tokenizer)
    return apply_lora(model, cfg.lora, "CAUSAL_LM") if cfg.lora.enabled else model


@torch.no_grad()
def update_ema(ema: nn.Module | None, actor: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * actor`` where ``ema`` lives (the main rank; None elsewhere).

    Under ZeRO-3 every rank calls it: the actor's partitions are gathered one parameter at a time,
    which takes all ranks; without ZeRO-3 the other ranks have nothing to do."""
    from rlhf.models.export import _is_zero3_param

    actor_params = dict(actor.named_parameters())
    if not any(_is_zero3_param(p) for p in actor_params.values()):
        if ema is not None:
            for name, target in ema.named_parameters():
                target.lerp_(actor_params[name].data.to(target.device, target.dtype), 1.0 - decay)
        return
    import deepspeed

    targets = dict(ema.named_parameters()) if ema is not None else {}
    for name, source in actor_params.items():
        with deepspeed.zero.GatheredParameters([source]):
            if name in targets:
                target = targets[name]
                target.lerp_(source.data.to(target.device, target.dtype), 1.0 - decay)
