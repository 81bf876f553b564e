"""Shared config parts. Each option is declared once, here, and composed into stage configs.

The DeepSpeed-Chat step-1/step-2 flag each field replaces is named in its description.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlhf.config.base import Section

DType = Literal["bf16", "fp16", "fp32"]
DataFormat = Literal["auto", "hh", "gptj-pairwise", "yitingxie", "generic"]
ChatFormat = Literal["auto", "template", "raw"]


class ModelConfig(Section):
    name_or_path: str = Field(description="Hub id or local directory of the model (--model_name_or_path)")
    tokenizer: str | None = Field(None, description="Tokenizer Hub id or directory; defaults to name_or_path")
    trust_remote_code: bool = False
    dropout: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Set every dropout probability of the model to this value; 0 disables dropout "
        "(--dropout / --disable_dropout). None keeps the model's own.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Activation checkpointing (--gradient_checkpointing)"
    )
    attn_implementation: str | None = Field(None, description="transformers attn_implementation, e.g. sdpa")


class RewardModelConfig(ModelConfig):
    num_padding_at_beginning: int | None = Field(
        None,
        ge=0,
        description="Deprecated and ignored (--num_padding_at_beginning): a sequence's end comes from its "
        "attention mask, so padding is never confused with real tokens equal to the pad id",
    )


class DataSource(Section):
    path: str = Field(
        description="Hub dataset name (e.g. Dahoas/rm-static), a directory written by save_to_disk, a "
        "JSON/JSONL file, a directory with train.json[l]/eval.json[l], or local/jsonfile[:DIR]"
    )
    format: DataFormat = Field(
        "auto",
        description="How records map to prompt/chosen/rejected: hh (Dahoas rm-static, full-hh-rlhf), "
        "gptj-pairwise (Dahoas synthetic-instruct-gptj-pairwise), yitingxie (rlhf-reward-datasets), generic "
        "(prompt/chosen[/rejected] columns, used verbatim); auto picks by known Hub name, else generic",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Section):
    paths: list[DataSource] = Field(
        default_factory=list, description="Preference datasets, split across the three stages (--data_path)"
    )
    split: tuple[float, float, float] = Field(
        (2.0, 4.0, 4.0),
        description="Relative shares of each dataset for SFT, reward model and PPO, e.g. '6,2,2' "
        "(--data_split). Deterministic for a seed, and the three parts are disjoint.",
    )
    sft_only_paths: list[DataSource] = Field(
        default_factory=list, description="Datasets used whole for SFT only (--sft_only_data_path)"
    )
    cache_dir: str | None = Field(
        None,
        description="Tokenized-data cache on storage shared by all nodes (--data_output_path); "
        "default <checkpoint.output_dir>/data_cache",
    )
    max_seq_len: int = Field(512, ge=8, description="Tokens per sequence, prompt included (--max_seq_len)")
    eval_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Held-out share of a dataset that ships no eval/test split"
    )
    add_eot_token: bool = Field(
        True, description="Append the end-of-text token to every answer (--add_eot_token)"
    )
    eot_token: str | None = Field(
        None,
        description="End-of-text token (--eot_token); default the tokenizer's eos token, added if missing",
    )
    chat_format: ChatFormat = Field(
        "auto",
        description="How prompts and answers become text: template renders them with the tokenizer's chat "
        "template (apply_chat_template), raw as DeepSpeed-Chat's 'Human: ... Assistant: ...' text; auto: "
        "template when the tokenizer has one. rlhf chat, prompt-eval and PPO evaluation render alike",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="A malformed record stops the job naming file and record, or is skipped and counted",
    )
    pad_to_max_length: bool = Field(
        False, description="Pad every batch to max_seq_len (static shapes; always on for Gaudi)"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    group_by_length: bool = Field(
        False,
        description="Batch training samples of similar length together (within groups of 50 batches of the "
        "shuffled order, batches in random order): less padding, more real tokens per second",
    )

    @field_validator("split", mode="before")
    @classmethod
    def _parse_split(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            try:
                value = [float(p) for p in parts]
            except ValueError:
                raise ValueError(
                    f"expected three comma-separated numbers like '2,4,4', got {value!r}"
                ) from None
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise ValueError(f"expected three shares (SFT, reward, PPO) like '2,4,4', got {len(value)}")
        return value

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v < 0 for v in value) or sum(value) <= 0:
            raise ValueError("shares must be >= 0 with a positive sum")
        return value


class OptimizerConfig(Section):
    """How one model's weights are updated: AdamW, learning-rate schedule, clipping."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (--learning_rate)")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay, not applied to biases and norms (--weight_decay)"
    )
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(1e-8, gt=0)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("cosine", description="(--lr_scheduler_type)")
    warmup_steps: int = Field(0, ge=0, description="(--num_warmup_steps)")
    warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="Warm-up as a share of all steps, if warmup_steps is 0"
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 disables")


