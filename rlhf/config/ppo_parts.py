"""Config parts only PPO (stage 3) has. Every constant DeepSpeed-Chat hard-codes in its PPO trainer
is a field here, with DeepSpeed-Chat's value as the default; step-3 flags are named in descriptions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf.config.base import Section


class GenerationConfig(Section):
    """How the actor answers prompts during rollouts (sampling) — step 2 of every PPO iteration."""

    max_prompt_len: int = Field(
        256, ge=1, description="Prompt tokens kept, the last ones (--max_prompt_seq_len)"
    )
    max_answer_len: int = Field(
        256, ge=1, description="Answer tokens generated at most (--max_answer_seq_len)"
    )
    per_device_generation_batch_size: int = Field(
        8, ge=1, description="Prompts answered at once per process (--per_device_generation_batch_size)"
    )
    generation_batches: int = Field(
        1,
        ge=1,
        description="Generation batches collected before each round of training (--generation_batches)",
    )
    do_sample: bool = Field(True, description="Sample answers (greedy if false); rollouts need exploration")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold; 1 disables")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables")
    decoder: Literal["transformers", "static", "compiled"] = Field(
        "transformers",
        description="Decode loop: transformers' generate(); static: our loop over transformers' static KV "
        "cache (no host read per token); compiled: that loop's step through torch.compile (CUDA graphs on a "
        "GPU; the first iteration compiles). Same answers and log-probs; under ZeRO-3, Gaudi or the hybrid "
        "engine generate() runs",
    )
    min_answer_len: int = Field(
        1,
        ge=0,
        description="Answers with fewer tokens (before the end-of-text token) are not scored by the reward "
        "model: they get -ppo.clip_reward_value, the lowest reward there is",
    )


class PolicyRoundsConfig(Section):
    """What PPO and GRPO share: rounds of generation then policy updates, the ratio clip of the
    policy loss."""

    max_iterations: int | None = Field(
        None,
        ge=1,
        description="Stop after this many iterations (rollouts: a round of generation, then training on "
        "it); default: optim.epochs over the prompts",
    )
    cliprange: float = Field(
        0.2,
        gt=0,
        description="Policy ratio clip: ratios outside [1 - cliprange, 1 + cliprange] stop moving the policy "
        "(GRPO's upper bound: grpo.cliprange_high when set)",
    )


class PPOAlgoConfig(PolicyRoundsConfig):
    """The PPO algorithm (DeepSpeed-Chat's DeepSpeedPPOTrainer constants)."""

    ppo_epochs: int = Field(1, ge=1, description="Passes over each round of experience (--ppo_epochs)")
    kl_ctl: float = Field(0.1, ge=0, description="Weight of the per-token KL penalty to the reference model")
    clip_reward_value: float = Field(5.0, gt=0, description="Reward-model scores are clipped to +-this")
    cliprange_value: float = Field(0.2, gt=0, description="Value clip around the rollout's values")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(
        True,
        description="Normalise advantages to zero mean and unit variance over the answer tokens of the "
        "whole rollout of an iteration, all data-parallel ranks together (DeepSpeed-Chat does not whiten)",
    )


class PPOEnginesConfig(Section):
    """The DeepSpeed engines of the four (five) models; the actor's is ``deepspeed``."""

    critic_zero_stage: int | None = Field(
        None, ge=0, le=3, description="(--critic_zero_stage); default: the actor's"
    )
    reference_zero_stage: int | None = Field(
        None, ge=0, le=3, description="Frozen reference; default: the actor's"
    )
    reward_zero_stage: int | None = Field(
        None, ge=0, le=3, description="Frozen reward model; default: the critic's"
    )
    offload_reference_model: bool = Field(
        False,
        description="Keep the reference model's parameters in CPU memory (ZeRO-3) "
        "(--offload_reference_model)",
    )
    offload_reward_model: bool = Field(False, description="Same for the frozen reward model")
    reference: Literal["auto", "copy", "adapters"] = Field(
        "auto",
        description="The KL reference: copy = a frozen copy of the SFT model in its own engine; adapters = "
        "the actor with its LoRA adapters disabled (no second model: needs lora.dim > 0 and "
        "lora.only_optimize_lora, so the base weights stay the SFT model's); auto = adapters when that "
        "holds, else copy",
    )
    hybrid_engine: bool = Field(
        False,
        description="DeepSpeed hybrid engine for the actor's generation, CUDA only (--enable_hybrid_engine)",
    )
    ema: bool = Field(
        False,
        description="Keep an exponential moving average of the actor (float32, on the main rank only), saved "
        "as ema_model/ (--enable_ema)",
    )
    ema_decay: float = Field(0.992, gt=0, lt=1, description="EMA decay per optimizer step")


class PtxConfig(Section):
    """Unsupervised (pretraining-style) loss mixed into the actor's updates (DeepSpeed-Chat's ptx)."""

    coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the SFT-style loss on the SFT share of the data; 0 disables (--unsup_coef)",
    )


class PPOEvalConfig(Section):
    """Greedy answers to held-out prompts, scored before training (the SFT model) and at the end."""

    prompts: str | None = Field(
        None, description="JSONL file of {prompt: ...}; default: the eval split of the PPO prompts"
    )
    max_prompts: int = Field(128, ge=1, description="Prompts evaluated at most")
    checker: Literal["none", "synthetic"] = Field(
        "none",
        description="synthetic: also check answers with the synthetic task's program "
        "(property share, content share; see rlhf.data.synthetic)",
    )
    baseline: bool = Field(True, description="Also evaluate the starting actor (the SFT model) once")


class GRPOAlgoConfig(PolicyRoundsConfig):
    """GRPO and RLOO: a group of sampled answers per prompt, each answer's advantage its reward against
    the group's (no critic), a clipped policy loss and an optional KL term to the reference model."""

    group_size: int = Field(
        8,
        ge=2,
        description="Answers sampled per prompt (G); the group is the baseline of each of its answers",
    )
    advantage: Literal["group", "leave_one_out"] = Field(
        "group",
        description="group (GRPO): reward minus the group's mean reward; leave_one_out (RLOO): reward minus "
        "the mean reward of the group's other answers",
    )
    scale_rewards: Literal["auto", "group", "batch", "none"] = Field(
        "auto",
        description="Divide advantages by the standard deviation of the group's rewards (group, GRPO), of "
        "the whole rollout's, every rank's together (batch), or not at all (none, RLOO and Dr. GRPO); auto: "
        "group with advantage: group, none with leave_one_out",
    )
    rollout_epochs: int = Field(
        1,
        ge=1,
        description="Passes over each rollout in mini-batches of optim.per_device_train_batch_size answers",
    )
    cliprange_high: float | None = Field(
        None, gt=0, description="Upper ratio clip (DAPO's clip-higher); default cliprange"
    )
    kl_coef: float = Field(
        0.04,
        ge=0,
        description="Weight of the per-token KL term to the reference model in the loss; 0: off (no "
        "reference model is loaded)",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3",
        description="Per-token KL estimator, r = p_ref / p_actor: k1 = -log r, k2 = (log r)^2 / 2, k3 = r - "
        "1 - log r (GRPO's, unbiased and never negative)",
    )
    loss_aggregation: Literal["token", "sequence"] = Field(
        "token",
        description="token: mean over every answer token of a mini-batch (long answers weigh more, DAPO); "
        "sequence: mean over each answer's tokens, then over answers (the GRPO paper's)",
    )
