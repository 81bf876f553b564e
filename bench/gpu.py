"""The GPU benchmark (``python -m bench.gpu``): SFT of a ~1B model in bf16 with its MFU, the PPO
breakdown on a ~1B actor, and the same-process ratios of :mod:`bench.generation` and
:mod:`bench.step` at that size. Written to run unchanged on one CUDA GPU; ``--toy`` runs every
part on CPU with nano models (the figures then mean nothing: it checks the script, so that GPU time
is not spent on set-up).

Parts, each in its own process where it trains (a fresh CUDA context, no warm caches):

1. assets: ``sft1b`` (OPT 24 x 2048, ffn 8192, ~1.2B) and ``rm350m`` (OPT 24 x 1024, ~300M) from
   config, prompts 64-256 and answers 64-256 tokens (``bench.assets``);
2. the bf16 matmul peak of the GPU (8192^2 and larger; ``bench.peak``) and its datasheet dense
   bf16 peak when the card is known (:data:`DATASHEET_BF16`); MFU is given against both;
3. SFT of ``sft1b`` through the real trainer (``bench.trainer sft``: batch 8, sequences <= 512,
   ZeRO-2 — stage 0 on one GPU —, bf16): real and padded tokens/s, ``6 N`` FLOPs per token;
4. PPO with ``sft1b`` as actor and reference and ``rm350m`` as critic and reward model
   (``bench.trainer ppo``: batch 8, prompts <= 256, answers of 256 tokens, compiled decoder):
   seconds per iteration of generation, experience and training, samples/s;
5. ``bench.generation`` on ``sft1b`` (transformers vs static vs compiled decoders, same batches);
6. ``bench.step`` sft and ppo on ``sft1b`` (+ ``rm350m``): ours against the plain PyTorch loop.

Result: ``bench/results/gpu-<timestamp>.json`` (``--out``) and a summary on screen.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import assets as bench_assets
from bench.run import ROOT, base_env, machine, run_trainer
from bench.trainer import summarize_loop, summarize_ppo

#: dense bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets (SXM parts)
DATASHEET_BF16 = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.05, "B200": 2250.0}

SETTINGS = {
    "gpu": {
        "pairs": 1000,
        "shapes": "issue",
        "sft_steps": (20, 5),
        "ppo_iters": (6, 2),
        "gen_repeats": 3,
        "step_repeats": 3,
        "max_seq_len": 512,
        "prompt": 256,
        "answer": 256,
        "peak_seconds": 2.0,
    },
    "toy": {
        "pairs": 400,
        "shapes": "nano",
        "sft_steps": (4, 1),
        "ppo_iters": (2, 1),
        "gen_repeats": 1,
        "step_repeats": 1,
        "max_seq_len": 128,
        "prompt": 32,
        "answer": 32,
        "peak_seconds": 0.2,
    },
}
LENGTHS = {"prompt_tokens": (64, 256), "answer_tokens": (64, 256)}


def datasheet_peak(gpu_name: str | None) -> float | None:
    for key, tflops in DATASHEET_BF16.items():
        if gpu_name and key in gpu_name:
            return tflops * 1000.0
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--toy", action="store_true", help="nano models on CPU: checks the script, figures meaningless"
    )
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench-gpu"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--parts", default="sft,ppo,generation,step", help="which of sft, ppo, generation, step"
    )
    args = parser.parse_args(argv)
    mode = SETTINGS["toy" if args.toy else "gpu"]
    parts = set(args.parts.split(","))
    work = Path(args.work) / ("toy" if args.toy else "gpu")
    info = machine()
    if not args.toy and info["accelerator"] != "cuda":
        print("[bench.gpu] no CUDA device: run with --toy to try the script on CPU", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "toy" if args.toy else "gpu",
        "machine": info,
    }
    t0 = time.time()
    paths = bench_assets.build(
        work / "assets", n_pairs=mode["pairs"], models=("sft1b", "rm350m"), shapes=mode["shapes"], **LENGTHS
    )
    result["data"] = bench_assets.length_stats(paths["pairs"], paths["tokenizer"])
    result["assets_seconds"] = round(time.time() - t0, 1)

    from bench.peak import measure

    result["peak"] = measure(mode["peak_seconds"], (8192,) if info["accelerator"] == "cuda" else (1024,))
    peaks = {"measured_matmul": result["peak"]["bf16"], "datasheet": datasheet_peak(info.get("gpu"))}
    result["peaks_gflops"] = peaks
    seq = [f"data.max_seq_len={mode['max_seq_len']}"]
    threads = 1 if info["accelerator"] == "cuda" else 2

    if "sft" in parts:
        steps, warmup = mode["sft_steps"]
        ranks = run_trainer("sft", 1, threads, steps, work / "assets", work, model="sft1b", extra=seq)
        sft = {**summarize_loop(ranks, warmup), "warmup": warmup}
        sft["mfu"] = {k: sft["flops_per_second"] / 1e9 / v for k, v in peaks.items() if v}
        result["sft"] = sft
    if "ppo" in parts:
        steps, warmup = mode["ppo_iters"]
        extra = [
            *seq,
            f"critic.name_or_path={paths['rm350m']}",
            f"generation.max_prompt_len={mode['prompt']}",
            f"generation.max_answer_len={mode['answer']}",
            f"data.max_seq_len={mode['prompt'] + mode['answer']}",
            "generation.decoder=compiled",
        ]
        ranks = run_trainer("ppo", 1, threads, steps, work / "assets", work, model="sft1b", extra=extra)
        ppo = {**summarize_ppo(ranks, warmup), "warmup": warmup}
        ppo["mfu"] = {k: ppo["flops_per_second"] / 1e9 / v for k, v in peaks.items() if v}
        result["ppo"] = ppo
    result["same_process"] = {}
    for part, module, args_ in (
        (
            "generation",
            "bench.generation",
            [
                "--model",
                "sft1b",
                "--repeats",
                str(mode["gen_repeats"]),
                "--batches",
                "2",
                "--max-new-tokens",
                str(mode["answer"]),
                "--max-prompt-len",
                str(mode["prompt"]),
            ],
        ),
        ("step_sft", "bench.step", ["sft", "--actor", "sft1b", "--repeats", str(mode["step_repeats"])]),
        (
            "step_ppo",
            "bench.step",
            ["ppo", "--actor", "sft1b", "--critic", "rm350m", "--repeats", str(mode["step_repeats"])],
        ),
    ):
        if part.split("_")[0] not in parts:
            continue
        import subprocess

        cmd = [
            sys.executable,
            "-m",
            module,
            "--assets",
            str(work / "assets"),
            *args_,
            "--peak-seconds",
            str(mode["peak_seconds"]),
        ]
        if module == "bench.step":
            cmd += ["--prompt", str(mode["prompt"]), "--answer", str(mode["answer"])]
        print(f"[bench.gpu] {part}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            cmd, cwd=ROOT, env=base_env(threads), capture_output=True, text=True, timeout=3600
        )
        if proc.returncode != 0:
            result["same_process"][part] = {"error": proc.stderr[-3000:]}
            continue
        result["same_process"][part] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["timestamp"].replace(":", "").replace("+0000", "Z")
    path = out / f"gpu-{'toy-' if args.toy else ''}{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(summary(result))
    print(f"[bench.gpu] wrote {path}", file=sys.stderr)
    return 0


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['machine'].get('gpu', result['machine']['accelerator'])}, "
        f"matmul peak {result['peak']['bf16']:.0f} GFLOP/s bf16"
    ]
    if "sft" in result:
        s = result["sft"]
        lines.append(
            f"SFT sft1b: {s['real_tokens_per_second']:.0f} real tok/s, MFU "
            + ", ".join(f"{v:.1%} of {k}" for k, v in s["mfu"].items())
        )
    if "ppo" in result:
        p = result["ppo"]
        lines.append(
            f"PPO sft1b+rm350m: {p['samples_per_second']:.2f} samples/s; per iteration generation "
            f"{p['generate_seconds_per_iteration']:.2f} s, "
            f"experience {p['experience_seconds_per_iteration']:.2f} s, "
            f"training {p['train_seconds_per_iteration']:.2f} s"
        )
    for part, r in result.get("same_process", {}).items():
        if "error" in r:
            lines.append(f"{part}: FAILED")
        elif part == "generation":
            lines.append(
                "generation: "
                + ", ".join(
                    f"{d} {v['tokens_per_second']:.0f} tok/s (x{v['ratio_to_transformers']:.2f})"
                    for d, v in r["decoders"].items()
                )
            )
        else:
            lines.append(
                f"{part}: ours/plain x{r['ratio_ours_to_plain']:.2f} "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
