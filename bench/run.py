"""``python -m bench``: every benchmark, a table on screen, ``bench/results/<timestamp>.json`` and
``bench/results/latest.json``.

Order: wait for a quiet machine (1-minute load below ``--max-load``, up to ``--wait`` seconds; the
load is recorded either way), build or reuse the assets, measure the matmul peak for each rank
layout, train SFT, the reward model and PPO on 1 and 2 ranks, SFT of the ~50M model (on a GPU the
~1B one), TRL's RLOO on the same setup, our DPO and GRPO stages against TRL's ``DPOTrainer`` and
``GRPOTrainer`` (1 and 2 ranks), then the same-process comparisons (our decode loops against
``transformers.generate``, our training steps against a plain PyTorch loop), PPO's peak memory
with and without LoRA, and the operator. Each benchmark is a fresh process (2 ranks: ``mpirun``,
one thread per rank; 1 rank: two threads), so no run warms another's caches.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import assets, report
from bench.peak import measure_parallel
from bench.trainer import summarize_loop, summarize_ppo

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = (
    "OMP_NUM_THREADS",
    "DS_ACCELERATOR",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TORCH_EXTENSIONS_DIR",
    "TOKENIZERS_PARALLELISM",
    "RLHF_ACCELERATOR",
)

#: steps (PPO: iterations) measured and warm-up steps skipped, per mode
SETTINGS = {
    "full": {
        "sft": (30, 5),
        "reward": (30, 5),
        "ppo": (10, 2),
        "sft_big": (20, 4),
        "pairs": 2000,
        "peak_seconds": 3.0,
        "peak_sizes": (2048, 4096),
        "levels": "1,100,1000",
        "probes": 40,
        "trl": (10, 2),
        "dpo": (30, 5),
        "grpo": (10, 2),
        "repeats": 5,
        "memory_iterations": 3,
    },
    "quick": {
        "sft": (4, 1),
        "reward": (4, 1),
        "ppo": (2, 1),
        "sft_big": (0, 0),
        "pairs": 200,
        "peak_seconds": 0.2,
        "peak_sizes": (256, 512),
        "levels": "1",
        "probes": 3,
        "trl": (2, 1),
        "dpo": (3, 1),
        "grpo": (2, 1),
        "repeats": 1,
        "memory_iterations": 1,
    },
}


def base_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    env.setdefault("DS_ACCELERATOR", "cpu" if accelerator() == "cpu" else "cuda")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "PYTHONPATH",
    ):
        env.pop(key, None)
    return env


_ACCEL: list[str] = []


def accelerator() -> str:
    """The trainer's accelerator, as :func:`rlhf.engine.accelerator.detect` picks it."""
    if not _ACCEL:
        from rlhf.engine.accelerator import detect

        _ACCEL.append(detect().name)
    return _ACCEL[0]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "accelerator": accelerator(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in (
                "Model name",
                "CPU(s)",
                "Thread(s) per core",
                "Core(s) per socket",
                "Hypervisor vendor",
            ):
                info[key.strip()] = value.strip()
        flags = next(
            (line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []
        )
        info["bf16_isa"] = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    info["torch"] = torch.__version__
    if accelerator() == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def wait_for_quiet(max_load: float, seconds: float) -> dict[str, Any]:
    """Poll the 1-minute load until it is below ``max_load`` (at most ``seconds``)."""
    start = time.time()
    while True:
        load = os.getloadavg()[0]
        if load < max_load or time.time() - start >= seconds:
            return {"load_1min": load, "waited_seconds": round(time.time() - start), "quiet": load < max_load}
        print(
            f"[bench] 1-minute load {load:.2f} >= {max_load}: waiting for a quiet machine",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(20)


def mpirun(n: int, port: int) -> list[str]:
    if not shutil.which("mpirun"):
        raise RuntimeError("mpirun (OpenMPI) is not installed: `make system-deps`")
    cmd = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        str(n),
        "--mca",
        "btl",
        "self,vader",
        "--mca",
        "oob_tcp_if_include",
        "lo",
        "-x",
        f"MASTER_PORT={port}",
    ]
    for key in ENV_KEYS:
        if key in os.environ or key in ("OMP_NUM_THREADS", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR"):
            cmd += ["-x", key]
    return cmd


def launch_ranks(side: str, ranks: int, threads: int, inner: list[str], log: Path, what: str) -> None:
    """``python INNER`` on ``ranks`` ranks of ``threads`` threads each, output to ``log``: one plain
    process; more: ours under mpirun (as the operator launches the trainer), a peer's (``side``
    other than "ours") under torchrun, as its documentation does."""
    from rlhf.engine.distributed import free_port

    if ranks == 1:
        cmd = [sys.executable, *inner]
    elif side == "ours":
        cmd = [*mpirun(ranks, free_port()), sys.executable, *inner]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_port",
            str(free_port()),
            *inner,
        ]
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=base_env(threads), stdout=fh, stderr=subprocess.STDOUT, timeout=3600
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}); log {log}:\n{log.read_text()[-4000:]}")


