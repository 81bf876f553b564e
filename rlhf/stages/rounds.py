"""The life of a stage that trains in rounds of generation then policy updates (PPO, GRPO), all of
it but the round itself: prompt data, resume, the iteration loop and its bookkeeping (step 1, sample
prompts; step 6, metrics and checkpoint), evaluation before and after, export and the summary.

A subclass (:class:`rlhf.stages.ppo.PPOTrainer`, :class:`rlhf.stages.grpo.GRPOTrainer`) names its
stage and engines and supplies steps 2-5 (:meth:`RoundsTrainer._iteration`), its models, its
evaluation and its checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rlhf.config import GRPOConfig, PPOConfig, dump
from rlhf.config.ppo_parts import PolicyRoundsConfig
from rlhf.config.stages import deprecated_settings
from rlhf.engine.setup import barrier, init_runtime, torch_dtype
from rlhf.models.export import gather_state_dict, materialize, merge_lora, save_hf
from rlhf.stages import run_settings
from rlhf.stages.data import prepare_stage_data
from rlhf.stages.data_report import data_warnings
from rlhf.stages.lifecycle import completed_summary, publish_summary, resume_point, seed_everything
from rlhf.stages.ppo_eval import comparison
from rlhf.stages.ppo_models import actor_skeleton
from rlhf.stages.sampling import LengthGroupedSampler, SkipSampler, column_lengths
from rlhf.stages.tracking import Tracker

C = TypeVar("C", bound=PPOConfig | GRPOConfig)


class Models(Protocol):
    actor: Any  # the trained policy's DeepSpeed engine


M = TypeVar("M", bound=Models)  # the stage's models


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class RoundsTrainer(Generic[C, M]):
    stage: ClassVar[str]  # the stage's name: messages, progress bar, summary
    engines: ClassVar[tuple[str, ...]]  # what it checkpoints: one directory each under checkpoints/
    eval_split: ClassVar[str]  # what holds the evaluation prompts without evaluation.prompts

    def __init__(self, cfg: C):
        self.cfg = cfg
        self.out = Path(cfg.checkpoint.output_dir)
        self.rt = init_runtime(cfg.deepspeed)
        seed_everything(cfg.seed)
        self.tokenizers = self._tokenizers()  # (actor's, reward model's, whether they are the same)
        self.tokenizer = self.tokenizers[0]
        self.data = prepare_stage_data(cfg, self.tokenizer, rank=self.rt.dist.rank, barrier=barrier)
        self.prompts = self.data["prompts"]
        if self.prompts.train is None or len(self.prompts.train) == 0:
            raise ValueError(
                f"stage {self.stage}: no prompts after splitting data (stats: {self.prompts.stats})"
            )
        self.train_prompts: Dataset = self.prompts.train
        self.eval_prompts = self._eval_prompts()
        self.ckpt_dirs = [self.out / "checkpoints" / name for name in self.engines]
        # Resume from the newest iteration every engine completed, with the same data and settings.
        self.settings = run_settings.settings_of(cfg, {name: d.stats for name, d in self.data.items()})
        self.resume_tag, changed = resume_point(cfg, self.ckpt_dirs, self.settings)
        self.warnings = deprecated_settings(cfg)
        # the prompts (an eval split expected unless evaluation.prompts), ptx
        for name, d in self.data.items():
            expected = name == "prompts" and not cfg.evaluation.prompts
            self.warnings += data_warnings(name, d.stats, eval_expected=expected)
        self.warnings += [
            f"resuming despite a change (checkpoint.allow_changed_config): {c}" for c in changed
        ]
        if not self.eval_prompts:
            self.warnings.append(
                f"evaluation: no held-out prompts (evaluation.prompts is unset and {self.eval_split} "
                "is empty), so there are no baseline/* and eval/* metrics"
            )
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(cfg))
        self._lengths: dict[str, list[int]] = {}  # per column, when data.group_by_length

    # ---- what a stage supplies ----------------------------------------------------------------
    def _tokenizers(self) -> tuple[Any, Any, bool]:
        """Check that rollouts fit every model's positions; load the tokenizers (checks paths)."""
        raise NotImplementedError

    def _eval_prompts(self) -> list[list[int]]:
        """Token ids of the evaluation prompts."""
        raise NotImplementedError

    def _rounds(self) -> tuple[PolicyRoundsConfig, int, int]:
        """(the algorithm's config section, answers per prompt, passes over each rollout)."""
        raise NotImplementedError

    def _build_models(self, total_steps: int) -> M:
        raise NotImplementedError

    def _resume(self, models: M) -> dict[str, Any] | None:
        """Load the checkpoint ``self.resume_tag`` (if any) into ``models``; its loop state."""
        raise NotImplementedError

    def _save(self, models: M, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _evaluate(self, models: M) -> tuple[dict[str, float], list[dict]]:
        """Metrics over the evaluation prompts and the answered rows."""
        raise NotImplementedError

    def _iteration(
        self, models: M, batches: list[Any], state: dict[str, Any], t0: float
    ) -> tuple[int, float, dict]:
        """Steps 2-5 of an iteration on ``batches`` (prompts, from :meth:`_collate`) started at ``t0``:
        (samples trained on, when training ended, the metrics row)."""
        raise NotImplementedError

    def _collate(self, rows: list[dict[str, Any]]) -> Any:
        return [list(r["prompt_ids"]) for r in rows]

    # ---- data ---------------------------------------------------------------------------------
    def _sampler(self, dataset: Dataset) -> DistributedSampler:
        return DistributedSampler(
            dataset,
            num_replicas=self.rt.dist.world_size,
            rank=self.rt.dist.rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=True,
        )

    def _grouped(
        self, sampler: DistributedSampler, dataset: Dataset, column: str, batch_size: int
    ) -> Sampler:
        """``sampler`` grouped by the length of ``column`` when data.group_by_length."""
        if not self.cfg.data.group_by_length:
            return sampler
        if column not in self._lengths:
            self._lengths[column] = column_lengths(dataset, (column,))
        return LengthGroupedSampler(sampler, self._lengths[column], batch_size, self.cfg.seed)

    def _prompt_loader(self, epoch: int, skip_batches: int) -> DataLoader:
        bs = self.cfg.generation.per_device_generation_batch_size
        sampler = self._sampler(self.train_prompts)
        sampler.set_epoch(epoch)
        grouped = self._grouped(sampler, self.train_prompts, "prompt_ids", bs)
        return DataLoader(
            self.train_prompts,
            batch_size=bs,
            sampler=SkipSampler(grouped, skip_batches * bs),
            collate_fn=self._collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )  # not the global RNG: exact resume

    def _minibatches(self, size: int, iteration: int) -> Iterator[torch.Tensor]:
        """The rows of each mini-batch of the passes over a rollout of ``size`` rows, each pass in a new
        order (seeded by the iteration: the same after a resume)."""
        bs = self.cfg.optim.per_device_train_batch_size
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + iteration)
        for _ in range(self._rounds()[2]):
            order = torch.randperm(size, generator=g)
            for start in range(0, size, bs):
                yield order[start : start + bs]

    def plan(self) -> tuple[int, int, int]:
        """(iterations per epoch, total iterations, optimizer steps per iteration)."""
        cfg, gen = self.cfg, self.cfg.generation
        batches = len(self._sampler(self.train_prompts)) // gen.per_device_generation_batch_size
        per_epoch = batches // gen.generation_batches
        if per_epoch < 1:
            raise ValueError(
                f"stage {self.stage}: {batches} prompt batches per rank are fewer than "
                f"generation.generation_batches ({gen.generation_batches}); lower the generation batch size "
                "or add prompts"
            )
        algo, per_prompt, passes = self._rounds()
        total = per_epoch * cfg.optim.epochs
        if algo.max_iterations:
            total = min(total, algo.max_iterations)
        answers = gen.per_device_generation_batch_size * gen.generation_batches * per_prompt
        micro = answers // cfg.optim.per_device_train_batch_size * passes
        return per_epoch, total, math.ceil(micro / cfg.optim.gradient_accumulation_steps)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, rt, stage = self.cfg, self.rt, self.stage
        per_epoch, total_iters, steps_per_iter = self.plan()
        models = self._build_models(total_iters * steps_per_iter)
        state: dict[str, Any] = {
            "iteration": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            **self._extra_state(),
            "train_seconds": 0.0,
            "samples": 0,
            "baseline": {},
        }
        loaded = self._resume(models)
        if loaded:
            state.update({k: loaded[k] for k in state if k in loaded})
        resumed_from = state["iteration"]
        tensorboard = cfg.logging.tensorboard_dir or self.out / "tensorboard"
        tracker = Tracker(
            self.out,
            enabled=rt.is_main,
            tensorboard_dir=Path(tensorboard) if cfg.logging.tensorboard else None,
            progress=cfg.logging.progress_bar,
            total_steps=total_iters,
            start_step=resumed_from,
            desc=stage,
        )
        if resumed_from:
            tracker.write(f"[{stage}] resumed from iteration {resumed_from} ({self.ckpt_dirs[0].parent})")
        for line in self.warnings:
            tracker.write(f"[{stage}] warning: {line}")
        if cfg.evaluation.baseline and not state["baseline"] and self.eval_prompts:
            state["baseline"], rows = self._evaluate(models)
            self._write_rows("baseline_answers.jsonl", rows)
            tracker.log(0, "baseline", state["baseline"])

        gen_batches = cfg.generation.generation_batches
        while state["iteration"] < total_iters:
            loader = iter(self._prompt_loader(state["epoch"], state["batch_in_epoch"]))
            while state["batch_in_epoch"] // gen_batches < per_epoch and state["iteration"] < total_iters:
                t0 = time.perf_counter()
                # 1. sample prompts
                batches = [next(loader) for _ in range(gen_batches)]
                # 2.-5. the stage's: a rollout, then policy updates over it (and the metrics row)
                samples, t2, row = self._iteration(models, batches, state, t0)
                # 6. bookkeeping: metrics, checkpoint
                state["iteration"] += 1
                state["batch_in_epoch"] += gen_batches
                state["samples"] += samples
                state["train_seconds"] += t2 - t0
                tracker.advance()
                it = state["iteration"]
                if it % cfg.logging.log_interval == 0 or it == total_iters:
                    tracker.log(it, "train", row)
                if (
                    cfg.checkpoint.save_interval
                    and it % cfg.checkpoint.save_interval == 0
                    and it < total_iters
                ):
                    self._save(models, state)
            if state["batch_in_epoch"] // gen_batches >= per_epoch:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
        self._save(models, state)

        final, rows = self._evaluate(models) if self.eval_prompts else ({}, [])
        self._write_rows("eval_answers.jsonl", rows)
        tracker.log(state["iteration"], "eval", final)
        tracker.close()
        return self._finish(models, state, total_iters, resumed_from, final)

    def _extra_state(self) -> dict[str, Any]:
        """The stage's own entries of the loop state (saved in checkpoints), at the start."""
        return {}

    def _write_rows(self, name: str, rows: list[dict]) -> None:
        if self.rt.is_main and rows:
            (self.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def _export(self, models: M, model_dir: Path) -> None:
        """The trained actor, merged with its LoRA adapters, as a Hugging Face model (collective)."""
        full = gather_state_dict(models.actor.module, self.rt.is_main)
        if self.rt.is_main:
            assert full is not None  # gathered on the main rank
            actor = merge_lora(materialize(lambda: actor_skeleton(self.cfg, self.tokenizer), full))
            save_hf(actor, self.tokenizer, model_dir, torch_dtype(self.cfg.deepspeed))

    def _finish(self, models: M, state, total_iters, resumed_from, final) -> dict[str, Any]:
        rt = self.rt
        model_dir = self.out / "model"
        self._export(models, model_dir)
        barrier()
        metrics = {f"eval/{k}": v for k, v in final.items()}
        metrics.update({f"baseline/{k}": v for k, v in state["baseline"].items()})
        metrics.update({f"check/{k}": v for k, v in comparison(state["baseline"], final).items()})
        seconds = state["train_seconds"]
        rate = round(state["samples"] * rt.dist.world_size / seconds, 3) if seconds else None
        summary = completed_summary(
            self.stage,
            rt,
            step=state["iteration"],
            total_steps=total_iters,
            resumed_from=resumed_from,
            metrics=metrics,
            samples=state["samples"],
            seconds=seconds,
            rates={"samples_per_second": rate},
            model_dir=model_dir,
            data_stats=self.prompts.stats,
            warnings=self.warnings,
        )
        publish_summary(self.out, summary, rt)
        return summary
