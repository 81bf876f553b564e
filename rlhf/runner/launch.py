"""The command line and environment of a stage: the trainer entrypoint the cluster runs, started locally."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from rlhf.api import TRAINER_ACCELERATORS
from rlhf.api.environment import stage_process_env
from rlhf.engine.distributed import available_cpus, torch_env
from rlhf.runner.plan import Machine, StagePlan

#: Variables of an enclosing launcher that must not leak into a stage's own process group.
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
)


def train_command(plan: StagePlan, config_file: Path) -> list[str]:
    """``python -m rlhf train STAGE --config FILE``; several processes: under ``torchrun --standalone``."""
    if plan.processes == 1:
        return [sys.executable, "-m", "rlhf", "train", plan.stage, "--config", str(config_file)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(plan.processes),
        "-m",
        "rlhf.cli",
        "train",
        plan.stage,
        "--config",
        str(config_file),
    ]


def stage_env(plan: StagePlan, accelerator: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage's processes: threads, accelerator, devices, offline Hub, and for a
    single process the torch.distributed variables of a world of one."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in LAUNCHER_VARS}
    # The API's table, as the operator gives it to the pods; what the user set wins.
    for key, value in stage_process_env(accelerator).items():
        env.setdefault(key, value)
    env.update(
        OMP_NUM_THREADS=str(plan.threads),
        RLHF_ACCELERATOR=TRAINER_ACCELERATORS[accelerator],
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    if plan.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(plan.devices)
    if plan.processes == 1:  # a world of one on a free port; torchrun sets these for several
        env.update(torch_env(env))
    return env


def detect_machine(accelerator: str, environ: Mapping[str, str] | None = None) -> Machine:
    """This machine's cores (those this process may use) and, for nvidia, its visible CUDA devices."""
    environ = os.environ if environ is None else environ
    cpus = available_cpus()
    gpus: tuple[str, ...] = ()
    if accelerator == "nvidia":
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = tuple(d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1")
        elif shutil.which("nvidia-smi"):
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
            gpus = tuple(str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU "))
    return Machine(cpus, gpus)
