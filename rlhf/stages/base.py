"""What a training stage plugs into the shared loop (:mod:`rlhf.stages.loop`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from rlhf.batching import pad_rows  # noqa: F401  (the stages collate with it)
from rlhf.config.stages import StageConfig
from rlhf.engine.setup import Runtime

Batch = dict[str, torch.Tensor]


class Stage(ABC):
    """A stage: its model, how a batch is collated, its training loss and its evaluation."""

    name: ClassVar[str]
    lora_task: ClassVar[str]
    # Token-list columns of a sample; its length (for data.group_by_length) is their longest.
    length_columns: ClassVar[tuple[str, ...]] = ("input_ids",)

    def __init__(self, cfg: StageConfig, runtime: Runtime, tokenizer):
        self.cfg = cfg
        self.runtime = runtime
        self.tokenizer = tokenizer

    def padded_length(self, longest: int) -> int:
        """Batch length: the longest row, or max_seq_len for static shapes (Gaudi)."""
        if self.cfg.data.pad_to_max_length or self.runtime.accel.static_shapes:
            return self.cfg.data.max_seq_len
        return longest

    @abstractmethod
    def build_model(self, dtype: torch.dtype) -> nn.Module:
        """The trainable model, LoRA applied when configured."""

    @abstractmethod
    def build_skeleton(self) -> nn.Module:
        """The same structure as build_model, for export; called under the meta device."""

    @abstractmethod
    def collate(self, rows: list[dict[str, Any]]) -> Batch: ...

    @abstractmethod
    def train_loss(self, engine, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss to backpropagate and detached metrics of this micro-batch."""

    @abstractmethod
    def eval_sums(self, engine, batch: Batch) -> dict[str, torch.Tensor]:
        """Additive statistics of one eval batch (summed across batches and ranks)."""

    @abstractmethod
    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Eval metrics from the summed statistics."""

    @abstractmethod
    def real_tokens(self, batch: Batch) -> int:
        """Non-padding tokens in a batch (for throughput)."""

    def start(self, trainer: Any, engine: Any, tracker: Any, resumed_from: int) -> None:
        """Once the engine is built and a checkpoint (of step ``resumed_from``, 0: none) loaded, before
        the first step: what a stage does once per run (DPO: its reference log-probs and the baseline
        evaluation). ``trainer`` is the :class:`rlhf.stages.loop.Trainer`."""
        return None

    def finish(self, trainer: Any, engine: Any, tracker: Any, step: int) -> dict[str, float]:
        """After the last step and evaluation, before the model is exported: extra summary metrics,
        keyed as they appear in ``summary.json`` (DPO: the final answers' evaluation)."""
        return {}

    def samples(self, batch: Batch) -> int:
        """Training examples in a batch."""
        return int(batch["input_ids"].size(0))

    def export_model(self, model: nn.Module) -> nn.Module:
        """The model to save_pretrained, given the materialized trained structure (LoRA merged)."""
        from rlhf.models.export import merge_lora

        return merge_lora(model)
