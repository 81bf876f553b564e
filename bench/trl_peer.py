"""TRL as a peer on the benchmark's tiny setup (``python -m bench.trl_peer``): its RLOO trainer
(``trl.RLOOTrainer``, PyPI ``trl``, pinned in constraints.txt; ``pip install -c constraints.txt
'.[bench]'``) with the same actor (OPT 11.2M), the same reward model checkpoint (OPT 3.6M as a
sequence classifier), the same prompts, bf16, 8 answers per step (4 prompts x 2 answers: RLOO
needs at least two per prompt) of at most 64 tokens, one update per generation, a KL term to its
reference model (``beta``) as our PPO has. It has no critic: RLOO's baseline is the other answers'
mean reward. Measured: samples (answers) per second over the steps after ``warmup``, the same
clock as our PPO's (generation, scoring, reference, update: the whole step), and the answers'
mean length (sampling at temperature 1 from the untrained actor rarely ends an answer early), and
samples per second of process CPU time (with one thread on a shared machine: without the time other
processes held the core).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any


def run(
    assets: Path,
    work: Path,
    *,
    steps: int = 10,
    warmup: int = 2,
    max_prompt_len: int = 64,
    max_completion: int = 64,
    dtype: str = "bf16",
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [json.loads(line)["prompt"] for line in (assets / "data" / "pairs.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(rows)
    dataset = Dataset.from_list([{"prompt": p} for p in rows[: 8 * (steps + 2)]])
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1)
    reward.config.pad_token_id = tok.pad_token_id
    cuda = torch.cuda.is_available()
    args = RLOOConfig(
        output_dir=str(work),
        per_device_train_batch_size=8,
        num_generations=2,
        generation_batch_size=8,
        num_iterations=1,
        max_completion_length=max_completion,
        beta=0.05,
        learning_rate=1e-5,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=dtype == "bf16",
        use_cpu=not cuda,
        temperature=1.0,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,  # our PPO does not checkpoint either
    )
    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            times.append(time.perf_counter())
            cpu.append(time.process_time())

        def on_train_end(self, *_a, **_k):
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    trainer = RLOOTrainer(
        model=str(assets / "actor"),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        reward_processing_classes=tok,
        callbacks=[Clock()],
    )
    trainer.train()
    durations = [b - a for a, b in zip(times, times[1:], strict=False)][warmup:]
    cpu_durations = [b - a for a, b in zip(cpu, cpu[1:], strict=False)][warmup:]
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    return {
        "trainer": "trl.RLOOTrainer",
        "trl": __import__("trl").__version__,
        "steps": len(durations),
        "samples_per_step": 8,
        "seconds_per_step": statistics.median(durations),
        "samples_per_second": 8 * len(durations) / sum(durations),
        "samples_per_cpu_second": 8 * len(cpu_durations) / sum(cpu_durations),
        "completion_mean_length": statistics.mean(lengths[warmup:] or lengths) if lengths else None,
        "device": "cuda" if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", required=True)
    parser.add_argument("--work", default="/tmp/rlhf-bench-trl")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(run(Path(args.assets), Path(args.work), steps=args.steps, warmup=args.warmup)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
