"""Stage 1: supervised fine-tuning (causal LM on prompt -> answer), evaluated by perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from rlhf import losses
from rlhf.config.stages import SFTConfig
from rlhf.models.loading import load_causal_lm, model_config
from rlhf.models.lora import apply_lora
from rlhf.stages.base import Batch, Stage, pad_rows


class SFTStage(Stage):
    name = "sft"
    lora_task = "CAUSAL_LM"
    cfg: SFTConfig

    def build_model(self, dtype: torch.dtype):
        model = load_causal_lm(self.cfg.model, self.tokenizer, dtype)
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    def build_skeleton(self):
        model = AutoModelForCausalLM.from_config(model_config(self.cfg.model, self.tokenizer))
        if len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(int(8 * math.ceil(len(self.tokenizer) / 8.0)))
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        ids = [r["input_ids"] for r in rows]
        input_ids, mask = pad_rows(ids, self.tokenizer.pad_token_id, self.padded_length(max(map(len, ids))))
        prompt_lens = torch.tensor([r["prompt_len"] for r in rows], dtype=torch.long)
        labels = losses.sft_labels(input_ids, mask, prompt_lens, self.cfg.loss_on_prompt)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

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
