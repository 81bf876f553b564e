"""Stage 1: supervised fine-tuning (causal LM on prompt -> answer), evaluated by perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlhf import losses
from rlhf.config.stages import SFTConfig
from rlhf.models.loading import causal_lm_skeleton, load_causal_lm
from rlhf.models.lora import apply_lora
from rlhf.stages.base import Batch, Stage, pad_rows


def sft_batch(rows: list[dict[str, Any]], pad_id: int, length: int, loss_on_prompt: bool = False) -> Batch:
    """A causal-LM batch of phase-0 rows (``input_ids``, ``prompt_len``), right-padded to ``length``."""
    input_ids, mask = pad_rows([r["input_ids"] for r in rows], pad_id, length)
    prompt_lens = torch.tensor([r["prompt_len"] for r in rows], dtype=torch.long)
    labels = losses.sft_labels(input_ids, mask, prompt_lens, loss_on_prompt)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class SFTStage(Stage):
    name = "sft"
    lora_task = "CAUSAL_LM"
    cfg: SFTConfig

    def build_model(self, dtype: torch.dtype):
        model = load_causal_lm(self.cfg.model, self.tokenizer, dtype)
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    def build_skeleton(self):
        model = causal_lm_skeleton(self.cfg.model, self.tokenizer)
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        longest = max(len(r["input_ids"]) for r in rows)
        return sft_batch(
            rows, self.tokenizer.pad_token_id, self.padded_length(longest), self.cfg.loss_on_prompt
        )

    def _loss(self, engine, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        fp32 = self.cfg.optim.compute_fp32_loss or self.runtime.accel.needs_fp32_loss
        return losses.causal_lm_loss(out.logits, batch["labels"], fp32=fp32)

    def train_loss(self, engine, batch: Batch):
        loss, _ = self._loss(engine, batch)
        return loss, {"loss": loss.detach()}

    def eval_sums(self, engine, batch: Batch):
        loss, n = self._loss(engine, batch)
        return {"loss_sum": loss.float() * n, "tokens": n.float()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss_sum"] / max(sums["tokens"], 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def real_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def train(cfg: SFTConfig) -> dict[str, Any]:
    """``rlhf train sft``: train the stage to completion; its summary."""
    from rlhf.stages.loop import Trainer

    return Trainer(cfg, SFTStage).run()
