"""Stage 3: PPO. Each iteration, in numbered steps:

1. sample ``generation_batches`` batches of prompts;
2. the actor answers them (sampling, KV cache; ``synced_gpus`` under ZeRO-3);
3. the frozen reward model scores the answers;
4. per-token rewards = clipped score on the last answer token + KL penalty to the reference;
   advantages and returns by GAE over the critic's values (taken from the critic's training
   forward when that would see the same weights and tokens: one epoch, one mini-batch);
5. ``ppo_epochs`` passes over the experience in mini-batches: clipped policy loss (+ ptx loss) for
   the actor, clipped value loss for the critic;
6. metrics, EMA, checkpoint.

Before the first iteration and at the end, :mod:`rlhf.stages.ppo_eval` answers held-out prompts
greedily; the summary compares the final actor with the starting (SFT) one.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rlhf.config import PPOConfig, dump
from rlhf.config.stages import deprecated_settings
from rlhf.engine.setup import barrier, init_runtime, torch_dtype
from rlhf.models.export import gather_state_dict, materialize, merge_lora, save_hf
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.data import prepare_stage_data
from rlhf.stages.data_report import data_warnings
from rlhf.stages.lifecycle import completed_summary, publish_summary, resume_point, seed_everything
from rlhf.stages.ppo_eval import comparison, eval_prompts, evaluate
from rlhf.stages.ppo_models import (
    PPOModels,
    actor_skeleton,
    build_models,
    check_positions,
    load_tokenizers,
)
from rlhf.stages.ppo_train import collect, train_minibatch
from rlhf.stages.rollout import (
    Experience,
    critic_values_in_training,
    make_experience,
    static_length,
    whiten_advantages,
)
from rlhf.stages.sampling import LengthGroupedSampler, SkipSampler, column_lengths
from rlhf.stages.sft import sft_batch
from rlhf.stages.tracking import Tracker


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class PPOTrainer:
    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.out = Path(cfg.checkpoint.output_dir)
        self.rt = init_runtime(cfg.deepspeed)
        seed_everything(cfg.seed)
        self.tokenizers = load_tokenizers(cfg)  # (actor's, reward model's, whether they are the same); checks paths
        self.tokenizer = self.tokenizers[0]
        check_positions(cfg)
        data = prepare_stage_data(cfg, self.tokenizer, rank=self.rt.dist.rank, barrier=barrier)
        self.prompts, self.ptx = data["prompts"], data.get("ptx")
        if self.prompts.train is None or len(self.prompts.train) == 0:
            raise ValueError(f"stage ppo: no prompts after splitting data (stats: {self.prompts.stats})")
        self.eval_prompts = eval_prompts(cfg, self.tokenizer, self.prompts.eval)
        self.ckpt_actor = self.out / "checkpoints" / "actor"
        self.ckpt_critic = self.out / "checkpoints" / "critic"
        # Resume from the newest iteration both engines completed, with the same data and settings.
        self.settings = run_settings.settings_of(cfg, {name: d.stats for name, d in data.items()})
        self.resume_tag, changed = resume_point(cfg, [self.ckpt_actor, self.ckpt_critic], self.settings)
        self.warnings = [*deprecated_settings(cfg),
                         *data_warnings("prompts", self.prompts.stats, eval_expected=not cfg.evaluation.prompts),
                         *(data_warnings("ptx", self.ptx.stats, eval_expected=False) if self.ptx else []),
                         *(f"resuming despite a change (checkpoint.allow_changed_config): {c}" for c in changed)]
        if not self.eval_prompts:
            self.warnings.append("evaluation: no held-out prompts (evaluation.prompts is unset and the PPO eval split "
                                 "is empty), so there are no baseline/* and eval/* metrics")
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(cfg))
        self.values_in_training = critic_values_in_training(cfg)
        self._lengths: dict[str, list[int]] = {}  # per column, when data.group_by_length

    # ---- data ---------------------------------------------------------------------------------
    def _sampler(self, dataset) -> DistributedSampler:
        return DistributedSampler(dataset, num_replicas=self.rt.dist.world_size, rank=self.rt.dist.rank,
                                  shuffle=True, seed=self.cfg.seed, drop_last=True)

    def _grouped(self, sampler: DistributedSampler, dataset, column: str, batch_size: int):
        """``sampler`` grouped by the length of ``column`` when data.group_by_length."""
        if not self.cfg.data.group_by_length:
            return sampler
        if column not in self._lengths:
            self._lengths[column] = column_lengths(dataset, (column,))
        return LengthGroupedSampler(sampler, self._lengths[column], batch_size, self.cfg.seed)

    def _prompt_loader(self, epoch: int, skip_batches: int) -> DataLoader:
        bs = self.cfg.generation.per_device_generation_batch_size
        sampler = self._sampler(self.prompts.train)
        sampler.set_epoch(epoch)
        sampler = self._grouped(sampler, self.prompts.train, "prompt_ids", bs)
        return DataLoader(self.prompts.train, batch_size=bs, sampler=SkipSampler(sampler, skip_batches * bs),
                          collate_fn=lambda rows: [list(r["prompt_ids"]) for r in rows], drop_last=True,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _ptx_batches(self, consumed: int):
        """Endless SFT-style batches for the ptx loss, starting after ``consumed`` of them."""
        bs = self.cfg.optim.per_device_train_batch_size
        sampler = self._sampler(self.ptx.train)
        per_epoch = len(sampler) // bs
        if per_epoch == 0:
            raise ValueError("ptx: fewer SFT samples per rank than optim.per_device_train_batch_size")
        pad = self.tokenizer.pad_token_id
        static = static_length(self.cfg, self.rt)  # Gaudi: one shape for every batch

        def collate(rows):
            return sft_batch(rows, pad, static or max(len(r["input_ids"]) for r in rows))

        for epoch in itertools.count(consumed // per_epoch):
            sampler.set_epoch(epoch)
            grouped = self._grouped(sampler, self.ptx.train, "input_ids", bs)
            skip = consumed % per_epoch if epoch == consumed // per_epoch else 0
            loader = DataLoader(self.ptx.train, batch_size=bs, sampler=SkipSampler(grouped, skip * bs), drop_last=True,
                                collate_fn=collate)
            yield from loader

    def _plan(self) -> tuple[int, int, int]:
        """(iterations per epoch, total iterations, optimizer steps per iteration)."""
        cfg = self.cfg
        batches = len(self._sampler(self.prompts.train)) // cfg.generation.per_device_generation_batch_size
        per_epoch = batches // cfg.generation.generation_batches
        if per_epoch < 1:
            raise ValueError(
                f"stage ppo: {batches} prompt batches per rank are fewer than generation.generation_batches "
                f"({cfg.generation.generation_batches}); lower the generation batch size or add prompts"
            )
        total = per_epoch * cfg.optim.epochs
        if cfg.ppo.max_iterations:
            total = min(total, cfg.ppo.max_iterations)
        rollout = cfg.generation.per_device_generation_batch_size * cfg.generation.generation_batches
        micro = rollout // cfg.optim.per_device_train_batch_size * cfg.ppo.ppo_epochs
        return per_epoch, total, math.ceil(micro / cfg.optim.gradient_accumulation_steps)

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, models: PPOModels, state: dict[str, Any]) -> None:
        """Actor, its EMA, then critic; an iteration counts as saved once both engines completed it, and
        older checkpoints are pruned only then (a kill between the two saves leaves the previous
        iteration complete in both)."""
        rank, step = self.rt.dist.rank, state["iteration"]
        files = {run_settings.FILE: self.settings}
        checkpoint.save(models.actor, self.ckpt_actor, step, state, rank, None, files)
        if models.ema is not None and self.rt.is_main:
            ema_file = self.ckpt_actor / f"step-{step}" / "ema.pt"
            torch.save(models.ema.state_dict(), ema_file.with_suffix(".tmp"))
            ema_file.with_suffix(".tmp").replace(ema_file)
        checkpoint.save(models.critic, self.ckpt_critic, step, state, rank, None, files)
        if self.rt.is_main:
            checkpoint.prune([self.ckpt_actor, self.ckpt_critic], self.cfg.checkpoint.keep_last)
        barrier()

    def _resume(self, models: PPOModels) -> dict[str, Any] | None:
        """Load the newest iteration both the actor and the critic completed (chosen at start)."""
        tag = self.resume_tag
        if tag is None:
            return None
        state = checkpoint.load(models.actor, self.ckpt_actor, self.rt.dist.rank, tag)
        checkpoint.load(models.critic, self.ckpt_critic, self.rt.dist.rank, tag)
        ema_file = self.ckpt_actor / tag / "ema.pt"
        if models.ema is not None and ema_file.is_file():
            models.ema.load_state_dict(torch.load(ema_file, map_location="cpu"))
        return state

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, rt = self.cfg, self.rt
        per_epoch, total_iters, steps_per_iter = self._plan()
        models = build_models(cfg, rt, total_iters * steps_per_iter, self.tokenizers)
        state: dict[str, Any] = {"iteration": 0, "epoch": 0, "batch_in_epoch": 0, "ptx_batches": 0,
                                 "train_seconds": 0.0, "samples": 0, "baseline": {}}
        loaded = self._resume(models)
        if loaded:
            state.update({k: loaded[k] for k in state if k in loaded})
        resumed_from = state["iteration"]
        tracker = Tracker(
            self.out, enabled=rt.is_main,
            tensorboard_dir=Path(cfg.logging.tensorboard_dir or self.out / "tensorboard") if cfg.logging.tensorboard else None,
            progress=cfg.logging.progress_bar, total_steps=total_iters, start_step=resumed_from, desc="ppo",
        )
        if resumed_from:
            tracker.write(f"[ppo] resumed from iteration {resumed_from} ({self.ckpt_actor.parent})")
        for line in self.warnings:
            tracker.write(f"[ppo] warning: {line}")
        if cfg.evaluation.baseline and not state["baseline"] and self.eval_prompts:
            state["baseline"], rows = evaluate(models, cfg, rt, self.eval_prompts)
            self._write_rows("baseline_answers.jsonl", rows)
            tracker.log(0, "baseline", state["baseline"])

        ptx = self._ptx_batches(state["ptx_batches"]) if cfg.ptx.coef > 0 else None
        gen_batches = cfg.generation.generation_batches
        while state["iteration"] < total_iters:
            loader = iter(self._prompt_loader(state["epoch"], state["batch_in_epoch"]))
            while state["batch_in_epoch"] // gen_batches < per_epoch and state["iteration"] < total_iters:
                t0 = time.perf_counter()
                # 1. sample prompts
                prompt_batches = [next(loader) for _ in range(gen_batches)]
                # 2.-4. answer, score, rewards and advantages
                parts, gen_stats = [], []
                for prompts in prompt_batches:
                    exp, _, stats = make_experience(models, cfg, rt, prompts, values=not self.values_in_training)
                    parts.append(exp)
                    gen_stats.append(stats)
                experience = Experience.cat(parts, self.tokenizer.pad_token_id)
                t1 = time.perf_counter()
                # 5. PPO epochs over the experience
                train_stats = self._train(models, experience, state, ptx)
                t2 = time.perf_counter()
                # 6. bookkeeping: metrics, checkpoint
                state["iteration"] += 1
                state["batch_in_epoch"] += gen_batches
                state["samples"] += len(experience)
                state["train_seconds"] += t2 - t0
                row = self._metrics(experience, gen_stats, train_stats, t0, t1, t2, models)
                tracker.advance()
                it = state["iteration"]
                if it % cfg.logging.log_interval == 0 or it == total_iters:
                    tracker.log(it, "train", row)
                if cfg.checkpoint.save_interval and it % cfg.checkpoint.save_interval == 0 and it < total_iters:
                    self._save(models, state)
            if state["batch_in_epoch"] // gen_batches >= per_epoch:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
        self._save(models, state)

        final, rows = evaluate(models, cfg, rt, self.eval_prompts) if self.eval_prompts else ({}, [])
        self._write_rows("eval_answers.jsonl", rows)
        tracker.log(state["iteration"], "eval", final)
        tracker.close()
        return self._finish(models, state, total_iters, resumed_from, final)

    def _train(self, models: PPOModels, exp: Experience, state: dict[str, Any], ptx) -> dict[str, list[float]]:
        cfg, device = self.cfg, self.rt.device
        bs = cfg.optim.per_device_train_batch_size
        stats: dict[str, list[float]] = {}
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["iteration"])
        exp = whiten_advantages(exp, cfg, device)  # 4c. once over the whole rollout, all ranks together
        for _ in range(cfg.ppo.ppo_epochs):
            order = torch.randperm(len(exp), generator=g)
            for start in range(0, len(exp), bs):
                ptx_batch = None
                if ptx is not None:
                    ptx_batch = next(ptx)
                    state["ptx_batches"] += 1
                collect(stats, train_minibatch(models, exp.select(order[start : start + bs]), cfg, device, ptx_batch))
                self.rt.accel.mark_step()
        return stats

    def _metrics(self, exp: Experience, gen_stats, train_stats, t0, t1, t2, models: PPOModels) -> dict[str, float]:
        world = self.rt.dist.world_size
        answer_lens = exp.action_mask.sum(dim=1)
        generated = sum(s["generated_tokens"] for s in gen_stats)
        gen_seconds = sum(s["generate_seconds"] for s in gen_stats)
        row = {
            "reward_mean": float(exp.scores.mean()), "reward_std": float(exp.scores.std(unbiased=False)),
            "kl": float(exp.kl.sum(dim=1).mean()), "answer_tokens": float(answer_lens.float().mean()),
            "generate_seconds": gen_seconds, "experience_seconds": sum(s["experience_seconds"] for s in gen_stats),
            "train_seconds": t2 - t1, "iteration_seconds": t2 - t0,
            "generate_tokens_per_second": generated * world / max(gen_seconds, 1e-9),
            "samples_per_second": len(exp) * world / max(t2 - t0, 1e-9),
            "actor_lr": models.actor.get_lr()[0], "critic_lr": models.critic.get_lr()[0],
        }
        row.update({k: _mean(v) for k, v in train_stats.items()})
        return row

    def _write_rows(self, name: str, rows: list[dict]) -> None:
        if self.rt.is_main and rows:
            (self.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def _finish(self, models: PPOModels, state, total_iters, resumed_from, final) -> dict[str, Any]:
        rt, cfg = self.rt, self.cfg
        model_dir = self.out / "model"
        full = gather_state_dict(models.actor.module, rt.is_main)
        dtype = torch_dtype(cfg.deepspeed)
        if rt.is_main:
            actor = merge_lora(materialize(lambda: actor_skeleton(cfg, self.tokenizer), full))
            save_hf(actor, self.tokenizer, model_dir, dtype)
            if models.ema is not None:
                save_hf(models.ema, self.tokenizer, self.out / "ema_model", dtype)
        barrier()
        metrics = {f"eval/{k}": v for k, v in final.items()}
        metrics.update({f"baseline/{k}": v for k, v in state["baseline"].items()})
        metrics.update({f"check/{k}": v for k, v in comparison(state["baseline"], final).items()})
        seconds = state["train_seconds"]
        rate = round(state["samples"] * rt.dist.world_size / seconds, 3) if seconds else None
        summary = completed_summary(
            "ppo", rt, step=state["iteration"], total_steps=total_iters, resumed_from=resumed_from, metrics=metrics,
            samples=state["samples"], seconds=seconds, rates={"samples_per_second": rate}, model_dir=model_dir,
            data_stats=self.prompts.stats, warnings=self.warnings,
        )
        publish_summary(self.out, summary, rt)
        return summary


def train(cfg: PPOConfig) -> dict[str, Any]:
    """``rlhf train ppo``: train the stage to completion; its summary."""
    return PPOTrainer(cfg).run()
