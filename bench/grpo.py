"""GRPO against TRL's ``GRPOTrainer``, side by side in one run, on the benchmark's tiny setup.

``python -m bench.grpo compare --assets DIR --work DIR [--ranks 1,2] [--steps N] [--warmup W]`` runs,
for each rank count, our ``rlhf train grpo`` stage (:class:`rlhf.stages.grpo.GRPOTrainer`, under
``mpirun`` for 2 ranks, ZeRO-2) and TRL's ``GRPOTrainer`` (PyPI ``trl``, pinned in constraints.txt,
under ``torchrun`` for 2 ranks, DDP), one after the other, each in fresh processes, and prints one
JSON line: samples (answers) per second of both and their ratio. ``ours``/``trl`` run one side alone
(every rank writes ``PREFIX<rank>.json``).

Same for both (:data:`SETTINGS`): the actor (OPT 11.2M) and the reward model checkpoint (OPT 3.6M, a
sequence classifier with a fresh head, as ``bench/trl_peer.py`` uses it), the benchmark's prompts
(9-58 tokens), per rank and step 4 prompts x 4 answers (``group_size`` / ``num_generations``) of at
most 64 tokens sampled at temperature 1, one optimizer step per generation over all 16 answers, a KL
term to a frozen reference copy (``kl_coef`` / ``beta`` 0.04, the k3 estimator both use), advantages
normalised by the group's standard deviation, token-level loss averaging (ours ``token``, TRL's
``dapo``), bf16, AdamW at a constant learning rate, no gradient checkpointing (TRL's default is on).
Different by design: our models train in bf16 under DeepSpeed (fp32 master weights in the
optimizer), TRL's in fp32 under bf16 autocast (as the Trainer's ``bf16=True`` does); our prompts are
the stage's seeded shuffle of the same prompts. Timing: each whole step (generation, rewards,
reference, update, logging) after ``warmup`` steps, from its start to the next one's (the last: to
the end of training) — ours at each ``_iteration`` call, TRL's from a callback at each step's start;
samples/s = answers of all ranks / rank 0's seconds. The same marks take each rank's process CPU
time (``time.process_time``): samples per CPU-second = answers of all ranks / the CPU seconds of all
ranks, which leaves out the time other processes held the cores of this shared machine (exactly with
one thread per rank).

Both report their answers' mean length: the untrained actor rarely ends an answer, so most answers
run the full 64 tokens in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "prompts_per_rank": 4,
    "group_size": 4,
    "max_prompt_len": 64,
    "max_answer_len": 64,
    "kl_coef": 0.04,
    "learning_rate": 1e-5,
    "temperature": 1.0,
}


def ours_overrides(assets: Path, work: Path, steps: int) -> list[str]:
    s = SETTINGS
    answers = s["prompts_per_rank"] * s["group_size"]
    return [
        f"actor.name_or_path={assets / 'actor'}",
        f"reward_model.name_or_path={assets / 'reward'}",
        f"data.paths=[{assets / 'data' / 'pairs.jsonl'}]",
        "data.split=0,0,1",
        "data.max_seq_len=128",
        "data.eval_fraction=0.01",
        f"data.cache_dir={work / 'data_cache'}",
        "deepspeed.dtype=bf16",
        "deepspeed.zero_stage=2",
        f"optim.per_device_train_batch_size={answers}",
        "optim.lr_scheduler=constant",
        f"optim.learning_rate={s['learning_rate']}",
        "optim.weight_decay=0",
        f"generation.max_prompt_len={s['max_prompt_len']}",
        f"generation.max_answer_len={s['max_answer_len']}",
        f"generation.per_device_generation_batch_size={s['prompts_per_rank']}",
        f"generation.temperature={s['temperature']}",
        f"grpo.group_size={s['group_size']}",
        f"grpo.kl_coef={s['kl_coef']}",
        "grpo.kl_estimator=k3",
        "grpo.scale_rewards=group",
        "grpo.loss_aggregation=token",
        f"grpo.max_iterations={steps}",
        "evaluation.baseline=false",
        "evaluation.max_prompts=4",
        f"checkpoint.output_dir={work / 'out'}",
        "checkpoint.resume=false",
        "logging.progress_bar=false",
    ]


def run_ours(assets: Path, work: Path, steps: int, extra: list[str]) -> dict[str, Any]:
    from rlhf.config import GRPOConfig, load
    from rlhf.stages.grpo import GRPOTrainer

    cfg = load(GRPOConfig, None, [*ours_overrides(assets, work, steps), *extra])

    marks: list[tuple[float, float]] = []  # (wall, process CPU) at each iteration's start, and the end

    class Probe(GRPOTrainer):
        rows: list[dict[str, Any]] = []

        def _iteration(self, *args, **kwargs):
            if marks:
                marks.pop()  # the previous iteration's end: this start replaces it
            marks.append((time.perf_counter(), time.process_time()))
            out = super()._iteration(*args, **kwargs)
            marks.append((time.perf_counter(), time.process_time()))
            return out

        def _metrics(self, rollout, *args):
            row = super()._metrics(rollout, *args)
            self.rows.append({**row, "answers": len(rollout)})
            return row

    trainer = Probe(cfg)
    trainer.run()
    return {
        "rank": trainer.rt.dist.rank,
        "world_size": trainer.rt.dist.world_size,
        "seconds": [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)],
        "cpu_seconds": [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)],
        "answers_per_step": trainer.rows[0]["answers"],
        "lengths": [r["answer_tokens"] for r in trainer.rows],
        "decoder": cfg.generation.decoder,
        # where a step's time goes: the stage's own per-iteration timers
        "phases": {
            name: [r[f"{name}_seconds"] for r in trainer.rows]
            for name in ("generate", "reward", "reference", "train")
        },
    }


def run_trl(assets: Path, work: Path, steps: int) -> dict[str, Any]:
    import random

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prompts = [
        json.loads(line)["prompt"] for line in (assets / "data" / "pairs.jsonl").read_text().splitlines()
    ]
    random.Random(0).shuffle(prompts)
    dataset = Dataset.from_list(
        [{"prompt": p} for p in prompts[: s["prompts_per_rank"] * world * (steps + 2)]]
    )
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1)
    reward.config.pad_token_id = tok.pad_token_id
    answers = s["prompts_per_rank"] * s["group_size"]
    args = GRPOConfig(
        output_dir=str(work),
        per_device_train_batch_size=answers,
        num_generations=s["group_size"],
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=s["max_answer_len"],
        beta=s["kl_coef"],
        scale_rewards="group",
        loss_type="dapo",
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=True,
        use_cpu=not torch.cuda.is_available(),
        temperature=s["temperature"],
        top_p=1.0,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL's default is on (recomputes every forward); ours off
    )
    marks: list[tuple[float, float]] = []  # (wall, process CPU) at each step's start, and the end

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            marks.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, *_a, **_k):
            marks.append((time.perf_counter(), time.process_time()))

    trainer = GRPOTrainer(
        model=str(assets / "actor"),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        reward_processing_classes=tok,
        callbacks=[Clock()],
    )
    phases: dict[str, list[float]] = {"generate": [], "reward": [], "rollout": []}

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            phases[name].append(time.perf_counter() - t0)
            return out

        return wrapper

    # where a step's time goes: generation, the reward model, and the whole rollout (generation, rewards,
    # the reference's log-probs, advantages); the rest of a step is the update
    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("rollout", trainer._generate_and_score_completions)
    trainer.train()
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    import trl

    return {
        "rank": int(os.environ.get("RANK", "0")),
        "world_size": world,
        "trl": trl.__version__,
        "seconds": [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)],
        "cpu_seconds": [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)],
        "answers_per_step": answers,
        "lengths": lengths,
        "phases": phases,
    }


def summarize(ranks: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """samples/s of the counted steps (answers of every rank over rank 0's wall clock)."""
    main = next(r for r in ranks if r["rank"] == 0)
    counted = main["seconds"][warmup:]
    if not counted:
        raise ValueError(f"no steps after {warmup} warm-up steps")
    world = main["world_size"]
    lengths = main["lengths"][warmup:] or main["lengths"]
    samples = main["answers_per_step"] * world * len(counted)
    cpu = sum(sum(r["cpu_seconds"][warmup:]) for r in ranks) if all("cpu_seconds" in r for r in ranks) else 0
    return {
        "steps": len(counted),
        "seconds_per_step": statistics.median(counted),
        "samples_per_second": round(samples / sum(counted), 3),
        # every rank's process CPU time (all its threads) of the counted steps: what the work cost, less the
        # time other processes held the cores (with one thread per rank; two threads also count spinning)
        "samples_per_cpu_second": round(samples / cpu, 3) if cpu else None,
        "answer_tokens_mean": round(statistics.mean(lengths), 2) if lengths else None,
        "phase_seconds": {  # medians over the counted steps (one call of each per step)
            k: round(statistics.median(v[warmup:] or v), 4)
            for k, v in (main.get("phases") or {}).items()
            if v
        },
        "world_size": world,
    }


def _launch(
    side: str, ranks: int, threads: int, assets: Path, work: Path, steps: int, extra: list[str]
) -> list[dict]:
    from bench.run import launch_ranks

    out = work / f"{side}-{ranks}r"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = [
        "-m",
        "bench.grpo",
        side,
        "--assets",
        str(assets),
        "--work",
        str(out / "train"),
        "--out",
        str(out / "result_rank"),
        "--steps",
        str(steps),
        *extra,
    ]
    print(f"[bench] grpo {side} {ranks} rank(s) x {threads} thread(s)", file=sys.stderr, flush=True)
    launch_ranks(side, ranks, threads, args, out / "log.txt", f"grpo {side} on {ranks} rank(s)")
    return [json.loads((out / f"result_rank{r}.json").read_text()) for r in range(ranks)]


def compare(
    assets: Path, work: Path, ranks: list[int], steps: int, warmup: int, extra: list[str]
) -> dict[str, Any]:
    cores = os.cpu_count() or 2
    out: dict[str, Any] = {"settings": {**SETTINGS, "steps": steps, "warmup": warmup, "overrides": extra}}
    for n in ranks:
        threads = max(1, min(cores, 2) // n)
        ours = summarize(_launch("ours", n, threads, assets, work, steps, extra), warmup)
        trl = summarize(_launch("trl", n, threads, assets, work, steps, []), warmup)
        out[str(n)] = {
            "ours": ours,
            "trl": trl,
            "threads_per_rank": threads,
            "ratio": round(ours["samples_per_second"] / trl["samples_per_second"], 3),
            "cpu_ratio": (
                round(ours["samples_per_cpu_second"] / trl["samples_per_cpu_second"], 3)
                if ours["samples_per_cpu_second"] and trl["samples_per_cpu_second"]
                else None
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("ours", "trl", "compare"))
    parser.add_argument("--assets", required=True, help="directory written by bench.assets.build")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", help="ours/trl: result file prefix, PREFIX<rank>.json")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", default="1,2", help="compare: rank counts")
    parser.add_argument(
        "extra", nargs="*", help="ours: more KEY=VALUE overrides of our stage (an experiment)"
    )
    args = parser.parse_intermixed_args(argv)
    assets, work = Path(args.assets), Path(args.work)
    if args.side == "compare":
        print(
            json.dumps(
                compare(
                    assets, work, [int(r) for r in args.ranks.split(",")], args.steps, args.warmup, args.extra
                )
            )
        )
        return 0
    result = (
        run_ours(assets, work, args.steps, args.extra)
        if args.side == "ours"
        else run_trl(assets, work, args.steps)
    )
    Path(f"{args.out}{result['rank']}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
