"""Save a trained model HF-style (safetensors + tokenizer) from any ZeRO stage, LoRA merged.

Under ZeRO-3 every parameter is gathered one at a time (all ranks take part) into a CPU state
dict on rank 0, which loads it into a skeleton of the same structure built on the meta device,
merges LoRA adapters into the base weights and calls ``save_pretrained``. The result loads
offline from the directory alone with ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def _is_zero3_param(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_id")


def gather_state_dict(module: nn.Module, is_main: bool) -> dict[str, torch.Tensor] | None:
    """The full state dict on the main rank (CPU tensors), None elsewhere. Collective under ZeRO-3."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    first_name: dict[int, str] = {}  # every rank tracks tied weights, so all gather the same tensors
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first_name:  # tied weights: gather once
            if is_main:
                state[name] = state[first_name[id(tensor)]]
            continue
        first_name[id(tensor)] = name
        if _is_zero3_param(tensor):
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                if is_main:
                    state[name] = tensor.detach().cpu().clone()
        elif is_main:
            state[name] = tensor.detach().cpu().clone()
    return state if is_main else None


def materialize(build_skeleton: Callable[[], nn.Module], state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the module structure without allocating weights, then adopt ``state``."""
    with torch.device("meta"):
        skeleton = build_skeleton()
    missing, unexpected = skeleton.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"exported state has keys the model does not: {unexpected[:5]}")
    meta_left = [n for n, p in skeleton.named_parameters() if p.is_meta]
    if meta_left:
        from transformers import PreTrainedModel

        # the skeleton itself, or the transformers model a wrapper (PeftModel, RewardModel) holds
        for sub in skeleton.modules():
            if isinstance(sub, PreTrainedModel):
                sub.tie_weights()
                break
        meta_left = [n for n, p in skeleton.named_parameters() if p.is_meta]
    if meta_left:
        raise RuntimeError(f"exported state lacks parameters {meta_left[:5]} (missing {missing[:5]})")
    return skeleton


def merge_lora(module: nn.Module) -> nn.Module:
    merge = getattr(module, "merge_and_unload", None)
    return merge() if merge is not None else module


def save_hf(
    model: nn.Module, tokenizer, out_dir: str | Path, dtype: torch.dtype, extra_files: dict | None = None
) -> Path:
    """Write an HF directory atomically: a temp dir renamed into place once complete."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"save_hf saves a transformers PreTrainedModel (LoRA merged), not {type(model).__name__}"
        )
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), whose typeshed type
    # (_Wrapped) does not bind self as a method: mypy takes ``dtype`` for ``self``.
    model.to(dtype)  # type: ignore[arg-type]
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, content in (extra_files or {}).items():
        (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
