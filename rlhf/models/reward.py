"""Reward model: a base transformer plus a scalar value head, with DeepSpeed-Chat semantics.

It is stored as a standard transformers ``*ForSequenceClassification`` checkpoint (``num_labels=1``,
the head is ``score``), so other tools load it too. Unlike the HF class, :meth:`RewardModel.forward`
returns a value per token — the critic of PPO needs them — and the sequence score is the value at
the last real token by the attention mask (:func:`rlhf.losses.last_index`), never by looking for
pad ids, which may equal the eos id or appear inside a prompt.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rlhf import losses
from rlhf.config.parts import RewardModelConfig
from rlhf.models.loading import finish_model, model_config


class RewardModel(nn.Module):
    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model  # the HF sequence-classification model, possibly wrapped by peft

    @property
    def hf(self) -> PreTrainedModel:
        """The underlying HF model, without a peft wrapper."""
        get_base = getattr(self.model, "get_base_model", None)
        return cast(PreTrainedModel, get_base() if get_base is not None else self.model)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.hf.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token values, shape (batch, seq)."""
        hf = self.hf
        backbone = getattr(hf, hf.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return hf.get_submodule("score")(hidden).squeeze(-1)

    @staticmethod
    def scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The score of each (right-padded) sequence: its value at the last real token of
        ``attention_mask``."""
        return losses.gather_at(values, losses.last_index(attention_mask))


def load_reward_model(
    model: RewardModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32
) -> RewardModel:
    """A reward model from a causal-LM checkpoint (new head) or a saved reward model (its head)."""
    config = model_config(model, tokenizer, num_labels=1)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    hf = AutoModelForSequenceClassification.from_pretrained(model.name_or_path, config=config, **kwargs)
    finish_model(hf, model, tokenizer)
    return RewardModel(hf)
