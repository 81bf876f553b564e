"""What differs between model families that the trainer must know: the names of their linear layers.

:data:`LORA_TARGETS` maps a transformers ``config.model_type`` to the module names LoRA adapts by
default (``lora.target_modules`` unset): every attention and MLP projection of the transformer
blocks, under the family's own names, never the output head (``lm_head``, a reward model's ``score``).
A family missing here gets peft's ``all-linear``, which picks the same layers by type.
"""

from __future__ import annotations

from typing import Any

_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FUSED_QKV = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")  # BLOOM, GPT-NeoX, Falcon

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # Conv1D layers (peft transposes them: fan_in_fan_out)
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "bloom": _FUSED_QKV,
    "gpt_neox": _FUSED_QKV,
    "falcon": _FUSED_QKV,
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),  # its experts are fused parameters, not layers
    **{
        family: _LLAMA
        for family in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo2",
            "stablelm",
            "smollm3",
        )
    },
}


def model_type(model: Any) -> str | None:
    """The ``config.model_type`` of a transformers model (through a peft or reward-model wrapper)."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def lora_targets(family: str | None) -> list[str] | str:
    """The default LoRA ``target_modules`` of a ``model_type``: its projections, or ``"all-linear"``."""
    targets = LORA_TARGETS.get(family or "")
    return list(targets) if targets is not None else "all-linear"
