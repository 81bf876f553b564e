"""GRPO and RLOO (``rlhf train grpo``). Each iteration, in numbered steps:

1. sample ``generation_batches`` batches of prompts (PPO's share of the data, with their dataset rows);
2. the actor answers each prompt ``grpo.group_size`` times (sampling, KV cache, batched; ``synced_gpus``
   under ZeRO-3); the old log-probs are generation's own;
3. rewards: the weighted sum of the reward functions (:mod:`rlhf.rewards`) and the frozen reward
   model's clipped score; with a KL term, the reference's log-probs;
4. group-relative advantages (:func:`rlhf.losses.group_advantages`): GRPO's group mean/std
   normalisation or RLOO's leave-one-out baseline, one per answer, on every one of its tokens;
5. ``grpo.rollout_epochs`` passes over the rollout in mini-batches: the clipped policy loss plus
   ``grpo.kl_coef`` times the KL estimate to the reference (no critic);
6. metrics, checkpoint.

Before the first iteration and at the end, held-out prompts are answered greedily and rewarded
(:mod:`rlhf.stages.grpo_eval`); the summary compares the final actor with the SFT model as PPO's does.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rlhf.config import GRPOConfig, dump
from rlhf.config.stages import deprecated_settings
from rlhf.engine.setup import barrier, init_runtime, torch_dtype
from rlhf.models.export import gather_state_dict, materialize, merge_lora, save_hf
from rlhf.rewards import load_functions
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.data import prepare_stage_data
from rlhf.stages.data_report import data_warnings
from rlhf.stages.grpo_eval import eval_set, evaluate
from rlhf.stages.grpo_models import GRPOModels, actor_skeleton, build_models, check_positions, load_tokenizers
from rlhf.stages.grpo_rollout import Rollout, make_rollout, with_advantages
from rlhf.stages.grpo_train import train_minibatch
from rlhf.stages.lifecycle import completed_summary, publish_summary, resume_point, seed_everything
from rlhf.stages.ppo_eval import comparison
from rlhf.stages.ppo_train import collect
from rlhf.stages.sampling import LengthGroupedSampler, SkipSampler, column_lengths
from rlhf.stages.tracking import Tracker


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _collate(rows: list[dict[str, Any]]) -> tuple[list[list[int]], list[dict[str, Any]]]:
    return [list(r["prompt_ids"]) for r in rows], [json.loads(r["row"]) for r in rows]


class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.out = Path(cfg.checkpoint.output_dir)
        self.functions = load_functions(cfg.rewards)  # user code first: a bad import path fails in seconds
        self.rt = init_runtime(cfg.deepspeed)
        seed_everything(cfg.seed)
        self.tokenizers = load_tokenizers(cfg)  # (actor's, reward model's, whether they are the same); checks paths
        self.tokenizer = self.tokenizers[0]
        check_positions(cfg)
        data = prepare_stage_data(cfg, self.tokenizer, rank=self.rt.dist.rank, barrier=barrier)
        self.prompts = data["prompts"]
        if self.prompts.train is None or len(self.prompts.train) == 0:
            raise ValueError(f"stage grpo: no prompts after splitting data (stats: {self.prompts.stats})")
        self.eval_prompts, self.eval_rows = eval_set(cfg, self.tokenizer, self.prompts.eval)
        self.ckpt = self.out / "checkpoints" / "actor"
        self.settings = run_settings.settings_of(cfg, {name: d.stats for name, d in data.items()})
        self.resume_tag, changed = resume_point(cfg, [self.ckpt], self.settings)
        self.warnings = [*deprecated_settings(cfg),
                         *data_warnings("prompts", self.prompts.stats, eval_expected=not cfg.evaluation.prompts),
                         *(f"resuming despite a change (checkpoint.allow_changed_config): {c}" for c in changed)]
        if not self.eval_prompts:
            self.warnings.append("evaluation: no held-out prompts (evaluation.prompts is unset and the prompts' eval "
                                 "split is empty), so there are no baseline/* and eval/* metrics")
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(cfg))
        self._lengths: list[int] | None = None  # prompt lengths, when data.group_by_length

    # ---- data ---------------------------------------------------------------------------------
    def _sampler(self) -> DistributedSampler:
        return DistributedSampler(self.prompts.train, num_replicas=self.rt.dist.world_size, rank=self.rt.dist.rank,
                                  shuffle=True, seed=self.cfg.seed, drop_last=True)

    def _prompt_loader(self, epoch: int, skip_batches: int) -> DataLoader:
        bs = self.cfg.generation.per_device_generation_batch_size
        sampler: Any = self._sampler()
        sampler.set_epoch(epoch)
        if self.cfg.data.group_by_length:
            if self._lengths is None:
                self._lengths = column_lengths(self.prompts.train, ("prompt_ids",))
            sampler = LengthGroupedSampler(sampler, self._lengths, bs, self.cfg.seed)
        return DataLoader(self.prompts.train, batch_size=bs, sampler=SkipSampler(sampler, skip_batches * bs),
                          collate_fn=_collate, drop_last=True,
                          generator=torch.Generator().manual_seed(self.cfg.seed))  # not the global RNG: exact resume

    def plan(self) -> tuple[int, int, int]:
        """(iterations per epoch, total iterations, optimizer steps per iteration)."""
        cfg = self.cfg
        gen = cfg.generation
        batches = len(self._sampler()) // gen.per_device_generation_batch_size
        per_epoch = batches // gen.generation_batches
        if per_epoch < 1:
            raise ValueError(
                f"stage grpo: {batches} prompt batches per rank are fewer than generation.generation_batches "
                f"({gen.generation_batches}); lower the generation batch size or add prompts"
            )
        total = per_epoch * cfg.optim.epochs
        if cfg.grpo.max_iterations:
            total = min(total, cfg.grpo.max_iterations)
        answers = gen.per_device_generation_batch_size * gen.generation_batches * cfg.grpo.group_size
        micro = answers // cfg.optim.per_device_train_batch_size * cfg.grpo.rollout_epochs
        return per_epoch, total, math.ceil(micro / cfg.optim.gradient_accumulation_steps)

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, models: GRPOModels, state: dict[str, Any]) -> None:
        checkpoint.save(models.actor, self.ckpt, state["iteration"], state, self.rt.dist.rank,
                        self.cfg.checkpoint.keep_last, {run_settings.FILE: self.settings})

    def _resume(self, models: GRPOModels) -> dict[str, Any] | None:
        if self.resume_tag is None:
            return None
        return checkpoint.load(models.actor, self.ckpt, self.rt.dist.rank, self.resume_tag)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, rt = self.cfg, self.rt
        per_epoch, total_iters, steps_per_iter = self.plan()
        models = build_models(cfg, rt, total_iters * steps_per_iter, self.tokenizers)
        state: dict[str, Any] = {"iteration": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0,
                                 "samples": 0, "baseline": {}}
        loaded = self._resume(models)
        if loaded:
            state.update({k: loaded[k] for k in state if k in loaded})
        resumed_from = state["iteration"]
        tracker = Tracker(
            self.out, enabled=rt.is_main,
            tensorboard_dir=Path(cfg.logging.tensorboard_dir or self.out / "tensorboard") if cfg.logging.tensorboard else None,
            progress=cfg.logging.progress_bar, total_steps=total_iters, start_step=resumed_from, desc="grpo",
        )
        if resumed_from:
            tracker.write(f"[grpo] resumed from iteration {resumed_from} ({self.ckpt.parent})")
        for line in self.warnings:
            tracker.write(f"[grpo] warning: {line}")
        if cfg.evaluation.baseline and not state["baseline"] and self.eval_prompts:
            state["baseline"], rows = evaluate(models, cfg, rt, self.functions, self.eval_prompts, self.eval_rows)
            self._write_rows("baseline_answers.jsonl", rows)
            tracker.log(0, "baseline", state["baseline"])

        gen_batches = cfg.generation.generation_batches
        while state["iteration"] < total_iters:
            loader = iter(self._prompt_loader(state["epoch"], state["batch_in_epoch"]))
            while state["batch_in_epoch"] // gen_batches < per_epoch and state["iteration"] < total_iters:
                t0 = time.perf_counter()
                # 1. sample prompts (with their dataset rows)
                batches = [next(loader) for _ in range(gen_batches)]
                # 2.-3. answer each group_size times, reward; the reference's log-probs
                parts, sources, gen_stats = [], [], []
                for prompts, rows in batches:
                    rollout, by_source, stats = make_rollout(models, cfg, rt, self.functions, prompts, rows)
                    parts.append(rollout)
                    sources.append(by_source)
                    gen_stats.append(stats)
                # 4. group-relative advantages
                rollout = with_advantages(Rollout.cat(parts, self.tokenizer.pad_token_id), cfg, rt.device)
                t1 = time.perf_counter()
                # 5. policy updates over the rollout
                train_stats = self._train(models, rollout, state)
                t2 = time.perf_counter()
                # 6. bookkeeping: metrics, checkpoint
                state["iteration"] += 1
                state["batch_in_epoch"] += gen_batches
                state["samples"] += len(rollout)
                state["train_seconds"] += t2 - t0
                row = self._metrics(rollout, sources, gen_stats, train_stats, t0, t1, t2, models)
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

        final, rows = ({}, []) if not self.eval_prompts else evaluate(
            models, cfg, rt, self.functions, self.eval_prompts, self.eval_rows)
        self._write_rows("eval_answers.jsonl", rows)
        tracker.log(state["iteration"], "eval", final)
        tracker.close()
        return self._finish(models, state, total_iters, resumed_from, final)

    def _train(self, models: GRPOModels, rollout: Rollout, state: dict[str, Any]) -> dict[str, list[float]]:
        cfg, device = self.cfg, self.rt.device
        bs = cfg.optim.per_device_train_batch_size
        stats: dict[str, list[float]] = {}
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["iteration"])
        for _ in range(cfg.grpo.rollout_epochs):
            order = torch.randperm(len(rollout), generator=g)
            for start in range(0, len(rollout), bs):
                collect(stats, train_minibatch(models, rollout.select(order[start : start + bs]), cfg, device))
                self.rt.accel.mark_step()
        return stats

    def _metrics(self, rollout: Rollout, sources, gen_stats, train_stats, t0, t1, t2, models: GRPOModels) -> dict[str, float]:
        world, g = self.rt.dist.world_size, self.cfg.grpo.group_size
        rewards = rollout.rewards
        groups = rewards.view(-1, g)
        generated = sum(s["generated_tokens"] for s in gen_stats)
        gen_seconds = sum(s["generate_seconds"] for s in gen_stats)
        row = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
            "group_reward_std": float(groups.std(dim=1).mean()),
            "zero_std_groups": float((groups.std(dim=1) == 0).float().mean()),
            "answer_tokens": float(rollout.action_mask.sum(dim=1).mean()),
            "generate_seconds": gen_seconds, "reward_seconds": sum(s["reward_seconds"] for s in gen_stats),
            "reference_seconds": sum(s["reference_seconds"] for s in gen_stats),
            "train_seconds": t2 - t1, "iteration_seconds": t2 - t0,
            "generate_tokens_per_second": generated * world / max(gen_seconds, 1e-9),
            "samples_per_second": len(rollout) * world / max(t2 - t0, 1e-9), "lr": models.actor.get_lr()[0],
        }
        for name in sources[0]:
            row[f"reward/{name}"] = float(torch.cat([s[name] for s in sources]).float().mean())
        row.update({k: _mean(v) for k, v in train_stats.items()})
        return row

    def _write_rows(self, name: str, rows: list[dict]) -> None:
        if self.rt.is_main and rows:
            (self.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def _finish(self, models: GRPOModels, state, total_iters, resumed_from, final) -> dict[str, Any]:
        rt, cfg = self.rt, self.cfg
        model_dir = self.out / "model"
        full = gather_state_dict(models.actor.module, rt.is_main)
        if rt.is_main:
            actor = merge_lora(materialize(lambda: actor_skeleton(cfg, self.tokenizer), full))
            save_hf(actor, self.tokenizer, model_dir, torch_dtype(cfg.deepspeed))
        barrier()
        metrics = {f"eval/{k}": v for k, v in final.items()}
        metrics.update({f"baseline/{k}": v for k, v in state["baseline"].items()})
        metrics.update({f"check/{k}": v for k, v in comparison(state["baseline"], final).items()})
        seconds = state["train_seconds"]
        rate = round(state["samples"] * rt.dist.world_size / seconds, 3) if seconds else None
        summary = completed_summary(
            "grpo", rt, step=state["iteration"], total_steps=total_iters, resumed_from=resumed_from, metrics=metrics,
            samples=state["samples"], seconds=seconds, rates={"samples_per_second": rate}, model_dir=model_dir,
            data_stats=self.prompts.stats, warnings=self.warnings,
        )
        publish_summary(self.out, summary, rt)
        return summary


def train(cfg: GRPOConfig) -> dict[str, Any]:
    """``rlhf train grpo``: train the stage to completion; its summary."""
    return GRPOTrainer(cfg).run()