def run_trainer(
    stage: str,
    ranks: int,
    threads: int,
    steps: int,
    assets_dir: Path,
    work: Path,
    model: str | None = None,
    extra: list[str] | None = None,
    log: Path | None = None,
) -> list[dict]:
    """One trainer benchmark in fresh process(es); returns every rank's result."""
    from rlhf.engine.distributed import free_port

    tag = f"{stage}{'-' + model if model else ''}-{ranks}r"
    out_dir = work / "runs" / tag
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    prefix = out_dir / "result_rank"
    args = [
        "-m",
        "bench.trainer",
        stage,
        "--assets",
        str(assets_dir),
        "--work",
        str(out_dir / "train"),
        "--out",
        str(prefix),
        "--steps",
        str(steps),
    ]
    if model:
        args += ["--model", model]
    args += list(extra or [])
    cmd = [*mpirun(ranks, free_port()), sys.executable, *args] if ranks > 1 else [sys.executable, *args]
    log = log or out_dir / "log.txt"
    print(f"[bench] {tag}: {' '.join(cmd[-len(args) - 1 :])}", file=sys.stderr, flush=True)
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=base_env(threads), stdout=fh, stderr=subprocess.STDOUT, timeout=3600
        )
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{tag} failed with exit code {proc.returncode}; log {log}:\n{tail}")
    return [json.loads(Path(f"{prefix}{r}.json").read_text()) for r in range(ranks)]


