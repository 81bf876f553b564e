"""Generation tokens/s of our rollout's decode loops against ``transformers.generate``, same model,
prompts and batch, in one process (``python -m bench.generation``).

Every decoder answers the same batches of PPO prompts (the benchmark's prompt set, ``batch`` per
batch, left-padded to the batch's longest) with ``rlhf.generation.generate`` — the function PPO's
rollout calls — greedily, ``max_new_tokens`` each; the decoders take turns batch by batch
(``transformers``, ``static``, ``compiled``, then again), so a load change on a shared machine hits
them alike. The compiled decoder's compilation (its first call per shape) is timed apart and left
out. Reported per decoder: generated tokens/s (answer tokens the batch produced, after its end
token nothing counts), ms per decode step, FLOP/s as a fraction of this process's matmul peak
(``2 N`` per token, prefill + decode, N = parameters), and per repeat the ratio to ``transformers``
of the same batches: the median and the spread (also in process CPU time, ``cpu_ratio_to_transformers``:
with one thread on a shared machine it leaves out the time other processes held the core). Greedy answers
are compared with transformers' (``same_answers``: the share of rows whose answer is identical; bf16
rounding can differ where two logits are close).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

DECODERS = ("transformers", "static", "compiled")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt_batches(assets: Path, tokenizer, batch: int, batches: int, max_prompt_len: int, seed: int = 0):
    """``batches`` batches of ``batch`` prompt token lists (the last ``max_prompt_len`` tokens, the
    tokenizer's BOS first as PPO renders them) drawn from the benchmark's pairs."""
    from rlhf.data.tokenize import Encoder, keep_last

    rows = [json.loads(line)["prompt"] for line in (assets / "data" / "pairs.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(rows)
    enc = Encoder(tokenizer, "raw")
    prompts = [keep_last(ids, max_prompt_len, enc.prefix) for ids in enc.prompts(rows[: batch * batches])]
    return [prompts[i * batch : (i + 1) * batch] for i in range(batches)]


def run(
    model_dir: Path,
    assets: Path,
    *,
    dtype: str = "bf16",
    batch: int = 8,
    batches: int = 4,
    repeats: int = 5,
    max_prompt_len: int = 64,
    max_new_tokens: int = 64,
    decoders=DECODERS,
    peak_seconds: float = 2.0,
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.peak import matmul_gflops
    from rlhf.engine.accelerator import detect
    from rlhf.generation import Sampling, generate

    accel = detect()
    device = accel.device(0)
    accel.set_device(0)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    todo = prompt_batches(assets, tok, batch, batches, max_prompt_len)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    cache_len = max_prompt_len + max_new_tokens

    def answer(decoder, prompts):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        gen = generate(
            model,
            prompts,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
            sampling=sampling,
            device=device,
            decoder=decoder,
            cache_len=cache_len,
        )
        _sync(device)
        cpu_seconds[decoder] = cpu_seconds.get(decoder, 0.0) + time.process_time() - c0
        return gen, time.perf_counter() - t0

    cpu_seconds: dict[str, float] = {}

    warm: dict[str, float] = {}
    reference: list[list[list[int]]] = []
    for decoder in decoders:  # first calls: compilation, caches, allocator
        t0 = time.perf_counter()
        outs = [answer(decoder, p)[0] for p in todo]
        warm[decoder] = time.perf_counter() - t0
        if decoder == decoders[0]:
            reference = [g.answers for g in outs]
    cpu_seconds.clear()
    per: dict[str, list[dict[str, float]]] = {d: [] for d in decoders}
    same: dict[str, list[bool]] = {d: [] for d in decoders}
    cpu_per: dict[str, list[float]] = {d: [] for d in decoders}
    cpu_flops: dict[str, list[float]] = {d: [] for d in decoders}
    for _ in range(repeats):
        cpu_seconds.clear()
        totals = {d: {"seconds": 0.0, "tokens": 0, "steps": 0, "flops": 0.0} for d in decoders}
        for i, prompts in enumerate(todo):
            for decoder in decoders:
                gen, seconds = answer(decoder, prompts)
                t = totals[decoder]
                t["seconds"] += seconds
                t["tokens"] += int(gen.answer_lens.sum())
                steps = int(gen.answer_lens.max())
                t["steps"] += steps
                width = max(map(len, prompts))
                t["flops"] += 2 * params * len(prompts) * (width + steps - 1)
                same[decoder] += [a == b for a, b in zip(gen.answers, reference[i], strict=True)]
        for decoder, t in totals.items():
            cpu_per[decoder].append(t["tokens"] / cpu_seconds[decoder])
            cpu_flops[decoder].append(t["flops"] / cpu_seconds[decoder])
            per[decoder].append(
                {
                    "tokens_per_second": t["tokens"] / t["seconds"],
                    "ms_per_step": 1000 * t["seconds"] / t["steps"],
                    "flops_per_second": t["flops"] / t["seconds"],
                }
            )
    sizes = (2048, 4096) if device.type == "cpu" else (8192,)
    peak_dtype = dtype if dtype != "fp16" else "bf16"
    peak = max(matmul_gflops(peak_dtype, n, peak_seconds, device.type) for n in sizes)
    cpu_peak = (
        max(matmul_gflops(peak_dtype, n, peak_seconds, device.type, clock="cpu") for n in sizes)
        if device.type == "cpu"
        else peak
    )
    out: dict[str, Any] = {
        "model": str(model_dir),
        "params": params,
        "dtype": dtype,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "batches": batches,
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "peak_gflops": peak,
        "cpu_peak_gflops": cpu_peak,
        "warmup_seconds": warm,
        "decoders": {},
    }
    base = [r["tokens_per_second"] for r in per[decoders[0]]]
    for decoder in decoders:
        rates = [r["tokens_per_second"] for r in per[decoder]]
        ratios = [r / b for r, b in zip(rates, base, strict=True)]
        cpu_ratios = [c / b for c, b in zip(cpu_per[decoder], cpu_per[decoders[0]], strict=True)]
        out["decoders"][decoder] = {
            "tokens_per_second": statistics.median(rates),
            "tokens_per_second_all": rates,
            "ms_per_step": statistics.median(r["ms_per_step"] for r in per[decoder]),
            "fraction_of_peak": statistics.median(r["flops_per_second"] for r in per[decoder]) / 1e9 / peak,
            "ratio_to_transformers": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "same_answers": sum(same[decoder]) / len(same[decoder]),
            "cpu_ratio_to_transformers": statistics.median(cpu_ratios),
            "cpu_ratio_min": min(cpu_ratios),
            "cpu_ratio_max": max(cpu_ratios),
            "tokens_per_cpu_second": statistics.median(cpu_per[decoder]),
            "cpu_fraction_of_peak": statistics.median(cpu_flops[decoder]) / 1e9 / cpu_peak,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", required=True, help="directory written by bench.assets.build")
    parser.add_argument("--model", default="actor", help="asset name of the model")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-len", type=int, default=64)
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    assets = Path(args.assets)
    result = run(
        assets / args.model,
        assets,
        dtype=args.dtype,
        batch=args.batch,
        batches=args.batches,
        repeats=args.repeats,
        max_new_tokens=args.max_new_tokens,
        max_prompt_len=args.max_prompt_len,
        decoders=tuple(args.decoders.split(",")),
        peak_seconds=args.peak_seconds,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
