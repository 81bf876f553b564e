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
greedily; the summary compares the final actor with the starting (SFT) one. Steps 1 and 6, resume,
evaluation, export and the summary are GRPO's too (:class:`rlhf.stages.rounds.RoundsTrainer`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from rlhf.config import PPOConfig
from rlhf.config.ppo_parts import PolicyRoundsConfig
from rlhf.engine.setup import barrier, torch_dtype
from rlhf.models.export import save_hf
from rlhf.stages import checkpoint, run_settings
from rlhf.stages.ppo_eval import eval_prompts, evaluate
from rlhf.stages.ppo_models import PPOModels, build_models, check_positions, load_tokenizers
from rlhf.stages.ppo_train import collect, train_minibatch
from rlhf.stages.rollout import (
    Experience,
    critic_values_in_training,
    make_experience,
    static_length,
    whiten_advantages,
)
from rlhf.stages.rounds import RoundsTrainer, mean
from rlhf.stages.sampling import SkipSampler
from rlhf.stages.sft import sft_batch


class PPOTrainer(RoundsTrainer[PPOConfig, PPOModels]):
    stage = "ppo"
    engines = ("actor", "critic")
    eval_split = "the PPO eval split"

    def __init__(self, cfg: PPOConfig):
        super().__init__(cfg)
        self.ptx = self.data.get("ptx")
        self.ckpt_actor, self.ckpt_critic = self.ckpt_dirs
        self.values_in_training = critic_values_in_training(cfg)
        self._ptx: Iterator[dict[str, torch.Tensor]] | None = None  # ptx batches, from the first iteration

    def _tokenizers(self) -> tuple[Any, Any, bool]:
        tokenizers = load_tokenizers(self.cfg)
        check_positions(self.cfg)
        return tokenizers

    def _eval_prompts(self) -> list[list[int]]:
        return eval_prompts(self.cfg, self.tokenizer, self.prompts.eval)

    def _rounds(self) -> tuple[PolicyRoundsConfig, int, int]:
        return self.cfg.ppo, 1, self.cfg.ppo.ppo_epochs

    def _build_models(self, total_steps: int) -> PPOModels:
        return build_models(self.cfg, self.rt, total_steps, self.tokenizers)

    def _evaluate(self, models: PPOModels) -> tuple[dict[str, float], list[dict]]:
        return evaluate(models, self.cfg, self.rt, self.eval_prompts)

    def _extra_state(self) -> dict[str, Any]:
        return {"ptx_batches": 0}

    # ---- data ---------------------------------------------------------------------------------
    def _ptx_batches(self, consumed: int):
        """Endless SFT-style batches for the ptx loss, starting after ``consumed`` of them."""
        if self.ptx is None or self.ptx.train is None:
            raise ValueError(
                "ptx: no SFT samples (ptx.coef > 0 trains on data.sft_only_paths or the SFT share)"
            )
        train = self.ptx.train
        bs = self.cfg.optim.per_device_train_batch_size
        sampler = self._sampler(train)
        per_epoch = len(sampler) // bs
        if per_epoch == 0:
            raise ValueError("ptx: fewer SFT samples per rank than optim.per_device_train_batch_size")
        pad = self.tokenizer.pad_token_id
        static = static_length(self.cfg, self.rt)  # Gaudi: one shape for every batch

        def collate(rows):
            return sft_batch(rows, pad, static or max(len(r["input_ids"]) for r in rows))

        for epoch in itertools.count(consumed // per_epoch):
            sampler.set_epoch(epoch)
            grouped = self._grouped(sampler, train, "input_ids", bs)
            skip = consumed % per_epoch if epoch == consumed // per_epoch else 0
            loader = DataLoader(
                train,
                batch_size=bs,
                sampler=SkipSampler(grouped, skip * bs),
                drop_last=True,
                collate_fn=collate,
            )
            yield from loader

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

    # ---- an iteration -------------------------------------------------------------------------
    def _iteration(
        self, models: PPOModels, batches: list[list[list[int]]], state: dict[str, Any], t0: float
    ) -> tuple[int, float, dict[str, float]]:
        if self._ptx is None and self.cfg.ptx.coef > 0:
            self._ptx = self._ptx_batches(state["ptx_batches"])
        # 2.-4. answer, score, rewards and advantages
        parts, gen_stats = [], []
        for prompts in batches:
            exp, _, stats = make_experience(
                models, self.cfg, self.rt, prompts, values=not self.values_in_training
            )
            parts.append(exp)
            gen_stats.append(stats)
        experience = Experience.cat(parts, self.tokenizer.pad_token_id)
        t1 = time.perf_counter()
        # 5. PPO epochs over the experience
        train_stats = self._train(models, experience, state)
        t2 = time.perf_counter()
        return len(experience), t2, self._metrics(experience, gen_stats, train_stats, t0, t1, t2, models)

    def _train(self, models: PPOModels, exp: Experience, state: dict[str, Any]) -> dict[str, list[float]]:
        cfg, device = self.cfg, self.rt.device
        stats: dict[str, list[float]] = {}
        exp = whiten_advantages(exp, cfg, device)  # 4c. once over the whole rollout, all ranks together
        for index in self._minibatches(len(exp), state["iteration"]):
            ptx_batch = None
            if self._ptx is not None:
                ptx_batch = next(self._ptx)
                state["ptx_batches"] += 1
            collect(stats, train_minibatch(models, exp.select(index), cfg, device, ptx_batch))
            self.rt.accel.mark_step()
        return stats

    def _metrics(
        self, exp: Experience, gen_stats, train_stats, t0, t1, t2, models: PPOModels
    ) -> dict[str, float]:
        world = self.rt.dist.world_size
        answer_lens = exp.action_mask.sum(dim=1)
        generated = sum(s["generated_tokens"] for s in gen_stats)
        gen_seconds = sum(s["generate_seconds"] for s in gen_stats)
        row = {
            "reward_mean": float(exp.scores.mean()),
            "reward_std": float(exp.scores.std(unbiased=False)),
            "kl": float(exp.kl.sum(dim=1).mean()),
            "answer_tokens": float(answer_lens.float().mean()),
            "generate_seconds": gen_seconds,
            "experience_seconds": sum(s["experience_seconds"] for s in gen_stats),
            "train_seconds": t2 - t1,
            "iteration_seconds": t2 - t0,
            "generate_tokens_per_second": generated * world / max(gen_seconds, 1e-9),
            "samples_per_second": len(exp) * world / max(t2 - t0, 1e-9),
            "actor_lr": models.actor.get_lr()[0],
            "critic_lr": models.critic.get_lr()[0],
        }
        row.update({k: mean(v) for k, v in train_stats.items()})
        return row

    def _export(self, models: PPOModels, model_dir) -> None:
        """The actor (:meth:`RoundsTrainer._export`), then its EMA."""
        super()._export(models, model_dir)
        if models.ema is not None and self.rt.is_main:
            save_hf(models.ema, self.tokenizer, self.out / "ema_model", torch_dtype(self.cfg.deepspeed))


def train(cfg: PPOConfig) -> dict[str, Any]:
    """``rlhf train ppo``: train the stage to completion; its summary."""
    return PPOTrainer(cfg).run()
