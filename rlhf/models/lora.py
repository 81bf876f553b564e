"""LoRA through peft, with DeepSpeed-Chat's options (only-optimize-LoRA, a separate LoRA lr)."""

from __future__ import annotations

from typing import Literal

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from torch import nn

from rlhf.config.parts import LoraConfig

TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]


def peft_config(lora: LoraConfig, task: TaskType) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.dim,
        lora_alpha=lora.alpha or lora.dim,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task,
        # The value head of a reward model is new: train and save it in full.
        modules_to_save=["score"] if task == "SEQ_CLS" else None,
    )


def apply_lora(model: nn.Module, lora: LoraConfig, task: TaskType) -> nn.Module:
    """Wrap ``model`` with LoRA adapters. Unless only_optimize_lora, the base weights keep training."""
    wrapped = get_peft_model(model, peft_config(lora, task))
    if not lora.only_optimize_lora:
        for name, param in wrapped.named_parameters():
            if "original_module" not in name:  # peft's frozen copy of a modules_to_save module
                param.requires_grad_(True)
    return wrapped


def is_lora_param(name: str) -> bool:
    return "lora_" in name
