"""Peak memory of one PPO rank, with and without LoRA, next to what each model should cost
(``python -m bench.memory``).

Each variant runs the real PPO stage (:class:`rlhf.stages.ppo.PPOTrainer`, the benchmark's settings
of :func:`bench.trainer.overrides`, a few iterations) in a fresh process on one rank. Measured: the
resident memory (CPU; sampled every 5 ms, plus the OS high-water mark) or the allocated device
memory (CUDA: ``torch.cuda.max_memory_allocated``) — before the models are built (the runtime:
Python, torch, DeepSpeed, data), after they are built, and the peak of the whole run; the models'
share is peak - before. Expected, from the parameter counts (N) and DeepSpeed's mixed precision
(on one rank ZeRO-1/2 run as stage 0: every state whole on the rank):

* a trained model: weights in the training dtype (2 N bytes in bf16), float32 master weights
  (4 N), Adam's two moments (8 N), gradients in the training dtype (2 N): 16 N, plus a transient
  float32 copy of the gradients during the optimizer step (4 N);
* a frozen model (reference, reward): its weights, 2 N in bf16;
* LoRA on a frozen base (``lora.only_optimize_lora``): the base's weights (2 N) and 16 bytes per
  adapter parameter; the reference is the actor with its adapters off, 0 bytes;
* EMA: float32, 4 N, on the main rank only.

Activations (batch 8 x 128 tokens) and the KV cache come on top and are small here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
VARIANTS = {
    "full": [],
    "lora": ["lora.dim=16", "lora.only_optimize_lora=true", "lora.learning_rate=1e-4"],
    "full+ema": ["engines.ema=true"],
}
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


class Peak:
    """The process's peak resident memory, sampled in a thread (CPU), or CUDA's allocator peak."""

    def __init__(self, cuda: bool):
        import psutil

        self.cuda, self.proc, self.peak, self._stop = cuda, psutil.Process(), 0, False
        if not cuda:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()

    def _sample(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def now(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return self.proc.memory_info().rss

    def high(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated()
        import resource

        return max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def expected(
    params: dict[str, int], trainable: dict[str, int], dtype: str, lora: bool, ema: bool
) -> dict[str, float]:
    """Bytes each model should take (steady state; see the module docstring), in MiB."""
    w = BYTES[dtype]
    master = 0 if dtype == "fp32" else 4  # a float32 master copy only under mixed precision

    def trained(n: int) -> int:
        return n * (w + master + 8 + w)

    actor = params["actor"] * w + trainable["actor"] * (master + 8 + w) if lora else trained(params["actor"])
    out = {
        "actor": actor,
        "reference": 0 if lora else params["actor"] * w,
        "critic": trained(params["critic"]),
        "reward": params["reward"] * w,
        "ema": 4 * params["actor"] if ema else 0,
    }
    out["total"] = sum(out.values())
    out["optimizer_step_transient"] = 4 * (trainable["actor"] if lora else params["actor"])
    return {k: v / MIB for k, v in out.items()}


def one(
    variant: str, assets: Path, work: Path, iterations: int, model: str, extra: list[str]
) -> dict[str, Any]:
    import torch

    from bench.trainer import overrides
    from rlhf.config import STAGES, load
    from rlhf.stages import ppo

    paths = {p.name: p for p in assets.iterdir() if p.is_dir()}
    paths["pairs"] = assets / "data" / "pairs.jsonl"
    cfg = load(
        STAGES["ppo"], None, [*overrides("ppo", paths, work, iterations, model), *VARIANTS[variant], *extra]
    )
    peak = Peak(torch.cuda.is_available())
    marks: dict[str, int] = {}
    built: dict[str, Any] = {}
    build = ppo.build_models

    def measured_build(*args):
        marks["before_models"] = peak.now()
        built["models"] = models = build(*args)
        marks["after_models"] = peak.now()
        return models

    ppo.build_models = measured_build
    trainer = ppo.PPOTrainer(cfg)
    trainer.run()
    m = built["models"]

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    params = {
        "actor": count(m.actor.module),
        "critic": count(m.critic.module),
        "reward": count(m.reward.module),
    }
    trainable = {"actor": count(m.actor.module, True), "critic": count(m.critic.module, True)}
    lora = cfg.lora.enabled and cfg.lora.only_optimize_lora
    high = peak.high()
    return {
        "variant": variant,
        "overrides": VARIANTS[variant] + extra,
        "device": "cuda" if peak.cuda else "cpu",
        "dtype": cfg.deepspeed.dtype,
        "params": params,
        "trainable": trainable,
        "reference_engine": type(m.reference).__name__,
        "mib": {
            "before_models": marks["before_models"] / MIB,
            "after_models": marks["after_models"] / MIB,
            "peak": high / MIB,
            "models_after_build": (marks["after_models"] - marks["before_models"]) / MIB,
            "models_peak": (high - marks["before_models"]) / MIB,
        },
        "expected_mib": expected(params, trainable, cfg.deepspeed.dtype, lora, cfg.engines.ema),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--assets", required=True, help="directory written by bench.assets.build (with sft50m)"
    )
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench" / "memory"))
    parser.add_argument("--model", default="sft50m", help="asset name of the actor")
    parser.add_argument("--variants", default="full,lora,full+ema")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one variant in this process
    parser.add_argument("extra", nargs="*", help="more KEY=VALUE config overrides")
    args = parser.parse_intermixed_args(argv)
    assets, work = Path(args.assets), Path(args.work)
    if args.one:
        print(json.dumps(one(args.one, assets, work / args.one, args.iterations, args.model, args.extra)))
        return 0
    results = []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for variant in args.variants.split(","):
        cmd = [
            sys.executable,
            "-m",
            "bench.memory",
            "--one",
            variant,
            "--assets",
            str(assets),
            "--work",
            str(work),
            "--model",
            args.model,
            "--iterations",
            str(args.iterations),
            *args.extra,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"bench.memory {variant} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
