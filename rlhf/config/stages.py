"""One typed config per stage, composed from the shared parts in :mod:`rlhf.config.parts`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rlhf.config.base import Section
from rlhf.config.parts import (
    CheckpointConfig,
    DataConfig,
    DeepSpeedConfig,
    DPOAlgoConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    OptimizerConfig,
    RewardModelConfig,
    RewardsConfig,
)
from rlhf.config.ppo_parts import (
    GenerationConfig,
    GRPOAlgoConfig,
    PPOAlgoConfig,
    PPOEnginesConfig,
    PPOEvalConfig,
    PtxConfig,
)


class StageConfig(Section):
    """What every training stage has."""

    phase: ClassVar[int]  # which share of data.split this stage trains on (0 SFT, 1 RM, 2 PPO)
    name: ClassVar[str]
    #: The model section whose tokenizer tokenizes the stage's data (PPO: the actor's).
    tokenizer_section: ClassVar[str] = "model"

    seed: int = Field(1234, description="Seeds data split, shuffling and initialisation (--seed)")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    checkpoint: CheckpointConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def data_cache_dir(self) -> str:
        return self.data.cache_dir or f"{self.checkpoint.output_dir.rstrip('/')}/data_cache"

    @property
    def tokenizer_model(self) -> ModelConfig:
        """The section of :attr:`tokenizer_section`."""
        model = getattr(self, self.tokenizer_section)
        assert isinstance(model, ModelConfig)
        return model

    def model_sections(self) -> list[tuple[str, ModelConfig]]:
        """Every model this stage loads, with its config section's name."""
        return [
            (name, value)
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), ModelConfig)
        ]

    def data_requests(self) -> dict[str, dict[str, Any]]:
        """The tokenized data the stage reads: name -> keyword arguments of
        :func:`rlhf.data.cache.prepare_phase_data` (its share of the split)."""
        return {"train": {"phase": self.phase}}


class SFTConfig(StageConfig):
    """Stage 1: supervised fine-tuning of the actor on prompt -> chosen answers."""

    phase: ClassVar[int] = 0
    name: ClassVar[str] = "sft"
    model: ModelConfig
    loss_on_prompt: bool = Field(
        False, description="Also train on prompt tokens (DeepSpeed-Chat does); default: answer tokens only"
    )

    @model_validator(mode="after")
    def _check_data(self) -> SFTConfig:
        if not self.data.sft_only_paths and not (self.data.paths and self.data.split[0] > 0):
            raise ValueError(
                "data: SFT needs data.sft_only_paths, or data.paths with a positive SFT share in data.split"
            )
        return self


class RewardConfig(StageConfig):
    """Stage 2: reward model (base transformer + scalar head) on chosen/rejected pairs."""

    phase: ClassVar[int] = 1
    name: ClassVar[str] = "reward"
    model: RewardModelConfig
    pairwise_loss: Literal["last_token", "divergence"] = Field(
        "last_token",
        description="last_token: Bradley-Terry on the sequence scores; divergence: DeepSpeed-Chat's "
        "per-token loss over the span where chosen and rejected differ",
    )

    @model_validator(mode="after")
    def _check_data(self) -> RewardConfig:
        if not self.data.paths or self.data.split[1] <= 0:
            raise ValueError(
                "data: the reward stage needs data.paths with a positive reward share in data.split"
            )
        return self


