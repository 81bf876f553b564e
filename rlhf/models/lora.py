"""LoRA through peft, with DeepSpeed-Chat's options (only-optimize-LoRA, a separate LoRA lr).

``lora.target_modules`` left unset adapts the model family's own projections
(:func:`rlhf.models.families.lora_targets`); a list or ``"all-linear"`` overrides that.
"""

from __future__ import annotations

from typing import Literal

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from torch import nn

from rlhf.config.parts import LoraConfig
from rlhf.models.families import lora_targets, model_type

TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]


def target_modules(lora: LoraConfig, family: str | None) -> list[str] | str:
    """What LoRA adapts: ``lora.target_modules``, else the default of the model's ``model_type``."""
    return lora.target_modules if lora.target_modules is not None else lora_targets(family)


def peft_config(lora: LoraConfig, task: TaskType, family: str | None = None) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.dim,
        # peft annotates an int, but any positive number works: the scaling is alpha / r.
        lora_alpha=lora.alpha or lora.dim,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=target_modules(lora, family),
        # GPT-2's projections are Conv1D layers (weights stored transposed): peft would switch this on
        # itself, with a warning.
        fan_in_fan_out=family == "gpt2",
        task_type=task,
        # The value head of a reward model is new: train and save it in full.
        modules_to_save=["score"] if task == "SEQ_CLS" else None,
    )


def apply_lora(model: nn.Module, lora: LoraConfig, task: TaskType) -> nn.Module:
    """Wrap ``model`` with LoRA adapters. Unless only_optimize_lora, the base weights keep training."""
    wrapped = get_peft_model(model, peft_config(lora, task, model_type(model)))
    _like_zero3_params(wrapped)
    if not lora.only_optimize_lora:
        for name, param in wrapped.named_parameters():
            if "original_module" not in name:  # peft's frozen copy of a modules_to_save module
                param.requires_grad_(True)
    return wrapped


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def _like_zero3_params(model: nn.Module) -> None:
    """Give the adapters the dtype of a ZeRO-3 partitioned base model.

    Loaded under ``zero.Init`` (ZeRO-3), the base weights are partitioned in the training dtype
    (bf16/fp16) while peft creates its adapters afterwards, in float32; DeepSpeed's ZeRO-3 optimizer
    takes one dtype per parameter group (it keeps its own float32 master copy of every one).
    """
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return
    dtype = partitioned[0].dtype
    for param in model.parameters():
        if not hasattr(param, "ds_id") and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
