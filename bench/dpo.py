"""DPO: our stage against TRL's ``DPOTrainer`` on the same tiny setup, side by side in one run
(``python -m bench.dpo --assets DIR``; ``python -m bench`` runs it as its ``dpo`` part).

Same model (the benchmark's actor: OPT, 11.2M parameters, :mod:`bench.assets`), same pairs (the
first ``pairs`` records of the assets' ``pairs.jsonl``; prompt + answer + end-of-text about 69
tokens), same settings on both sides: bf16, 8 pairs per rank per optimizer step, sequences of at
most 128 tokens, AdamW at a constant 1e-4, ``beta`` 0.1, sigmoid loss, dropout off. Layouts: 1 rank
x 2 threads and 2 ranks x 1 thread (ours: ``mpirun``, DeepSpeed ZeRO-2; TRL: ``torchrun``, DDP over
gloo). Each run is a fresh process (group); the variants of one layout run one after another.

The reference, both ways on both sides:

* ``live``: a frozen copy of the model scores every batch (TRL's default; ours with
  ``dpo.reference_logps: live``);
* ``cached``: the reference log-probs of every pair are computed in one pass before the first step
  and no reference model stays in memory (our default; TRL's ``precompute_ref_log_probs=True``).

Measured per run: pairs/s over the optimizer steps after ``warmup`` (a step timed from its start to
the next one's: forward, backward, optimizer, next batch), the reference pass's seconds (cached),
the real tokens per pair, and each rank's peak resident memory (sampled every 5 ms, and the OS
high-water mark) with the memory before training started. The ratios are ours / TRL's, same layout,
same reference way; ``cpu_ratio`` compares pairs per second of process CPU time (every rank's
``time.process_time`` at the same step marks, summed over ranks: it leaves out the time other
processes held the cores of this shared machine, exactly with one thread per rank); ``epoch``
compares one pass over the measured pairs including the reference pass:
``pairs / (reference seconds + pairs / steady pairs per second)``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
SETTINGS = {"batch": 8, "max_len": 128, "lr": 1e-4, "beta": 0.1, "dtype": "bf16"}
REFERENCES = ("live", "cached")


def subset(assets: Path, n: int, out: Path) -> Path:
    """The first ``n`` pairs of the assets (a seeded shuffle), as a JSONL file both trainers read."""
    rows = (assets / "data" / "pairs.jsonl").read_text().splitlines()
    random.Random(0).shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows[:n]) + "\n")
    return out


def _peak():
    import torch

    from bench.memory import Peak

    return Peak(torch.cuda.is_available())


def _timed_reference(fn, marks: dict[str, float]):
    """``fn``, adding the seconds each call takes to ``marks["reference_seconds"]`` (both sides' reference
    pass: our ``score_pairs``, TRL's ``_precompute_ref_logps``)."""

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        marks["reference_seconds"] = marks.get("reference_seconds", 0.0) + time.perf_counter() - t0
        return out

    return timed


# ---- ours: one rank -----------------------------------------------------------------------------


def ours(args) -> None:
    from bench.trainer import _probe_stage
    from rlhf.config import DPOConfig, load
    from rlhf.stages import dpo_reference
    from rlhf.stages.dpo import DPOStage
    from rlhf.stages.loop import Trainer

    peak = _peak()
    s = SETTINGS
    cfg = load(
        DPOConfig,
        None,
        [
            f"model.name_or_path={args.assets / 'actor'}",
            f"data.paths=[{args.pairs_file}]",
            "data.split=0,1,0",
            "data.eval_fraction=0",
            f"data.max_seq_len={s['max_len']}",
            f"data.cache_dir={args.work / 'data_cache'}",
            f"deepspeed.dtype={s['dtype']}",
            "deepspeed.zero_stage=2",
            f"optim.per_device_train_batch_size={s['batch']}",
            f"optim.per_device_eval_batch_size={s['batch']}",
            "optim.lr_scheduler=constant",
            f"optim.learning_rate={s['lr']}",
            "optim.weight_decay=0",
            f"optim.max_steps={args.steps}",
            f"dpo.beta={s['beta']}",
            f"dpo.reference_logps={args.reference}",
            "evaluation.baseline=false",
            f"checkpoint.output_dir={args.work}",
            "checkpoint.resume=false",
            "logging.progress_bar=false",
            "logging.log_interval=1000",
            *args.extra,
        ],
    )
    marks: dict[str, float] = {}
    dpo_reference.score_pairs = _timed_reference(dpo_reference.score_pairs, marks)
    cpu: list[float] = []

    class Probe(_probe_stage(DPOStage)):  # type: ignore[misc]
        def train_loss(self, engine, batch):
            cpu.append(time.process_time())  # the process's CPU time at the same mark as the wall clock
            return super().train_loss(engine, batch)

    trainer = Trainer(cfg, Probe)
    marks["before_mib"] = peak.now() / MIB
    trainer.run()
    records = trainer.stage.records
    rank = trainer.rt.dist.rank
    Path(f"{args.out}{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": trainer.rt.dist.world_size,
                "step_starts": [r["t"] for r in records],
                "cpu_starts": cpu,
                "real_tokens": [r["real"] for r in records],
                "pairs": [r["samples"] for r in records],
                "reference_seconds": marks.get("reference_seconds", 0.0),
                "before_mib": marks["before_mib"],
                "peak_mib": peak.high() / MIB,
            }
        )
    )