class OptimConfig(OptimizerConfig):
    """The optimizer plus how the stage batches and iterates over its data."""

    epochs: int = Field(1, ge=1, description="Passes over the training data (--num_train_epochs)")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps")
    per_device_train_batch_size: int = Field(8, ge=1, description="(--per_device_train_batch_size)")
    per_device_eval_batch_size: int = Field(8, ge=1, description="(--per_device_eval_batch_size)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="(--gradient_accumulation_steps)")
    compute_fp32_loss: bool = Field(
        False, description="Compute the loss from fp32 logits (--compute_fp32_loss)"
    )


class DeepSpeedConfig(Section):
    zero_stage: int = Field(
        0,
        ge=0,
        le=3,
        description="ZeRO stage 0-3 (--zero_stage); 1 and 2 run as 0 on a single rank without offload",
    )
    dtype: DType = Field("bf16", description="Training precision (--dtype)")
    offload: bool = Field(
        False, description="Offload optimizer state (and parameters under ZeRO-3) to CPU (--offload)"
    )
    stage3_max_live_parameters: int = Field(30_000_000, ge=0)
    stage3_prefetch_bucket_size: int = Field(30_000_000, ge=0)
    stage3_param_persistence_threshold: int = Field(10_000, ge=0)
    dist_timeout_seconds: int = Field(1800, ge=1, description="Timeout of collective operations")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config keys merged last, for options not modelled here",
    )

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedConfig:
        if self.offload and self.zero_stage == 0:
            raise ValueError("offload needs zero_stage >= 1")
        return self


class LoraConfig(Section):
    dim: int = Field(0, ge=0, description="LoRA rank; 0 disables LoRA (--lora_dim)")
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha; default = dim (scaling 1, as DeepSpeed-Chat)"
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="peft target_modules: module name suffixes or 'all-linear' (replaces "
        "--lora_module_name); default: the model family's attention and MLP projections "
        "(rlhf.models.families), 'all-linear' for a family not listed there",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="LR of the LoRA weights (--lora_learning_rate)"
    )
    only_optimize_lora: bool = Field(False, description="Freeze the base weights (--only_optimize_lora)")

    @property
    def enabled(self) -> bool:
        return self.dim > 0

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        if self.only_optimize_lora and not self.enabled:
            raise ValueError("only_optimize_lora needs dim > 0")
        return self


class CheckpointConfig(Section):
    output_dir: str = Field(
        description="Where checkpoints, metrics, the final model and summary.json go (--output_dir)"
    )
    save_interval: int = Field(
        0, ge=0, description="Checkpoint every N optimizer steps; 0: only at the end of each epoch"
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk")
    resume: bool = Field(True, description="Resume automatically from the latest checkpoint in output_dir")
    allow_changed_config: bool = Field(
        False,
        description="Resume even if the data or settings differ from the checkpoint's (by default such a "
        "resume is refused, naming what changed; more epochs, max_steps and logging may always change)",
    )


class LoggingConfig(Section):
    log_interval: int = Field(
        10, ge=1, description="Write train metrics every N optimizer steps (--print_loss)"
    )
    eval_interval: int = Field(
        0, ge=0, description="Evaluate every N optimizer steps; 0: at the end of each epoch (--eval_interval)"
    )
    tensorboard: bool = Field(False, description="Write TensorBoard events (--enable_tensorboard)")
    tensorboard_dir: str | None = Field(
        None, description="Default <output_dir>/tensorboard (--tensorboard_path)"
    )
    progress_bar: bool = True


class DPOAlgoConfig(Section):
    """Direct preference optimisation (DeepSpeed-Chat's DPO step; Rafailov et al. 2023): the policy
    learns from chosen/rejected pairs against a frozen reference, without a reward model."""

    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the implicit KL to the reference: the implicit reward of an answer is "
        "beta * (log p_policy - log p_reference) over its tokens (--beta)",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Conservative DPO: the assumed probability that a pair's preference label is wrong; 0 is "
        "plain sigmoid DPO (--label_smoothing)",
    )
    reference_logps: Literal["cached", "live"] = Field(
        "cached",
        description="cached: the reference's log-probs of every train and eval pair are computed once, "
        "before the first step, and kept with the outputs (reference_logps.pt), so no reference model stays "
        "in memory while training; live: the reference scores every batch — the policy with its LoRA "
        "adapters disabled when lora.only_optimize_lora (no second model), else a frozen copy in its own "
        "engine",
    )


class RewardFunctionConfig(Section):
    """One reward function, computed by code (:mod:`rlhf.rewards`): ``name`` is its import path."""

    name: str = Field(
        description="Import path 'package.module:function' of a function (prompts, answers, rows) -> one "
        "number per answer (see rlhf.rewards); e.g. rlhf.data.synthetic:reward, the synthetic task's checker"
    )
    weight: float = Field(1.0, description="Its weight in the reward, a weighted sum of every source")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        dotted = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
        if not re.fullmatch(f"{dotted}:{dotted}", value.strip()):
            raise ValueError(f"expected an import path 'package.module:function', got {value!r}")
        return value.strip()

    @field_validator("weight")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        return value


class RewardsConfig(Section):
    """Where a stage's rewards come from: reward functions (code) and/or a reward model, as a weighted sum
    ``sum_i weight_i * function_i + model_weight * clip(model score)``."""

    functions: list[RewardFunctionConfig] = Field(
        default_factory=list,
        description="Reward functions by import path, each {name: 'package.module:function', weight: 1.0} "
        "(a bare string is a function of weight 1)",
    )
    model_weight: float = Field(
        1.0, description="Weight of the reward model's score (the stage's reward_model section) in the sum"
    )
    model_score_clip: float = Field(
        5.0,
        gt=0,
        description="The reward model's scores are clipped to +-this; an answer shorter than "
        "generation.min_answer_len gets -this from the model instead of a score",
    )
