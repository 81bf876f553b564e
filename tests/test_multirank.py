"""Two-rank training through every launcher we support, ZeRO 0-3, LoRA, and kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.engine.distributed import free_port

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts" / "train_and_fingerprint.py"
ENV_KEYS = (
    "OMP_NUM_THREADS",
    "DS_ACCELERATOR",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TORCH_EXTENSIONS_DIR",
    "TOKENIZERS_PARALLELISM",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # The package is installed (editable); the repository root must not go on PYTHONPATH, where
    # its operator/ directory would shadow the standard library's `operator` module.
    env.pop("PYTHONPATH", None)
    return env


def mpirun(n: int) -> list[str]:
    if not shutil.which("mpirun"):
        pytest.skip("OpenMPI's mpirun is not installed (make setup installs openmpi-bin)")
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
        f"MASTER_PORT={free_port()}",
    ]
    for key in ENV_KEYS:
        cmd += ["-x", key]
    return cmd


LAUNCHERS = {
    "mpirun": lambda: [*mpirun(2), sys.executable],
    "torchrun": lambda: [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ],
    "deepspeed": lambda: [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
    ],
}


def run_two_ranks(
    launcher: str, stage: str, overrides: list[str], tmp: Path, timeout: int = 600
) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    prefix = tmp / "fingerprint_rank"
    cmd = [*LAUNCHERS[launcher](), str(SCRIPT), stage, str(prefix), *overrides]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{launcher} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((tmp / f"fingerprint_rank{r}.json").read_text()) for r in range(2)]


def assert_ranks_agree(results: list[dict]) -> None:
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 for r in results)
    a, b = results[0]["params"], results[1]["params"]
    assert a.keys() == b.keys() and a
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, f"parameters differ across ranks: {differ[:5]}"


@pytest.mark.parametrize(
    "launcher, stage, zero, extra",
    [
        ("mpirun", "sft", 2, []),
        (
            "mpirun",
            "sft",
            3,
            ["deepspeed.stage3_max_live_parameters=0", "deepspeed.stage3_param_persistence_threshold=0"],
        ),
        ("mpirun", "reward", 3, []),
        ("torchrun", "reward", 2, ["lora.dim=4"]),
        ("torchrun", "sft", 2, ["deepspeed.offload=true", "deepspeed.dtype=bf16"]),
        ("deepspeed", "sft", 1, ["lora.dim=4", "lora.only_optimize_lora=true"]),
    ],
)
def test_two_ranks(tiny, tmp_path, launcher, stage, zero, extra):
    out = tmp_path / "out"
    overrides = tiny.sft_overrides if stage == "sft" else tiny.reward_overrides
    args = overrides(
        out, "optim.max_steps=8", f"deepspeed.zero_stage={zero}", "deepspeed.dist_timeout_seconds=120", *extra
    )
    results = run_two_ranks(launcher, stage, args, tmp_path)
    assert_ranks_agree(results)
    summary = results[0]["summary"]
    assert summary["world_size"] == 2 and summary["global_step"] == 8
    assert summary["train_samples"] == 8 * 8 * 2
    # the exported model holds the full (gathered, merged) weights
    weights = load_file(out / "model" / "model.safetensors")
    assert not any("lora" in k for k in weights)
    assert all(t.numel() > 0 for t in weights.values())


def test_zero3_export_matches_zero2(tiny, tmp_path):
    """The same 2-rank training under ZeRO-2 and ZeRO-3 saves the same model."""
    saved = {}
    for zero in (2, 3):
        out = tmp_path / f"z{zero}"
        args = tiny.sft_overrides(out, "optim.max_steps=4", f"deepspeed.zero_stage={zero}")
        run_two_ranks("mpirun", "sft", args, tmp_path / f"r{zero}")
        saved[zero] = load_file(out / "model" / "model.safetensors")
    assert saved[2].keys() == saved[3].keys()
    for key in saved[2]:
        torch.testing.assert_close(saved[2][key], saved[3][key], atol=1e-5, rtol=1e-4)


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (OpenMPI starts ranks in their own groups)."""
    import psutil

    parent = psutil.Process(pid)
    procs = [*parent.children(recursive=True), parent]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def kill_when_checkpointed(
    cmd: list[str], latest: Path, not_yet: tuple[str, ...], timeout: float = 300
) -> None:
    """Start ``cmd`` and SIGKILL the whole job as soon as the checkpoint ``latest`` names a tag
    other than ``not_yet``; fails if the job ends first."""
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline, killed = time.time() + timeout, False
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() not in ("", *not_yet):
            kill_tree(proc.pid)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed, "the job finished before it could be killed"


def assert_same_saved_model(a: Path, b: Path) -> None:
    """The models two runs saved (``<out>/model``) are bit-identical."""
    wa, wb = (load_file(out / "model" / "model.safetensors") for out in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0, msg=f"{key} differs after resume")


def _train_cmd(overrides: list[str]) -> list[str]:
    return [*mpirun(2), sys.executable, "-m", "rlhf", "train", "sft", *overrides]


def test_kill_and_resume_ends_where_an_uninterrupted_run_would(tiny, tmp_path):
    common = [
        "optim.max_steps=30",
        "optim.epochs=3",
        "optim.gradient_accumulation_steps=2",
        "checkpoint.save_interval=4",
        "deepspeed.zero_stage=2",
        f"model.name_or_path={tiny.reward}",
        "optim.lr_scheduler=cosine",
        "optim.warmup_steps=3",
        "model.dropout=0.1",
    ]  # dropout: the RNG state must be restored too
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(
        _train_cmd(tiny.sft_overrides(straight, *common)),
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )

    # Start again, kill the whole job (SIGKILL) once a few checkpoints exist, then rerun it.
    kill_when_checkpointed(
        _train_cmd(tiny.sft_overrides(resumed, *common)), resumed / "checkpoints" / "latest", ("step-30",)
    )
    assert not (resumed / "summary.json").exists()

    subprocess.run(
        _train_cmd(tiny.sft_overrides(resumed, *common)),
        env=_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    summary = json.loads((resumed / "summary.json").read_text())
    assert 0 < summary["resumed_from_step"] < 30 and summary["global_step"] == 30

    assert_same_saved_model(straight, resumed)
    # the metrics history is continuous and equal to the uninterrupted one
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [(r["step"], r["split"], r.get("loss")) for r in rows(straight)] == [
        (r["step"], r["split"], r.get("loss")) for r in rows(resumed)
    ]
