"""DPO (``rlhf train dpo``): the policy learns the preferences of chosen/rejected pairs directly,
against a frozen reference, with no reward model (Rafailov et al. 2023; DeepSpeed-Chat's DPO step).

It runs on the shared loop (:mod:`rlhf.stages.loop`: LoRA, ZeRO 0-3, checkpoints and exact
resume, evaluation, metrics, ``summary.json``), in these steps:

1. before the first step (:meth:`DPOStage.start`): the reference's log-probs of every pair, scored
   once and cached, or a live reference (:mod:`rlhf.stages.dpo_reference`); then the baseline: the
   starting policy (the SFT model) answers the held-out prompts greedily (:mod:`rlhf.stages.dpo_eval`);
2. each micro-batch: the chosen and the rejected rows in one forward pass; each answer's log-prob
   over its answer tokens only (after the prompt, until its attention mask ends); sigmoid DPO with
   ``dpo.beta`` and ``dpo.label_smoothing`` (:func:`rlhf.losses.dpo_loss`);
3. evaluation over the eval pairs: loss, reward accuracy (chosen's implicit reward above the
   rejected's), reward margin, the implicit rewards and the log-probs of chosen and rejected answers;
4. at the end (:meth:`DPOStage.finish`): the trained policy answers the same prompts; the summary
   holds both evaluations (``baseline/*``, ``eval/*``) and their comparison (``check/*``), as PPO's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from rlhf import losses
from rlhf.config import ConfigError, DPOConfig
from rlhf.data.cache import tokenizer_fingerprint
from rlhf.models.checks import check_positions
from rlhf.models.loading import causal_lm_skeleton, load_causal_lm, load_tokenizer
from rlhf.models.lora import apply_lora
from rlhf.stages import dpo_eval, dpo_reference
from rlhf.stages.base import Batch, Stage, pad_rows
from rlhf.stages.lifecycle import write_json_atomic
from rlhf.stages.ppo_eval import comparison

BASELINE = "baseline.json"


class DPOStage(Stage):
    name = "dpo"
    lora_task = "CAUSAL_LM"
    length_columns = ("chosen_ids", "rejected_ids")
    cfg: DPOConfig

    def __init__(self, cfg: DPOConfig, runtime, tokenizer):
        super().__init__(cfg, runtime, tokenizer)
        self._check(cfg, tokenizer)
        self.reference: dpo_reference.Frozen | None = None  # the live reference
        # evaluation.prompts are read now (a bad file stops the stage before any training); the
        # default prompts, those of the eval pairs, once the pairs are loaded (start)
        self.prompts: list[list[int]] = (
            dpo_eval.eval_prompts(cfg, tokenizer, None) if cfg.evaluation.prompts else []
        )
        self.baseline: dict[str, float] = {}

    @staticmethod
    def _check(cfg: DPOConfig, tokenizer) -> None:
        """Refuse at start a reference that reads other tokens or positions the pairs exceed, and
        evaluation answers longer than the policy's positions."""
        gen = cfg.generation
        check_positions(
            cfg.model,
            "model",
            gen.max_prompt_len + gen.max_answer_len,
            "generation.max_prompt_len + max_answer_len",
        )
        if cfg.reference is None:
            return
        ref_tok = load_tokenizer(cfg.reference, cfg.data, "reference")  # checks the path first
        if tokenizer_fingerprint(ref_tok) != tokenizer_fingerprint(tokenizer):
            where = "reference.tokenizer" if cfg.reference.tokenizer else "reference.name_or_path"
            raise ConfigError(
                f"{where}: the reference's tokenizer "
                f"({cfg.reference.tokenizer or cfg.reference.name_or_path}) "
                f"differs from the model's ({cfg.model.tokenizer or cfg.model.name_or_path}); "
                "DPO compares both "
                "models' log-probs of the same tokens, so they need the same tokenizer"
            )
        check_positions(cfg.reference, "reference", cfg.data.max_seq_len, "data.max_seq_len")

    # ---- the model ----------------------------------------------------------------------------
    def build_model(self, dtype: torch.dtype):
        # dropout off unless model.dropout says otherwise: the log-prob ratios must not be noisy
        model_cfg = (
            self.cfg.model
            if self.cfg.model.dropout is not None
            else self.cfg.model.model_copy(update={"dropout": 0.0})
        )
        model = load_causal_lm(model_cfg, self.tokenizer, dtype)
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    def build_skeleton(self):
        model = causal_lm_skeleton(self.cfg.model, self.tokenizer)
        return apply_lora(model, self.cfg.lora, "CAUSAL_LM") if self.cfg.lora.enabled else model

    # ---- batches ------------------------------------------------------------------------------
    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """B pairs as 2B rows (chosen, then rejected) right-padded together, with the mask of their
        answer tokens and, when cached, the reference's log-probs ``[2B]``."""
        seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        ids, mask = pad_rows(seqs, self.tokenizer.pad_token_id, self.padded_length(max(map(len, seqs))))
        prompt_lens = torch.tensor([r["prompt_len"] for r in rows] * 2, dtype=torch.long)
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "answer_mask": losses.answer_mask(ids, mask, prompt_lens),
        }
        chosen, rejected = dpo_reference.COLUMNS
        if chosen in rows[0]:
            batch["ref_logps"] = torch.tensor(
                [r[chosen] for r in rows] + [r[rejected] for r in rows], dtype=torch.float32
            )
        return batch

    def _pairs(self, engine, batch: Batch):
        """(loss per pair, chosen rewards, rejected rewards, policy log-probs [2B]) of a batch."""
        logps = dpo_reference.pair_logps(engine, batch)
        ref = batch.get("ref_logps")
        if ref is None:
            assert self.reference is not None, "no reference log-probs: DPOStage.start was not called"
            ref = dpo_reference.pair_logps(self.reference, batch)
        half = logps.size(0) // 2
        algo = self.cfg.dpo
        loss, chosen, rejected = losses.dpo_loss(
            logps[:half], logps[half:], ref[:half], ref[half:], algo.beta, algo.label_smoothing
        )
        return loss, chosen, rejected, logps.detach()

    def train_loss(self, engine, batch: Batch):
        loss, chosen, rejected, logps = self._pairs(engine, batch)
        half = logps.size(0) // 2
        return loss.mean(), {
            "loss": loss.detach().mean(),
            "reward_accuracy": (chosen > rejected).float().mean(),
            "reward_margin": (chosen - rejected).mean(),
            "chosen_reward": chosen.mean(),
            "rejected_reward": rejected.mean(),
            "chosen_logp": logps[:half].mean(),
            "rejected_logp": logps[half:].mean(),
        }

    def eval_sums(self, engine, batch: Batch):
        loss, chosen, rejected, logps = self._pairs(engine, batch)
        half = logps.size(0) // 2
        return {
            "loss_sum": loss.sum(),
            "correct": (chosen > rejected).float().sum(),
            "margin_sum": (chosen - rejected).sum(),
            "chosen_reward_sum": chosen.sum(),
            "rejected_reward_sum": rejected.sum(),
            "chosen_logp_sum": logps[:half].sum(),
            "rejected_logp_sum": logps[half:].sum(),
            "pairs": torch.tensor(float(half)),
        }

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["pairs"], 1.0)
        return {
            "loss": sums["loss_sum"] / n,
            "reward_accuracy": sums["correct"] / n,
            "reward_margin": sums["margin_sum"] / n,
            "chosen_reward": sums["chosen_reward_sum"] / n,
            "rejected_reward": sums["rejected_reward_sum"] / n,
            "chosen_logp": sums["chosen_logp_sum"] / n,
            "rejected_logp": sums["rejected_logp_sum"] / n,
        }

    def samples(self, batch: Batch) -> int:
        return int(batch["input_ids"].size(0)) // 2  # pairs

    def real_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    # ---- once per run -------------------------------------------------------------------------
    def start(self, trainer, engine, tracker, resumed_from: int) -> None:
        """Step 1: the reference (cached log-probs as two more columns of the pairs, or a live model)
        and the baseline evaluation (on a resume: read back from ``baseline.json``)."""
        cfg, rt = self.cfg, self.runtime
        out = Path(cfg.checkpoint.output_dir)
        if cfg.dpo.reference_logps == "cached":
            t0 = time.perf_counter()
            logps = dpo_reference.cached_logps(
                cfg,
                rt,
                engine,
                self.tokenizer,
                trainer.data,
                self.collate,
                resumed=resumed_from > 0,
                log=lambda m: tracker.write(f"[dpo] {m} ({time.perf_counter() - t0:.1f} s)"),
            )
            trainer.data.train = dpo_reference.with_logps(trainer.data.train, logps["train"])
            trainer.data.eval = dpo_reference.with_logps(trainer.data.eval, logps["eval"])
        else:
            self.reference = dpo_reference.live_reference(cfg, rt, engine, self.tokenizer)
        if not cfg.evaluation.prompts:
            self.prompts = dpo_eval.eval_prompts(cfg, self.tokenizer, trainer.data.eval)
        if not self.prompts:
            line = (
                "evaluation: no held-out prompts (evaluation.prompts is unset and there are no eval pairs), "
                "so "
                "there are no baseline/* and answer eval/* metrics"
            )
            trainer.warnings.append(line)
            tracker.write(f"[dpo] warning: {line}")
            return
        if not cfg.evaluation.baseline:
            return
        if resumed_from and (out / BASELINE).is_file():
            self.baseline = json.loads((out / BASELINE).read_text())
            return
        self.baseline, rows = dpo_eval.evaluate(engine, cfg, rt, self.tokenizer, self.prompts)
        if rt.is_main:
            write_json_atomic(out / BASELINE, self.baseline)
            _write_rows(out / "baseline_answers.jsonl", rows)
        tracker.log(0, "baseline", self.baseline)

    def finish(self, trainer, engine, tracker, step: int) -> dict[str, float]:
        """Step 4: the trained policy's answers to the same prompts, against the baseline's."""
        if self.reference is not None and not self.reference.adapters_off:
            self.reference.engine.destroy()  # the live frozen copy
        self.reference = None
        if not self.prompts:
            return {}
        final, rows = dpo_eval.evaluate(engine, self.cfg, self.runtime, self.tokenizer, self.prompts)
        if self.runtime.is_main:
            _write_rows(Path(self.cfg.checkpoint.output_dir) / "eval_answers.jsonl", rows)
        tracker.log(step, "answers", final)
        metrics = {f"eval/{k}": v for k, v in final.items()}
        metrics.update({f"baseline/{k}": v for k, v in self.baseline.items()})
        metrics.update({f"check/{k}": v for k, v in comparison(self.baseline, final).items()})
        return metrics


def _write_rows(path: Path, rows: list[dict]) -> None:
    if rows:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: DPOConfig) -> dict[str, Any]:
    """``rlhf train dpo``: train the stage to completion; its summary."""
    from rlhf.stages.loop import Trainer

    return Trainer(cfg, DPOStage).run()
