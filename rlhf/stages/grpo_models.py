"""GRPO's models: the actor trains; the KL reference and the reward model are frozen and optional.

* actor — the SFT model (LoRA optional), in its DeepSpeed engine (``cfg.deepspeed``/``cfg.optim``);
* reference — only when ``grpo.kl_coef > 0``: with LoRA on a frozen base and no ``reference``
  section, the actor with its adapters disabled (:class:`rlhf.stages.ppo_models.AdaptersOff`, no
  second model); else a frozen copy of ``reference`` (default the actor's checkpoint);
* reward — only with a ``reward_model`` section: frozen, scored as PPO scores; it may have its own
  tokenizer (it then reads the decoded text).

There is no critic. Dropout is off unless a model section sets it, as in PPO: the policy ratios
must not be noisy. Frozen models are plain replicas unless the actor runs ZeRO-3 (then they are
partitioned too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlhf.config import GRPOConfig
from rlhf.data.cache import tokenizer_fingerprint
from rlhf.engine.ds_config import build_ds_config
from rlhf.engine.setup import Runtime, initialize_training, torch_dtype, zero3_model_init
from rlhf.models.loading import load_causal_lm, load_tokenizer
from rlhf.models.lora import apply_lora
from rlhf.models.reward import load_reward_model
from rlhf.stages.ppo_models import AdaptersOff, frozen_ds_config, no_dropout

Reference = Literal["none", "adapters", "copy"]


@dataclass
class GRPOModels:
    actor: Any  # a DeepSpeed engine
    reference: Any | None  # an engine, AdaptersOff(actor), or None (grpo.kl_coef = 0)
    reward: Any | None  # a frozen engine, or None (rewards from functions only)
    tokenizer: Any  # the actor's
    reward_tokenizer: Any
    same_reward_tokenizer: bool
    actor_ds_config: dict[str, Any]


def reference_kind(cfg: GRPOConfig) -> Reference:
    """none (no KL term), adapters (the actor with its LoRA adapters disabled) or copy."""
    if cfg.grpo.kl_coef == 0:
        return "none"
    if cfg.reference is None and cfg.lora.enabled and cfg.lora.only_optimize_lora:
        return "adapters"
    return "copy"


def load_tokenizers(cfg: GRPOConfig) -> tuple[Any, Any, bool]:
    """(actor tokenizer, reward-model tokenizer, whether they are the same)."""
    tokenizer = load_tokenizer(cfg.actor, cfg.data, "actor")
    if cfg.reference is not None:
        ref_tok = load_tokenizer(cfg.reference, cfg.data, "reference")
        if tokenizer_fingerprint(ref_tok) != tokenizer_fingerprint(tokenizer):
            from rlhf.config import ConfigError

            raise ConfigError(
                f"reference: its tokenizer ({cfg.reference.tokenizer or cfg.reference.name_or_path}) differs "
                "from the actor's; the reference scores the actor's tokens, so it needs the same tokenizer"
            )
    if cfg.reward_model is None:
        return tokenizer, tokenizer, True
    reward_tok = load_tokenizer(cfg.reward_model, cfg.data, "reward_model")
    same = tokenizer_fingerprint(reward_tok) == tokenizer_fingerprint(tokenizer)
    return tokenizer, (tokenizer if same else reward_tok), same


def check_positions(cfg: GRPOConfig) -> None:
    """Refuse at start rollouts (prompt + answer) longer than any model's positions."""
    from rlhf.models.checks import check_positions as check

    rollout = cfg.generation.max_prompt_len + cfg.generation.max_answer_len
    for key, model in cfg.model_sections():
        check(model, key, rollout, "generation.max_prompt_len + max_answer_len")


def build_models(
    cfg: GRPOConfig, rt: Runtime, total_steps: int, tokenizers: tuple[Any, Any, bool]
) -> GRPOModels:
    """Load and wrap the models; ``total_steps`` sizes the lr schedule."""
    import deepspeed

    tokenizer, reward_tokenizer, same = tokenizers
    world = rt.dist.world_size
    dtype = torch_dtype(cfg.deepspeed)
    actor_cfg = no_dropout(cfg.actor)
    actor_ds = build_ds_config(cfg.deepspeed, cfg.optim, world)
    with zero3_model_init(actor_ds):
        actor = load_causal_lm(actor_cfg, tokenizer, dtype)
        if cfg.lora.enabled:
            actor = apply_lora(actor, cfg.lora, "CAUSAL_LM")
    actor_engine = initialize_training(actor, rt, actor_ds, cfg.deepspeed, cfg.optim, cfg.lora, total_steps)

    frozen_ds = frozen_ds_config(cfg, None, False, world)  # ZeRO-3 when the actor's is, else a replica
    reference: Any = None
    kind = reference_kind(cfg)
    if kind == "adapters":
        reference = AdaptersOff(actor_engine)
    elif kind == "copy":
        with zero3_model_init(frozen_ds):
            ref = (
                load_causal_lm(no_dropout(cfg.reference or cfg.actor), tokenizer, dtype)
                .eval()
                .requires_grad_(False)
            )
        reference, *_ = deepspeed.initialize(model=ref, config=frozen_ds, dist_init_required=False)

    reward: Any = None
    if cfg.reward_model is not None:
        with zero3_model_init(frozen_ds):
            rm = (
                load_reward_model(no_dropout(cfg.reward_model), reward_tokenizer, dtype)
                .eval()
                .requires_grad_(False)
            )
        reward, *_ = deepspeed.initialize(model=rm, config=frozen_ds, dist_init_required=False)
    return GRPOModels(actor_engine, reference, reward, tokenizer, reward_tokenizer, same, actor_ds)