# ---- TRL: one rank ------------------------------------------------------------------------------


def trl(args) -> None:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    peak = _peak()
    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(args.assets / "actor")
    # On disk, one copy per run (written by the orchestrator): TRL caches its precomputed reference
    # log-probs next to the dataset's files, where every rank finds them (an in-memory dataset's cache
    # is a per-process temporary directory), and no run finds another's
    dataset = load_from_disk(str(args.pairs_file))
    cuda = torch.cuda.is_available()
    config = DPOConfig(
        output_dir=str(args.work),
        per_device_train_batch_size=s["batch"],
        gradient_accumulation_steps=1,
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_steps=args.steps,
        beta=s["beta"],
        loss_type=["sigmoid"],
        max_length=s["max_len"],
        bf16=s["dtype"] == "bf16",
        use_cpu=not cuda,
        precompute_ref_log_probs=args.reference == "cached",
        precompute_ref_batch_size=s["batch"],
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL's default is on; ours off
        # ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    model = AutoModelForCausalLM.from_pretrained(args.assets / "actor")
    ref = None if args.reference == "cached" else AutoModelForCausalLM.from_pretrained(args.assets / "actor")
    starts: list[float] = []
    cpu: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            starts.append(time.perf_counter())
            cpu.append(time.process_time())

    marks: dict[str, float] = {}
    # TRL computes the cached reference log-probs in DPOTrainer.__init__: time the method on the class
    DPOTrainer._precompute_ref_logps = _timed_reference(DPOTrainer._precompute_ref_logps, marks)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Clock()],
    )
    step = trainer.training_step

    def counted(model, inputs, *a, **k):
        mask = [v for key, v in inputs.items() if key.endswith("attention_mask")]
        tokens.append(int(sum(int(m.sum()) for m in mask)))
        return step(model, inputs, *a, **k)

    trainer.training_step = counted
    marks["before_mib"] = peak.now() / MIB
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{args.out}{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "step_starts": starts,
                "cpu_starts": cpu,
                "real_tokens": tokens,
                "pairs": [s["batch"]] * len(tokens),
                "reference_seconds": marks.get("reference_seconds", 0.0),
                "before_mib": marks["before_mib"],
                "peak_mib": peak.high() / MIB,
                "trl": __import__("trl").__version__,
            }
        )
    )


# ---- orchestration ------------------------------------------------------------------------------


