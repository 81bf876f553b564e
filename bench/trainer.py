"""One trainer benchmark on one rank: the real stage code with thin probes, results as JSON.

``python -m bench.trainer STAGE --assets DIR --work DIR --out PREFIX [--steps N] [--model NAME]
[KEY=VALUE ...]`` (STAGE: sft, reward or ppo) trains through :mod:`rlhf.stages` exactly as
``rlhf train`` does, with the settings of DeepSpeed-Chat's examples (see :func:`overrides`), and
writes ``PREFIX<rank>.json``. Under ``mpirun``/``torchrun`` every rank writes its own file.

The probes change nothing the trainer does:

* SFT and reward: a subclass of the stage notes the wall-clock time at the start of every
  micro-batch's ``train_loss`` and the batch's real (non-pad) and padded token counts, so the time
  of micro-batch ``i`` is ``t[i+1] - t[i]`` (forward, backward, optimizer step and the next batch's
  loading: everything the loop does per step);
* PPO: a subclass of :class:`~rlhf.stages.ppo.PPOTrainer` keeps the per-iteration metrics row the
  trainer computes (the same values it writes to ``metrics.jsonl``: generate_seconds,
  experience_seconds, train_seconds, iteration_seconds, ...) plus the batch's shapes (prompt width,
  generated steps, packed width), which the FLOP count needs.

FLOPs (see :func:`summarize_loop` and :func:`summarize_ppo`): ``6 N`` per trained token, ``2 N``
per token of a forward-only pass, N = every parameter of the model (the tied input/output embedding
counted once, standing for the LM head's matmul); attention-score FLOPs are left out. Tokens are
the padded ones the hardware actually processed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

STAGES = ("sft", "reward", "ppo")


def overrides(
    stage: str, assets: dict[str, Path], out: Path, steps: int, model: str | None = None
) -> list[str]:
    """Config overrides equivalent to DeepSpeed-Chat's step-1/2/3 examples on the tiny setup:
    bf16, ZeRO-2, batch 8 per rank, sequences of 128 (prompt 64 + answer 64 for PPO), one PPO epoch;
    PPO generates with the compiled static-cache decoder (``generation.decoder=compiled``)."""
    common = [
        f"data.paths=[{assets['pairs']}]",
        "data.split=1,1,1",
        "data.max_seq_len=128",
        "data.eval_fraction=0.01",
        f"data.cache_dir={out / 'data_cache'}",
        "deepspeed.dtype=bf16",
        "deepspeed.zero_stage=2",
        "optim.per_device_train_batch_size=8",
        "data.group_by_length=true",
        "optim.per_device_eval_batch_size=8",
        "optim.lr_scheduler=constant",
        "optim.learning_rate=1e-4",
        f"checkpoint.output_dir={out}",
        "checkpoint.resume=false",
        "logging.progress_bar=false",
        "logging.log_interval=1",
    ]
    if stage == "sft":
        return [f"model.name_or_path={assets[model or 'actor']}", f"optim.max_steps={steps}", *common]
    if stage == "reward":
        return [f"model.name_or_path={assets[model or 'reward']}", f"optim.max_steps={steps}", *common]
    return [
        f"actor.name_or_path={assets[model or 'actor']}",
        *([f"critic.name_or_path={assets['reward']}"] if "reward" in assets else []),
        *common,
        "generation.max_prompt_len=64",
        "generation.max_answer_len=64",
        "generation.per_device_generation_batch_size=8",
        "generation.do_sample=false",
        "generation.decoder=compiled",
        "ppo.ppo_epochs=1",
        f"ppo.max_iterations={steps}",
        "critic_optim.learning_rate=1e-4",
        "evaluation.baseline=false",
        "evaluation.max_prompts=8",
    ]


def _probe_stage(base: type) -> type:
    """``base`` (a Stage class) recording every micro-batch's start time and token counts."""

    class Probe(base):  # type: ignore[misc, valid-type]
        records: list[dict[str, float]]

        def train_loss(self, engine, batch):
            if not hasattr(self, "records"):
                self.records = []
            mask = batch["attention_mask"]
            self.records.append(
                {
                    "t": time.perf_counter(),
                    "real": int(mask.sum()),
                    "padded": int(mask.numel()),
                    "samples": self.samples(batch),
                }
            )
            return super().train_loss(engine, batch)

    Probe.__name__ = f"Probe{base.__name__}"
    return Probe


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_loop_stage(stage: str, cfg) -> dict[str, Any]:
    from rlhf.stages.loop import Trainer
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.sft import SFTStage

    trainer = Trainer(cfg, _probe_stage({"sft": SFTStage, "reward": RewardStage}[stage]))
    t0 = time.perf_counter()
    summary = trainer.run()
    return {
        "rank": trainer.rt.dist.rank,
        "world_size": trainer.rt.dist.world_size,
        "accelerator": trainer.rt.accel.name,
        "threads": _threads(),
        "params": _param_count(trainer.engine.module),
        "records": trainer.stage.records,
        "wall_seconds": time.perf_counter() - t0,
        "summary": summary,
    }


