"""The training loop every stage shares: data, engine, steps, eval, checkpoints, resume, export.

Position bookkeeping: an *optimizer step* is ``gradient_accumulation_steps`` micro-batches.
Checkpoints are taken only at optimizer-step boundaries and record (epoch, micro-batches done
in that epoch); the per-epoch order is a seeded ``DistributedSampler`` permutation, so a resumed
job skips exactly the micro-batches it had consumed and continues with the same data, optimizer,
scheduler and RNG state as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from rlhf.config import dump
from rlhf.config.stages import StageConfig, deprecated_settings
from rlhf.engine.ds_config import build_ds_config
from rlhf.engine.setup import (
    Runtime,
    barrier,
    init_runtime,
    initialize_training,
    torch_dtype,
    zero3_model_init,
)
from rlhf.models.checks import check_positions
from rlhf.models.export import gather_state_dict, materialize, save_hf
from rlhf.models.loading import load_tokenizer
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.base import Batch, Stage
from rlhf.stages.data import prepare_stage_data
from rlhf.stages.data_report import data_warnings
from rlhf.stages.lifecycle import completed_summary, publish_summary, resume_point, seed_everything
from rlhf.stages.sampling import LengthGroupedSampler, SkipSampler, column_lengths
from rlhf.stages.tracking import Tracker


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _all_reduce_sums(sums: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    keys = sorted(sums)
    packed = torch.stack([sums[k].detach().float().to(device) for k in keys])
    if dist.is_initialized():
        dist.all_reduce(packed)
    return dict(zip(keys, packed.tolist(), strict=True))


class Trainer:
    def __init__(self, cfg: StageConfig, stage_cls: type[Stage]):
        self.cfg = cfg
        self.out = Path(cfg.checkpoint.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.rt: Runtime = init_runtime(cfg.deepspeed)
        seed_everything(cfg.seed)
        model_cfg = cfg.model  # type: ignore[attr-defined]  # SFT, reward and DPO, the stages of this loop, have one
        self.tokenizer = load_tokenizer(model_cfg, cfg.data, "model")  # checks the model path first
        check_positions(model_cfg, "model", cfg.data.max_seq_len, "data.max_seq_len")
        self.stage = stage_cls(cfg, self.rt, self.tokenizer)
        self.data = prepare_stage_data(cfg, self.tokenizer, rank=self.rt.dist.rank, barrier=barrier)["train"]
        self._lengths: list[int] | None = None  # per training sample, when data.group_by_length
        if self.data.train is None or len(self.data.train) == 0:
            raise ValueError(
                f"stage {stage_cls.name}: no training samples after splitting data (stats: {self.data.stats})"
            )
        # Resume only from a checkpoint of the same data and settings (before config.yaml is rewritten).
        self.settings = run_settings.settings_of(cfg, {"train": self.data.stats})
        self.resume_tag, changed = resume_point(cfg, [self.ckpt_dir], self.settings)
        self.warnings = [
            *deprecated_settings(cfg),
            *data_warnings("train", self.data.stats),
            *(f"resuming despite a change (checkpoint.allow_changed_config): {c}" for c in changed),
        ]
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(cfg))

    # ---- data ---------------------------------------------------------------------------------
    def _sampler(self, dataset, shuffle: bool) -> DistributedSampler:
        return DistributedSampler(
            dataset,
            num_replicas=self.rt.dist.world_size,
            rank=self.rt.dist.rank,
            shuffle=shuffle,
            seed=self.cfg.seed,
        )

    def _epoch_order(self, epoch: int) -> Sampler[int]:
        """This rank's training samples for ``epoch``: a seeded shuffle, grouped by length if asked."""
        sampler = self._sampler(self.data.train, shuffle=True)
        sampler.set_epoch(epoch)
        if not self.cfg.data.group_by_length:
            return sampler
        if self._lengths is None:
            self._lengths = column_lengths(self.data.train, self.stage.length_columns)
        return LengthGroupedSampler(
            sampler, self._lengths, self.cfg.optim.per_device_train_batch_size, self.cfg.seed
        )

    def _loader(self, dataset, sampler: Sampler[int], batch_size: int) -> DataLoader:
        # Its own generator: creating an iterator must not draw from the global RNG (which drives
        # dropout), or a resumed job would see different random numbers than an uninterrupted one.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.stage.collate,
            num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, engine) -> dict[str, float]:
        if self.data.eval is None or len(self.data.eval) == 0:
            return {}
        engine.eval()
        sampler = self._sampler(self.data.eval, shuffle=False)
        loader = self._loader(self.data.eval, sampler, self.cfg.optim.per_device_eval_batch_size)
        totals: dict[str, torch.Tensor] = {}
        for batch in loader:
            sums = self.stage.eval_sums(engine, _to_device(batch, self.rt.device))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0) + v.detach().float().cpu()
            self.rt.accel.mark_step()
        engine.train()
        return self.stage.eval_metrics(_all_reduce_sums(totals, self.rt.device))

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, rt, optim = self.cfg, self.rt, self.cfg.optim
        accum = optim.gradient_accumulation_steps
        micro_per_epoch = len(
            self._loader(
                self.data.train, self._sampler(self.data.train, True), optim.per_device_train_batch_size
            )
        )
        total_steps = (micro_per_epoch * optim.epochs) // accum
        if optim.max_steps:
            total_steps = min(total_steps, optim.max_steps)
        if total_steps < 1:
            raise ValueError(
                f"stage {self.stage.name}: {micro_per_epoch} micro-batches per epoch are fewer than "
                f"optim.gradient_accumulation_steps={accum}: nothing to train"
            )

        ds_config = build_ds_config(cfg.deepspeed, optim, rt.dist.world_size)
        with zero3_model_init(ds_config):
            model = self.stage.build_model(torch.float32)
        engine = initialize_training(model, rt, ds_config, cfg.deepspeed, optim, cfg.lora, total_steps)
        self.engine = engine

        # the checkpoint's client state (restored from it on resume)
        state: dict[str, Any] = {
            "global_step": 0,
            "epoch": 0,
            "micro_in_epoch": 0,
            "train_seconds": 0.0,
            "real_tokens": 0,
            "samples": 0,
        }
        if self.resume_tag is not None:
            loaded = checkpoint.load(engine, self.ckpt_dir, rt.dist.rank, self.resume_tag)
            if loaded:
                state.update({k: loaded[k] for k in state if k in loaded})
        resumed_from: int = state["global_step"]

        tracker = Tracker(
            self.out,
            enabled=rt.is_main,
            tensorboard_dir=Path(cfg.logging.tensorboard_dir or self.out / "tensorboard")
            if cfg.logging.tensorboard
            else None,
            progress=cfg.logging.progress_bar,
            total_steps=total_steps,
            start_step=resumed_from,
            desc=self.stage.name,
        )
        if resumed_from:
            tracker.write(f"[{self.stage.name}] resumed from step {resumed_from} ({self.ckpt_dir})")
        for line in self.warnings:
            tracker.write(f"[{self.stage.name}] warning: {line}")
        self.stage.start(self, engine, tracker, resumed_from)

        step: int = state["global_step"]
        last_eval: dict[str, float] = {}
        window: dict[str, float] = {}
        window_n = 0
        t_window = time.perf_counter()
        tokens_window = 0
        engine.train()
        done = step >= total_steps
        boundary = True

        def save(epoch: int, micro: int) -> None:
            client = dict(state, global_step=step, epoch=epoch, micro_in_epoch=micro)
            checkpoint.save(
                engine,
                self.ckpt_dir,
                step,
                client,
                rt.dist.rank,
                cfg.checkpoint.keep_last,
                files={run_settings.FILE: self.settings},
            )

        resume_epoch, resume_micro = state["epoch"], state["micro_in_epoch"]
        for epoch in range(resume_epoch, optim.epochs):
            if done:
                break
            sampler = self._epoch_order(epoch)
            skip = resume_micro if epoch == resume_epoch else 0
            loader = self._loader(
                self.data.train,
                SkipSampler(sampler, skip * optim.per_device_train_batch_size),
                optim.per_device_train_batch_size,
            )
            micro = skip
            for batch in loader:
                t0 = time.perf_counter()
                batch = _to_device(batch, rt.device)
                loss, metrics = self.stage.train_loss(engine, batch)
                engine.backward(loss)
                boundary = engine.is_gradient_accumulation_boundary()
                engine.step()
                rt.accel.mark_step()
                micro += 1
                tokens = self.stage.real_tokens(batch)
                tokens_window += tokens
                state["real_tokens"] += tokens
                state["samples"] += self.stage.samples(batch)
                for k, v in metrics.items():
                    window[k] = window.get(k, 0.0) + float(v)
                window_n += 1
                state["train_seconds"] += time.perf_counter() - t0
                if not boundary:
                    continue
                step += 1
                tracker.advance()
                if step % cfg.logging.log_interval == 0 or step == total_steps:
                    elapsed = time.perf_counter() - t_window
                    row = {k: v / window_n for k, v in window.items()}
                    row.update(
                        lr=engine.get_lr()[0],
                        epoch=epoch + micro / max(micro_per_epoch, 1),
                        tokens_per_second=tokens_window * rt.dist.world_size / max(elapsed, 1e-9),
                    )
                    tracker.log(step, "train", row)
                    window, window_n, tokens_window, t_window = {}, 0, 0, time.perf_counter()
                end_of_epoch = micro >= micro_per_epoch
                done = step >= total_steps
                if done or end_of_epoch:
                    break  # evaluated and saved below
                if cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0:
                    last_eval = self.evaluate(engine)
                    tracker.log(step, "eval", last_eval)
                if cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0:
                    save(epoch, micro)
            next_epoch = micro >= micro_per_epoch
            if not cfg.logging.eval_interval or done or next_epoch:
                last_eval = self.evaluate(engine)
                tracker.log(step, "eval", last_eval)
            if next_epoch and not done and boundary:  # never checkpoint half-accumulated gradients
                save(epoch + 1, 0)
            if done:
                save(epoch + (1 if next_epoch else 0), 0 if next_epoch else micro)
        if not last_eval and resumed_from >= total_steps:
            last_eval = self.evaluate(engine)
        extra = self.stage.finish(self, engine, tracker, step)
        tracker.close()
        return self._finish(
            engine,
            step,
            total_steps,
            {f"eval/{k}": v for k, v in last_eval.items()} | extra,
            state,
            resumed_from,
        )

    def _finish(self, engine, step, total_steps, metrics, state, resumed_from) -> dict[str, Any]:
        rt = self.rt
        model_dir = self.out / "model"
        trained = engine.module
        full = gather_state_dict(trained, rt.is_main)
        if rt.is_main:
            assert full is not None  # gathered on the main rank
            exported = self.stage.export_model(materialize(self.stage.build_skeleton, full))
            save_hf(exported, self.tokenizer, model_dir, torch_dtype(self.cfg.deepspeed))
        barrier()
        seconds = state["train_seconds"]
        rate = round(state["real_tokens"] * rt.dist.world_size / seconds, 1) if seconds else None
        summary = completed_summary(
            self.stage.name,
            rt,
            step=step,
            total_steps=total_steps,
            resumed_from=resumed_from,
            metrics=metrics,
            samples=state["samples"],
            seconds=seconds,
            rates={"real_tokens_per_second": rate},
            model_dir=model_dir,
            data_stats=self.data.stats,
            warnings=self.warnings,
        )
        publish_summary(self.out, summary, rt)
        return summary