class PPOConfig(StageConfig):
    """Stage 3: PPO of the actor (from SFT) against the reward model, with a critic (from the RM).

    ``optim``, ``deepspeed`` and ``lora`` are the actor's; ``optim.per_device_train_batch_size`` is
    the PPO mini-batch (--per_device_training_batch_size) and ``optim.epochs`` the passes over the
    prompts. The critic has its own optimizer settings, ZeRO stage and LoRA.
    """

    phase: ClassVar[int] = 2
    name: ClassVar[str] = "ppo"
    tokenizer_section: ClassVar[str] = "actor"
    actor: ModelConfig
    critic: RewardModelConfig
    reward_model: RewardModelConfig | None = Field(
        None,
        description="The frozen reward model; default the critic's checkpoint (both start from the RM "
        "stage). It may have its own tokenizer: it then scores the decoded text",
    )
    critic_optim: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(learning_rate=5e-6),
        description="The critic's learning rate, weight decay, schedule and warm-up (--critic_learning_rate, "
        "--critic_weight_decay); it trains on the actor's mini-batches (optim)",
    )
    critic_lora: LoraConfig = Field(
        default_factory=LoraConfig, description="LoRA of the critic (--critic_lora_dim)"
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    ppo: PPOAlgoConfig = Field(default_factory=PPOAlgoConfig)
    engines: PPOEnginesConfig = Field(default_factory=PPOEnginesConfig)
    ptx: PtxConfig = Field(default_factory=PtxConfig)
    evaluation: PPOEvalConfig = Field(default_factory=PPOEvalConfig)

    @model_validator(mode="after")
    def _check_ppo(self) -> PPOConfig:
        if not self.data.paths or self.data.split[2] <= 0:
            raise ValueError("data: PPO needs data.paths with a positive PPO share in data.split")
        if self.ptx.coef > 0 and not self.data.sft_only_paths and self.data.split[0] <= 0:
            raise ValueError("data: ptx.coef > 0 needs SFT data: data.sft_only_paths or a positive SFT share")
        if self.engines.hybrid_engine and self.lora.enabled:
            raise ValueError(
                "engines: hybrid_engine generates with DeepSpeed's inference kernels, which fuse only "
                "DeepSpeed's own LoRA layers, not peft's: rollouts would come from the base weights without "
                "the adapters; set engines.hybrid_engine: false or lora.dim: 0"
            )
        if self.engines.ema and self.lora.enabled:
            raise ValueError(
                "engines: ema averages the actor's full weights; it cannot be combined with lora.dim > 0"
            )
        check_rollout(self, "samples", "generation.per_device_generation_batch_size x generation_batches", 1)
        return self

    @property
    def reward(self) -> RewardModelConfig:
        """The frozen reward model's section (the critic's unless reward_model is set)."""
        return self.reward_model or self.critic

    def data_requests(self) -> dict[str, dict[str, Any]]:
        """PPO's prompts (its share of the split, cut to max_prompt_len) and, with ptx, SFT's data."""
        requests: dict[str, dict[str, Any]] = {
            "prompts": {"phase": 2, "max_prompt_len": self.generation.max_prompt_len}
        }
        if self.ptx.coef > 0:
            requests["ptx"] = {"phase": 0}
        return requests


def check_rollout(cfg: PPOConfig | GRPOConfig, rows: str, product: str, per_prompt: int) -> None:
    """What PPO and GRPO refuse alike: mini-batches (optim.per_device_train_batch_size) that do not
    divide the ``rows`` of an iteration (``product``: how they are counted, times ``per_prompt``),
    and prompts plus answers longer than data.max_seq_len."""
    gen = cfg.generation
    count = gen.per_device_generation_batch_size * gen.generation_batches * per_prompt
    if count % cfg.optim.per_device_train_batch_size:
        raise ValueError(
            f"optim: per_device_train_batch_size ({cfg.optim.per_device_train_batch_size}) must divide the "
            f"{rows} of one iteration, {product} ({count})"
        )
    if gen.max_prompt_len + gen.max_answer_len > cfg.data.max_seq_len:
        raise ValueError(
            "generation: max_prompt_len + max_answer_len "
            f"({gen.max_prompt_len + gen.max_answer_len}) exceeds data.max_seq_len ({cfg.data.max_seq_len})"
        )


#: The generation settings DPO's greedy evaluation reads.
DPO_GENERATION_KEYS = ("max_prompt_len", "max_answer_len", "per_device_generation_batch_size", "decoder")


class DPOConfig(StageConfig):
    """Direct preference optimisation of the policy (from SFT) on chosen/rejected pairs against a
    frozen reference (default: the policy's starting checkpoint), with no reward model.

    It reads the reward stage's share of ``data.split`` and the same pair formats. ``optim``,
    ``deepspeed`` and ``lora`` are the policy's; ``optim.per_device_train_batch_size`` counts pairs.
    ``evaluation`` is PPO's (greedy answers to held-out prompts before and after training; default
    prompts: those of the eval pairs); the answers are as long as ``generation`` says — only its
    lengths, batch size and decoder apply, DPO's evaluation answers greedily.
    """

    phase: ClassVar[int] = 1
    name: ClassVar[str] = "dpo"
    tokenizer_section: ClassVar[str] = "model"
    model: ModelConfig
    reference: ModelConfig | None = Field(
        None,
        description="The frozen reference; default the model's checkpoint (the SFT model). It must share "
        "the model's tokenizer: DPO compares the two models' log-probs of the same tokens",
    )
    dpo: DPOAlgoConfig = Field(default_factory=DPOAlgoConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    evaluation: PPOEvalConfig = Field(default_factory=PPOEvalConfig)

    @model_validator(mode="after")
    def _check_data(self) -> DPOConfig:
        if not self.data.paths or self.data.split[1] <= 0:
            raise ValueError(
                "data: DPO needs data.paths with a positive reward share in data.split (it trains on "
                "the reward stage's pairs)"
            )
        sampling = sorted(self.generation.model_fields_set - set(DPO_GENERATION_KEYS))
        if sampling:
            raise ValueError(
                f"generation: DPO's evaluation answers greedily; generation.{sampling[0]} does not apply "
                f"(only {', '.join('generation.' + k for k in DPO_GENERATION_KEYS)} do)"
            )
        return self

    @property
    def reference_model(self) -> ModelConfig:
        """The frozen reference's section (the model's unless reference is set)."""
        return self.reference or self.model

    def data_requests(self) -> dict[str, dict[str, Any]]:
        """The preference pairs of the reward stage's share (phase 1), prompt lengths included."""
        return {"train": {"phase": 1}}


class GRPOConfig(StageConfig):
    """GRPO / RLOO of the actor (from SFT): per prompt ``grpo.group_size`` sampled answers, each
    answer's advantage its reward against its group's (no critic), a clipped policy loss and a KL
    term to the reference model (``grpo.kl_coef``; 0: none is loaded).

    Rewards (``rewards``) are a weighted sum of reward functions (code, :mod:`rlhf.rewards`) and/or
    a frozen reward model's clipped score (``reward_model``). ``generation.per_device_generation_batch_size``
    counts prompts: each generation batch answers them ``group_size`` times. ``optim``, ``deepspeed``
    and ``lora`` are the actor's; ``optim.per_device_train_batch_size`` counts answers per mini-batch.
    """

    phase: ClassVar[int] = 2
    name: ClassVar[str] = "grpo"
    tokenizer_section: ClassVar[str] = "actor"
    actor: ModelConfig
    reference: ModelConfig | None = Field(
        None,
        description="The KL reference; default the actor's starting checkpoint (with LoRA on a frozen base: "
        "the actor with its adapters disabled, no second model). Not loaded when grpo.kl_coef is 0",
    )
    reward_model: RewardModelConfig | None = Field(
        None,
        description="A trained reward model, scored as PPO scores (its score at the answer's last token; it "
        "may have its own tokenizer and then scores the decoded text); its weight is rewards.model_weight",
    )
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    grpo: GRPOAlgoConfig = Field(default_factory=GRPOAlgoConfig)
    evaluation: PPOEvalConfig = Field(default_factory=PPOEvalConfig)

    @model_validator(mode="after")
    def _check_grpo(self) -> GRPOConfig:
        if not self.data.paths or self.data.split[2] <= 0:
            raise ValueError("data: GRPO needs data.paths with a positive PPO (prompt) share in data.split")
        if not self.rewards.functions and self.reward_model is None:
            raise ValueError(
                "rewards: no reward source: give rewards.functions (e.g. [rlhf.data.synthetic:reward]) "
                "and/or reward_model (a trained reward model)"
            )
        if self.reward_model is not None and self.rewards.model_weight == 0:
            raise ValueError(
                "rewards.model_weight: 0 with a reward_model set; drop reward_model or give it a weight"
            )
        check_rollout(
            self,
            "answers",
            "generation.per_device_generation_batch_size x generation_batches x grpo.group_size",
            self.grpo.group_size,
        )
        return self

    def data_requests(self) -> dict[str, dict[str, Any]]:
        """GRPO's prompts: PPO's share of the split, cut to max_prompt_len, each with its dataset row."""
        return {"prompts": {"phase": 2, "max_prompt_len": self.generation.max_prompt_len}}


def deprecated_settings(cfg: StageConfig) -> list[str]:
    """One line per deprecated setting ``cfg`` still sets (they are accepted and have no effect)."""
    lines = []
    for section, model in cfg.model_sections():
        if isinstance(model, RewardModelConfig) and model.num_padding_at_beginning is not None:
            lines.append(
                f"{section}.num_padding_at_beginning is deprecated and ignored: the end of every sequence "
                "comes from its attention mask (its length), in reward training, PPO scoring and rw-eval "
                "alike; remove the setting"
            )
    return lines


#: Every stage kind's config class, by stage name (rlhf.api.graph.KINDS has the same names; each kind's
#: trainer is the module rlhf.stages.<name>).
STAGES: dict[str, type[StageConfig]] = {c.name: c for c in StageConfig.__subclasses__()}
