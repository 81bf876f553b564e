"""Load tokenizers and models from a Hub id or a local directory, with DeepSpeed-Chat's knobs."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf.config.base import ConfigError
from rlhf.config.parts import DataConfig, ModelConfig

_DROPOUT_ATTRS = (
    "dropout",
    "attention_dropout",
    "hidden_dropout",
    "activation_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def load_tokenizer(
    model: ModelConfig, data: DataConfig | None = None, key: str = "model"
) -> PreTrainedTokenizerBase:
    """Tokenizer from ``model.tokenizer`` (default: the model path), right-padded for training.

    A tokenizer without a pad token pads with its eos token (as DeepSpeed-Chat does); a configured
    end-of-text token missing from the vocabulary is added as a special token. A source without a
    tokenizer, or one that encodes nothing, is a ConfigError naming ``key`` (the model's section).
    """
    from rlhf.models.checks import check_model, check_tokenizer

    check_model(model, key)
    source = model.tokenizer or model.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        where = f"{key}.tokenizer" if model.tokenizer else f"{key}.name_or_path"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: no tokenizer could be loaded from {source}: {first}") from None
    check_tokenizer(tokenizer, model, key)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if (
        data is not None
        and data.add_eot_token
        and data.eot_token
        and data.eot_token not in tokenizer.get_vocab()
    ):
        tokenizer.add_special_tokens({"additional_special_tokens": [data.eot_token]})
    return tokenizer


def model_config(model: ModelConfig, tokenizer: PreTrainedTokenizerBase, **extra: Any):
    """The HF config with our dropout override and the tokenizer's special ids."""
    config = AutoConfig.from_pretrained(
        model.name_or_path, trust_remote_code=model.trust_remote_code, **extra
    )
    if model.dropout is not None:
        for attr in _DROPOUT_ATTRS:
            if isinstance(getattr(config, attr, None), float):
                setattr(config, attr, model.dropout)
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
    return config


def embedding_rows(module: PreTrainedModel) -> int:
    """Rows of the input embedding — its full size even when ZeRO-3 partitioned it (``ds_shape``;
    a partitioned parameter's own shape is empty)."""
    weight = module.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)  # an nn.Parameter
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def fit_embeddings(module: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to fit the tokenizer (to a multiple of 8) when it has more tokens; never shrink.

    The trained model, its export skeleton and a reload all take the same decision, so a
    vocabulary that is not a multiple of 8 keeps its size everywhere.
    """
    if len(tokenizer) > embedding_rows(module):
        module.resize_token_embeddings(int(8 * math.ceil(len(tokenizer) / 8.0)))


def finish_model(module: PreTrainedModel, model: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow embeddings to fit the tokenizer and switch on checkpointing."""
    fit_embeddings(module, tokenizer)
    if model.gradient_checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module.config.use_cache = False


def load_causal_lm(
    model: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32
):
    """A causal LM ready for training (weights in ``dtype``; DeepSpeed casts to its precision)."""
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    module = AutoModelForCausalLM.from_pretrained(
        model.name_or_path, config=model_config(model, tokenizer), **kwargs
    )
    finish_model(module, model, tokenizer)
    return module


def causal_lm_skeleton(model: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """The structure of :func:`load_causal_lm`'s model without its weights (for export under meta)."""
    module = AutoModelForCausalLM.from_config(model_config(model, tokenizer))
    fit_embeddings(module, tokenizer)
    return module