def run_module(module: str, args: list[str], threads: int) -> Any:
    """``python -m MODULE ARGS`` in a fresh process; its last stdout line, parsed as JSON."""
    print(f"[bench] {module} {' '.join(args)}", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=base_env(threads),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rank_layouts(requested: list[int]) -> list[tuple[int, int]]:
    """(ranks, threads per rank): 1 rank x 2 threads, 2 ranks x 1 thread on CPU; 1 per GPU."""
    if accelerator() == "cuda":
        import torch

        return [(r, 1) for r in requested if r <= torch.cuda.device_count()]
    cores = os.cpu_count() or 2
    return [(r, max(1, min(cores, 2) // r)) for r in requested]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings (smoke test), figures meaningless"
    )
    parser.add_argument(
        "--only",
        default="peak,trainer,trl,dpo,grpo,generation,step,memory,operator",
        help="comma-separated parts: peak, trainer (sft, reward, ppo, sft_big), trl, dpo, grpo, "
        "generation, step, memory, operator",
    )
    parser.add_argument("--stages", default="sft,reward,ppo,sft_big", help="trainer benchmarks to run")
    parser.add_argument("--ranks", default="1,2", help="rank counts for the trainer benchmarks")
    parser.add_argument("--levels", help="operator: live-run levels (default 1,100,1000)")
    parser.add_argument("--probes", type=int, help="operator: measured runs per level (default 40)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"), help="assets and training outputs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON results go")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra trainer config override for every trainer run (an experiment, e.g. "
        "deepspeed.dtype=fp32); recorded in the result",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per rank (default: the cores shared by the ranks); "
        "1 makes the CPU-time figures meaningful on a shared machine",
    )
    parser.add_argument("--max-load", type=float, default=0.8, help="wait for a 1-minute load below this")
    parser.add_argument(
        "--wait", type=float, default=600, help="seconds to wait for it at most (0: do not wait)"
    )
    args = parser.parse_args(argv)

    mode = SETTINGS["quick" if args.quick else "full"]
    parts = set(args.only.split(","))
    stages = args.stages.split(",")
    work = Path(args.work)
    result: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "overrides": list(args.set),
    }
    result["load_before"] = wait_for_quiet(args.max_load, args.wait)
    layouts = rank_layouts([int(r) for r in args.ranks.split(",")])
    if args.threads:
        layouts = [(r, args.threads) for r, _ in layouts]
    result["layouts"] = [{"ranks": r, "threads_per_rank": t} for r, t in layouts]
    t_start = time.time()

    if "peak" in parts:
        result["peak"] = {}
        for ranks, threads in layouts:
            print(f"[bench] matmul peak, {ranks} x {threads} thread(s)", file=sys.stderr, flush=True)
            result["peak"][str(ranks)] = measure_parallel(
                ranks, threads, mode["peak_seconds"], mode["peak_sizes"], env=base_env(threads)
            )

    if "trainer" in parts:
        big = "sft1b" if accelerator() == "cuda" else "sft50m"
        models = ("actor", "reward") if args.quick else ("actor", "reward", big)
        paths = assets.build(
            work / ("assets-quick" if args.quick else "assets"),
            n_pairs=mode["pairs"],
            models=models,
            shapes="nano" if args.quick else "issue",
        )
        result["data"] = assets.length_stats(paths["pairs"], paths["tokenizer"])
        trainer: dict[str, Any] = {}
        for ranks, threads in layouts:
            for stage in ("sft", "reward", "ppo"):
                if stage not in stages:
                    continue
                steps, warmup = mode[stage]
                ranks_out = run_trainer(
                    stage,
                    ranks,
                    threads,
                    steps,
                    work / ("assets-quick" if args.quick else "assets"),
                    work,
                    extra=args.set,
                )
                summary = (
                    summarize_ppo(ranks_out, warmup) if stage == "ppo" else summarize_loop(ranks_out, warmup)
                )
                summary["warmup"] = warmup
                trainer.setdefault(stage, {})[str(ranks)] = summary
        steps, warmup = mode["sft_big"]
        if "sft_big" in stages and steps:
            ranks_out = run_trainer(
                "sft", 1, layouts[0][1], steps, work / "assets", work, model=big, extra=args.set
            )
            trainer["sft_big"] = {big: {**summarize_loop(ranks_out, warmup), "warmup": warmup}}
        result["trainer"] = trainer

    assets_dir = work / ("assets-quick" if args.quick else "assets")
    no_trl = importlib.util.find_spec("trl") is None  # the trl, dpo and grpo parts run against TRL
    for part in sorted(parts & {"trl", "dpo", "grpo"} if no_trl else set()):
        print(
            f"[bench] trl is not installed (pip install -c constraints.txt '.[bench]'): no {part} part",
            file=sys.stderr,
            flush=True,
        )
    runnable = parts - {"trl", "dpo", "grpo"} if no_trl else parts
    if runnable & {"trl", "dpo", "grpo", "generation", "step", "memory"}:
        assets.build(
            assets_dir,
            n_pairs=mode["pairs"],
            shapes="nano" if args.quick else "issue",
            models=("actor", "reward") if args.quick else ("actor", "reward", "sft50m"),
        )
    threads = layouts[0][1]
    if "trl" in parts and not no_trl:
        steps, warmup = mode["trl"]
        result["trl"] = {
            "1": run_module(
                "bench.trl_peer",
                [
                    "--assets",
                    str(assets_dir),
                    "--work",
                    str(work / "trl"),
                    "--steps",
                    str(steps),
                    "--warmup",
                    str(warmup),
                ],
                threads,
            )
        }
    if "dpo" in parts and not no_trl:  # our DPO stage against TRL's DPOTrainer
        steps, warmup = mode["dpo"]
        result["dpo"] = run_module(
            "bench.dpo",
            [
                "--assets",
                str(assets_dir),
                "--work",
                str(work / "dpo"),
                "--steps",
                str(steps),
                "--warmup",
                str(warmup),
                "--pairs",
                "64" if args.quick else "512",
                "--ranks",
                args.ranks,
            ],
            threads,
        )
    if "grpo" in parts and not no_trl:  # our GRPO stage against TRL's GRPOTrainer
        steps, warmup = mode["grpo"]
        result["grpo"] = run_module(
            "bench.grpo",
            [
                "compare",
                "--assets",
                str(assets_dir),
                "--work",
                str(work / "grpo"),
                "--steps",
                str(steps),
                "--warmup",
                str(warmup),
                "--ranks",
                args.ranks,
            ],
            threads,
        )
    if "generation" in parts:
        result["generation"] = run_module(
            "bench.generation",
            [
                "--assets",
                str(assets_dir),
                "--repeats",
                str(mode["repeats"]),
                "--peak-seconds",
                str(mode["peak_seconds"]),
            ],
            threads,
        )
    if "step" in parts:
        result["step"] = {
            kind: run_module(
                "bench.step",
                [
                    kind,
                    "--assets",
                    str(assets_dir),
                    "--repeats",
                    str(mode["repeats"]),
                    "--peak-seconds",
                    str(mode["peak_seconds"]),
                ],
                threads,
            )
            for kind in ("sft", "ppo")
        }
    if "memory" in parts:
        result["memory"] = run_module(
            "bench.memory",
            [
                "--assets",
                str(assets_dir),
                "--work",
                str(work / "memory"),
                "--iterations",
                str(mode["memory_iterations"]),
                "--model",
                "actor" if args.quick else "sft50m",
            ],
            threads,
        )

    if "operator" in parts:
        levels = args.levels or mode["levels"]
        probes = args.probes or mode["probes"]
        print(f"[bench] operator: levels {levels}, {probes} probes each", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "bench.operator_bench", "--levels", levels, "--probes", str(probes)],
            cwd=ROOT,
            env=base_env(1),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"operator benchmark failed:\n{proc.stderr[-4000:]}")
        operator = json.loads(proc.stdout.strip().splitlines()[-1])
        for entry in operator["levels"].values():
            entry.pop("samples", None)
        result["operator"] = operator

    result["seconds"] = round(time.time() - t_start, 1)
    result["load_after"] = os.getloadavg()[0]
    result["table"] = report.rows(result)
    print(report.table(result["table"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["timestamp"].replace(":", "").replace("+0000", "Z")
    text = json.dumps(result, indent=1, default=str) + "\n"
    (out / f"{stamp}.json").write_text(text)
    (out / "latest.json").write_text(text)
    print(f"[bench] wrote {out / f'{stamp}.json'} and {out / 'latest.json'}", file=sys.stderr)
    return 0