def summarize(ranks: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Steady-state figures of one run from its ranks' files: steps ``warmup..`` timed on rank 0."""
    lead = ranks[0]
    starts = lead["step_starts"]
    steps = len(starts) - 1 - warmup
    if steps < 1:
        raise ValueError(f"{len(starts) - 1} steps timed: need more than warmup = {warmup}")
    seconds = starts[-1] - starts[warmup]
    pairs = sum(sum(r["pairs"][warmup : warmup + steps]) for r in ranks)
    real = sum(sum(r["real_tokens"][warmup : warmup + steps]) for r in ranks)
    # every rank's process CPU time over the same steps (all its threads): the time other processes held
    # the cores is left out (exactly with one thread per rank)
    cpu = sum(r["cpu_starts"][-1] - r["cpu_starts"][warmup] for r in ranks if r.get("cpu_starts"))
    return {
        "steps": steps,
        "seconds": seconds,
        "pairs_per_second": pairs / seconds,
        "cpu_seconds": cpu,
        "pairs_per_cpu_second": pairs / cpu if cpu and all(r.get("cpu_starts") for r in ranks) else None,
        "seconds_per_step": seconds / steps,
        "real_tokens_per_pair": real / pairs,
        "reference_seconds": max(r["reference_seconds"] for r in ranks),
        "peak_mib": max(r["peak_mib"] for r in ranks),
        "before_mib": max(r["before_mib"] for r in ranks),
        "world_size": lead["world_size"],
    }


def _launch(side: str, ranks: int, threads: int, args, reference: str, work: Path) -> list[dict[str, Any]]:
    from bench.run import launch_ranks

    shutil_rm(work)
    work.mkdir(parents=True)
    prefix = work / "result_rank"
    pairs = args.pairs_file
    if side == "trl":
        from datasets import Dataset

        rows = [json.loads(x) for x in pairs.read_text().splitlines()]
        pairs = work / "pairs_arrow"
        Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]).save_to_disk(
            str(pairs)
        )
    inner = [
        "-m",
        "bench.dpo",
        side,
        "--assets",
        str(args.assets),
        "--pairs-file",
        str(pairs),
        "--work",
        str(work / "train"),
        "--out",
        str(prefix),
        "--steps",
        str(args.steps),
        "--reference",
        reference,
    ]
    print(
        f"[bench.dpo] {side} {reference}, {ranks} rank(s) x {threads} thread(s)", file=sys.stderr, flush=True
    )
    what = f"bench.dpo {side} {reference} on {ranks} rank(s)"
    launch_ranks(side, ranks, threads, inner, work / "log.txt", what)
    return [json.loads(Path(f"{prefix}{r}.json").read_text()) for r in range(ranks)]


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def compare(args) -> dict[str, Any]:
    """Every layout, both reference ways, ours and TRL's; ratios ours / TRL's."""
    from bench.run import rank_layouts

    args.pairs_file = subset(args.assets, args.pairs, args.work / "pairs.jsonl")
    out: dict[str, Any] = {
        "settings": {**SETTINGS, "steps": args.steps, "warmup": args.warmup, "pairs": args.pairs},
        "trl": __import__("importlib.metadata").metadata.version("trl"),
        "layouts": {},
    }
    for ranks, threads in rank_layouts([int(r) for r in args.ranks.split(",")]):
        layout: dict[str, Any] = {"threads_per_rank": threads}
        for reference in args.references.split(","):
            for side in ("ours", "trl"):
                files = _launch(
                    side, ranks, threads, args, reference, args.work / f"{side}-{reference}-{ranks}r"
                )
                layout[f"{side}_{reference}"] = summarize(files, args.warmup)
            a, b = layout[f"ours_{reference}"], layout[f"trl_{reference}"]
            layout[f"ratio_{reference}"] = a["pairs_per_second"] / b["pairs_per_second"]
            if a["pairs_per_cpu_second"] and b["pairs_per_cpu_second"]:
                layout[f"cpu_ratio_{reference}"] = a["pairs_per_cpu_second"] / b["pairs_per_cpu_second"]
            epoch = {
                side: args.pairs / (x["reference_seconds"] + args.pairs / x["pairs_per_second"])
                for side, x in (("ours", a), ("trl", b))
            }
            layout[f"epoch_ratio_{reference}"] = epoch["ours"] / epoch["trl"]
        out["layouts"][str(ranks)] = layout
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| ranks | reference | ours pairs/s | TRL pairs/s | ratio | ratio per CPU-second | "
        "one epoch incl. reference pass | ours / TRL peak MiB per rank | tokens per pair (ours / TRL) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ranks, layout in result["layouts"].items():
        for ref in REFERENCES:
            if f"ours_{ref}" not in layout:
                continue
            a, b = layout[f"ours_{ref}"], layout[f"trl_{ref}"]
            cpu = layout.get(f"cpu_ratio_{ref}")
            lines.append(
                f"| {ranks} | {ref} | {a['pairs_per_second']:.1f} | {b['pairs_per_second']:.1f} | "
                f"{layout[f'ratio_{ref}']:.2f}x | {f'{cpu:.2f}x' if cpu else '-'} | "
                f"{layout[f'epoch_ratio_{ref}']:.2f}x | "
                f"{a['peak_mib']:.0f} / {b['peak_mib']:.0f} | {a['real_tokens_per_pair']:.1f} / "
                f"{b['real_tokens_per_pair']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "side", nargs="?", choices=("ours", "trl"), help=argparse.SUPPRESS
    )  # one run, one rank
    parser.add_argument("--assets", type=Path, default=ROOT / ".cache" / "bench" / "assets")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench" / "dpo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--pairs", type=int, default=512, help="pairs in the data (the cached reference pass scores all)"
    )
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--references", default="live,cached")
    parser.add_argument("--pairs-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--reference", choices=REFERENCES, default="cached", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more trainer KEY=VALUE overrides (ours)")
    args = parser.parse_intermixed_args(argv)
    if args.side:
        (ours if args.side == "ours" else trl)(args)
        return 0
    if not (args.assets / "actor").is_dir():
        from bench import assets

        assets.build(args.assets)
    result = compare(args)
    print(table(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
