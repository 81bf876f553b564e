"""Stage 2: reward model on chosen/rejected pairs, evaluated by pairwise accuracy and scores."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from rlhf import losses
from rlhf.config.stages import RewardConfig
from rlhf.models.loading import fit_embeddings, model_config
from rlhf.models.lora import apply_lora
from rlhf.models.reward import RewardModel, load_reward_model
from rlhf.stages.base import Batch, Stage, pad_rows


class RewardStage(Stage):
    name = "reward"
    lora_task = "SEQ_CLS"
    length_columns = ("chosen_ids", "rejected_ids")
    cfg: RewardConfig

    def _wrap(self, hf) -> RewardModel:
        if self.cfg.lora.enabled:
            hf = apply_lora(hf, self.cfg.lora, "SEQ_CLS")
        return RewardModel(hf)

    def build_model(self, dtype: torch.dtype) -> RewardModel:
        model = load_reward_model(self.cfg.model, self.tokenizer, dtype)
        return self._wrap(model.model)

    def build_skeleton(self) -> RewardModel:
        config = model_config(self.cfg.model, self.tokenizer, num_labels=1)
        hf = AutoModelForSequenceClassification.from_config(config)
        fit_embeddings(hf, self.tokenizer)
        return self._wrap(hf)

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from rlhf.models.export import merge_lora

        assert isinstance(model, RewardModel)  # build_skeleton's structure
        return merge_lora(model.model)

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        ids, mask = pad_rows(seqs, self.tokenizer.pad_token_id, self.padded_length(max(map(len, seqs))))
        return {"input_ids": ids, "attention_mask": mask}

    def _forward(self, engine, batch: Batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        values = engine(ids, mask)
        half = ids.size(0) // 2
        return losses.pairwise_reward_loss(
            values[:half],
            values[half:],
            ids[:half],
            ids[half:],
            mask[:half],
            mask[half:],
            self.cfg.pairwise_loss,
        )

    def train_loss(self, engine, batch: Batch):
        loss, chosen, rejected = self._forward(engine, batch)
        acc = (chosen > rejected).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": acc.detach()}

    def eval_sums(self, engine, batch: Batch):
        loss, chosen, rejected = self._forward(engine, batch)
        n = torch.tensor(float(chosen.numel()))
        return {
            "loss_sum": loss.float() * n,
            "correct": (chosen > rejected).float().sum(),
            "chosen_sum": chosen.float().sum(),
            "rejected_sum": rejected.float().sum(),
            "pairs": n,
        }

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["pairs"], 1.0)
        return {
            "loss": sums["loss_sum"] / n,
            "accuracy": sums["correct"] / n,
            "chosen_score": sums["chosen_sum"] / n,
            "rejected_score": sums["rejected_sum"] / n,
        }

    def samples(self, batch: Batch) -> int:
        return int(batch["input_ids"].size(0)) // 2  # chosen and rejected rows of each pair

    def real_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def train(cfg: RewardConfig) -> dict[str, Any]:
    """``rlhf train reward``: train the stage to completion; its summary."""
    from rlhf.stages.loop import Trainer

    return Trainer(cfg, RewardStage).run()