def run_ppo(cfg) -> dict[str, Any]:
    from rlhf.stages import ppo, rollout

    # Which experience forward passes ran (the FLOP count must not assume any): the actor's
    # log-probs normally come from generation and the critic's values from its training forward.
    # Only rlhf.stages.rollout's calls are counted: training calls its own imported names.
    forwards = {"actor": 0, "reference": 0, "critic": 0}
    built: dict[str, Any] = {}
    actor_logprobs, critic_values, build_models = (
        rollout.actor_logprobs,
        rollout.critic_values,
        ppo.build_models,
    )

    def keep_models(*args):
        built["models"] = build_models(*args)
        return built["models"]

    def counted_logprobs(engine, *args):
        forwards["reference" if engine is built["models"].reference else "actor"] += 1
        return actor_logprobs(engine, *args)

    def counted_values(engine, *args):
        forwards["critic"] += 1
        return critic_values(engine, *args)

    rollout.actor_logprobs, rollout.critic_values, ppo.build_models = (
        counted_logprobs,
        counted_values,
        keep_models,
    )

    class ProbePPO(ppo.PPOTrainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.rows: list[dict[str, Any]] = []

        def _metrics(self, exp, gen_stats, train_stats, t0, t1, t2, models):
            row = super()._metrics(exp, gen_stats, train_stats, t0, t1, t2, models)
            cpu_now = time.process_time()  # process CPU time of the iteration (with one thread: excludes
            cpu_seconds, self.cpu_mark = (
                cpu_now - getattr(self, "cpu_mark", cpu_now),
                cpu_now,
            )  # others' turns)
            action = exp.action_mask
            prompt_lens = action.float().argmax(dim=1) + 1  # first answer position + 1
            answer_lens = action.sum(dim=1)
            self.models = models
            self.rows.append(
                {
                    **row,
                    "rows": int(exp.sequences.size(0)),
                    "packed_width": int(exp.sequences.size(1)),
                    "prompt_width": int(prompt_lens.max()),
                    "gen_steps": int(answer_lens.max()),
                    "answer_tokens_mean": float(answer_lens.float().mean()),
                    "ended_share": float(
                        (exp.sequences == self.tokenizer.eos_token_id).any(dim=1).float().mean()
                    ),
                    "experience_forwards": dict(forwards),
                    "cpu_seconds": cpu_seconds,
                }
            )
            forwards.update(dict.fromkeys(forwards, 0))
            return row

    trainer = ProbePPO(cfg)
    t0 = time.perf_counter()
    summary = trainer.run()
    m = trainer.models
    params = {
        "actor": _param_count(m.actor.module),
        "reference": _param_count(m.reference.module),
        "critic": _param_count(m.critic.module),
        "reward": _param_count(m.reward.module),
    }
    return {
        "rank": trainer.rt.dist.rank,
        "world_size": trainer.rt.dist.world_size,
        "accelerator": trainer.rt.accel.name,
        "threads": _threads(),
        "params": params,
        "iterations": trainer.rows,
        "wall_seconds": time.perf_counter() - t0,
        "summary": summary,
    }


# ---- summaries (pure: the orchestrator calls them on the rank files) ----------------------------


def summarize_loop(ranks: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Steady-state throughput of an SFT or reward run from every rank's records.

    Micro-batches ``warmup .. n-2`` of each rank are counted; the time is rank 0's from the start of
    micro-batch ``warmup`` to the start of micro-batch ``n-1`` (the ranks step in lockstep)."""
    first = ranks[0]["records"]
    n = len(first)
    if n - 1 <= warmup:
        raise ValueError(f"{n} steps measured: need more than warmup + 1 = {warmup + 1}")
    seconds = first[n - 1]["t"] - first[warmup]["t"]
    window = [r["records"][warmup : n - 1] for r in ranks]
    real = sum(x["real"] for w in window for x in w)
    padded = sum(x["padded"] for w in window for x in w)
    samples = sum(x["samples"] for w in window for x in w)
    params = ranks[0]["params"]
    return {
        "steps": n - 1 - warmup,
        "seconds": seconds,
        "real_tokens_per_second": real / seconds,
        "padded_tokens_per_second": padded / seconds,
        "samples_per_second": samples / seconds,
        "real_share": real / padded,
        "params": params,
        "flops_per_second": 6 * params * padded / seconds,
        "useful_flops_per_second": 6 * params * real / seconds,
        "world_size": ranks[0]["world_size"],
        "threads": ranks[0]["threads"],
        "accelerator": ranks[0]["accelerator"],
    }


def ppo_iteration_flops(it: dict[str, Any], params: dict[str, int]) -> dict[str, float]:
    """FLOPs of one rank's iteration: generation (prefill + decode, KV cache), scoring and the
    experience forwards that ran (counted by the probe), training (actor and critic, one PPO epoch)."""
    b, width = it["rows"], it["packed_width"]
    gen_tokens = b * (it["prompt_width"] + it["gen_steps"] - 1)
    gen = 2 * params["actor"] * gen_tokens
    score = 2 * params["reward"] * b * width
    experience = 2 * sum(params[model] * n for model, n in it["experience_forwards"].items()) * b * width
    train = 6 * (params["actor"] + params["critic"]) * b * width
    return {
        "generate": gen,
        "score": score,
        "experience": experience,
        "train": train,
        "total": gen + score + experience + train,
    }


def summarize_ppo(ranks: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Steady-state PPO figures: iterations ``warmup..`` of every rank."""
    its = [r["iterations"][warmup:] for r in ranks]
    if not its[0]:
        raise ValueError(
            f"{len(ranks[0]['iterations'])} PPO iterations measured: need more than warmup = {warmup}"
        )
    params = ranks[0]["params"]
    lead = its[0]  # wall clock: rank 0's (the ranks meet at every optimizer step)
    seconds = sum(x["iteration_seconds"] for x in lead)
    gen_s = sum(x["generate_seconds"] for x in lead)
    exp_s = sum(x["experience_seconds"] for x in lead)
    train_s = sum(x["train_seconds"] for x in lead)
    samples = sum(x["rows"] for r in its for x in r)
    flops = {
        k: sum(ppo_iteration_flops(x, params)[k] for r in its for x in r)
        for k in ("generate", "score", "experience", "train", "total")
    }
    generated = sum(x["answer_tokens_mean"] * x["rows"] for r in its for x in r)
    return {
        "iterations": len(lead),
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "generate_seconds_per_iteration": gen_s / len(lead),
        "experience_seconds_per_iteration": exp_s / len(lead),
        "train_seconds_per_iteration": train_s / len(lead),
        "iteration_seconds": seconds / len(lead),
        # the first counted iteration's CPU time is measured from the iteration before it
        "samples_per_cpu_second": (
            sum(x["rows"] for x in lead[1:]) / sum(x["cpu_seconds"] for x in lead[1:])
            if len(lead) > 1 and all("cpu_seconds" in x for x in lead)
            else None
        ),
        "generate_tokens_per_second": generated / gen_s,
        "answer_tokens_mean": generated / samples,
        "prompt_width_mean": sum(x["prompt_width"] for x in lead) / len(lead),
        "gen_steps_mean": sum(x["gen_steps"] for x in lead) / len(lead),
        "ended_share": sum(x["ended_share"] for x in lead) / len(lead),
        "flops_per_second": flops["total"] / seconds,
        "generate_flops_per_second": flops["generate"] / gen_s,
        "experience_flops_per_second": (flops["score"] + flops["experience"]) / exp_s,
        "train_flops_per_second": flops["train"] / train_s,
        "flops_per_sample": flops["total"] / samples,
        # experience forward passes per iteration (rank 0's last one): the actor's log-probs come
        # from generation and, with one epoch and one mini-batch, the critic's values from training
        "experience_forwards": lead[-1]["experience_forwards"],
        "params": params,
        "world_size": ranks[0]["world_size"],
        "threads": ranks[0]["threads"],
        "accelerator": ranks[0]["accelerator"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--assets", required=True, help="directory written by bench.assets.build")
    parser.add_argument("--work", required=True, help="output directory of the training run")
    parser.add_argument("--out", required=True, help="result file prefix: PREFIX<rank>.json")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (PPO: iterations)")
    parser.add_argument("--model", help="asset name of the trained model (default: actor, reward for RM)")
    parser.add_argument("extra", nargs="*", help="more KEY=VALUE config overrides")
    args = parser.parse_intermixed_args(argv)

    from rlhf.config import STAGES as CONFIGS
    from rlhf.config import load

    root = Path(args.assets)
    assets = {p.name: p for p in root.iterdir() if p.is_dir()}
    assets["pairs"] = root / "data" / "pairs.jsonl"
    cfg = load(
        CONFIGS[args.stage],
        None,
        [*overrides(args.stage, assets, Path(args.work), args.steps, args.model), *args.extra],
    )
    result = run_ppo(cfg) if args.stage == "ppo" else run_loop_stage(args.stage, cfg)
    result["stage"] = args.stage
    result["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    Path(f"{args.out}{result['rank']}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
