"""This machine's matmul peak: ``torch.matmul`` of large square matrices, bf16 and fp32.

Run as a process of its own with the thread count under test (``OMP_NUM_THREADS``), or several
at once (one per rank) by :func:`measure_parallel`, whose figure is the sum of theirs: that is the
peak a 2-rank job with one thread each can reach while both ranks compute.

``python -m bench.peak [--seconds S] [--sizes 2048,4096]`` prints one JSON line:
``{"threads": t, "device": "cpu", "bf16": GFLOP/s, "fp32": GFLOP/s, "detail": {...}}`` where each
figure is the best size's. On CUDA the same is measured on the GPU (synchronised).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    dtype_name: str, n: int, seconds: float, device_name: str = "cpu", clock: str = "wall"
) -> float:
    """Sustained GFLOP/s of ``n x n @ n x n`` in ``dtype_name`` over about ``seconds`` (after warm-up).

    ``clock="cpu"`` (CPU only): GFLOP per second of process CPU time (``time.process_time``), which
    with one thread leaves out the time other processes held the core on a shared machine; the
    loop still runs for about ``seconds`` of wall time."""
    import torch

    device = torch.device(device_name)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    _sync(device)
    reps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        torch.matmul(a, b, out=out)
        reps += 1
        if reps % 4 == 0 or device.type == "cpu":
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    if clock == "cpu" and device.type == "cpu":
        elapsed = time.process_time() - cpu_start
    return 2.0 * n**3 * reps / elapsed / 1e9


def measure(seconds: float = 2.0, sizes: tuple[int, ...] = (2048, 4096), cpu_time: bool = False) -> dict:
    """Peak of this process (its thread count), best over ``sizes``, for bf16 and fp32; with
    ``cpu_time`` (CPU only) also per second of process CPU time (``cpu_bf16``, ``cpu_fp32``)."""
    import torch

    device = (
        "cuda"
        if torch.cuda.is_available() and os.environ.get("RLHF_ACCELERATOR", "cuda") == "cuda"
        else "cpu"
    )
    if device == "cuda":
        sizes = tuple(max(s, 8192) for s in sizes)
    detail: dict[str, dict[str, float]] = {}
    for dtype in ("bf16", "fp32"):
        detail[dtype] = {str(n): round(matmul_gflops(dtype, n, seconds, device), 1) for n in sizes}
    out = {
        "threads": torch.get_num_threads(),
        "device": device,
        "bf16": max(detail["bf16"].values()),
        "fp32": max(detail["fp32"].values()),
        "detail": detail,
    }
    if cpu_time and device == "cpu":
        for dtype in ("bf16", "fp32"):
            cpu = {str(n): round(matmul_gflops(dtype, n, seconds, device, clock="cpu"), 1) for n in sizes}
            detail[f"cpu_{dtype}"] = cpu
            out[f"cpu_{dtype}"] = max(cpu.values())
    return out


def measure_parallel(
    procs: int,
    threads: int,
    seconds: float = 2.0,
    sizes: tuple[int, ...] = (2048, 4096),
    env: dict[str, str] | None = None,
) -> dict:
    """Run ``procs`` measuring processes at once, ``threads`` threads each; the figures are summed."""
    env = {**(env or os.environ), "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    cmd = [
        sys.executable,
        "-m",
        "bench.peak",
        "--seconds",
        str(seconds),
        "--sizes",
        ",".join(map(str, sizes)),
    ]
    running = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    results = []
    for proc in running:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"bench.peak failed ({proc.returncode}): {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "procs": procs,
        "threads_per_proc": threads,
        "device": results[0]["device"],
        "bf16": round(sum(r["bf16"] for r in results), 1),
        "fp32": round(sum(r["fp32"] for r in results), 1),
        "per_proc": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", default="2048,4096")
    parser.add_argument(
        "--cpu-time", action="store_true", help="also GFLOP per second of process CPU time (1 thread)"
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(json.dumps(measure(args.seconds, sizes, args.cpu_time)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
