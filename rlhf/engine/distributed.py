"""Process-group environment: one mapping from any launcher to torch.distributed's variables.

``torch.distributed`` (and DeepSpeed) read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. ``deepspeed`` and ``torchrun`` set them; OpenMPI's ``mpirun`` sets OMPI_COMM_WORLD_*
instead; a bare ``python`` sets nothing. :func:`torch_env` fills them in for all three cases.
This module does not import torch, so the container entrypoint can use it too.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MASTER_PORT = "29500"

# (torch variable, OpenMPI variable, fallback for a single process)
_MPI_VARS = (
    ("RANK", "OMPI_COMM_WORLD_RANK", "0"),
    ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "1"),
    ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "0"),
    ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def available_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (v2 or v1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    root = Path(cgroup_root)
    quota = None
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            if limit_us > 0 and period_us > 0:
                quota = limit_us / period_us
        except (OSError, ValueError):
            pass
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_env(env: Mapping[str, str], master_addr: str | None = None) -> dict[str, str]:
    """The torch.distributed variables missing from ``env``, derived from the launcher's.

    Variables already present win (``deepspeed``/``torchrun``). Under OpenMPI they come from
    OMPI_COMM_WORLD_*; ``master_addr`` (e.g. the first host of the MPI hostfile) defaults to
    127.0.0.1, which is right for one machine. A lone process gets rank 0 of 1 on a free port.
    """
    out: dict[str, str] = {}
    under_mpi = "OMPI_COMM_WORLD_RANK" in env
    for torch_var, mpi_var, single in _MPI_VARS:
        if torch_var not in env:
            out[torch_var] = env.get(mpi_var, single) if under_mpi else single
    if "MASTER_ADDR" not in env:
        out["MASTER_ADDR"] = master_addr or "127.0.0.1"
    if "MASTER_PORT" not in env:
        single_process = not under_mpi and "WORLD_SIZE" not in env
        out["MASTER_PORT"] = str(free_port()) if single_process else DEFAULT_MASTER_PORT
    return out


def setup_env(environ: MutableMapping[str, str] | None = None) -> DistInfo:
    """Fill in os.environ (or ``environ``) for torch.distributed and return this process's place."""
    env = os.environ if environ is None else environ
    env.update(torch_env(env))
    return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
