"""The environment of one training rank: OpenMPI's variables -> torch.distributed's, plus accelerator
defaults.

``mpirun`` starts ``rlhf-entrypoint stage`` once per rank with OMPI_COMM_WORLD_* set. This module
turns that into what torch.distributed and DeepSpeed read (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; the mapping itself is :func:`rlhf.engine.distributed.torch_env`), finds
the master host, and adds per-accelerator defaults. Nothing here imports torch; every default
yields to a variable that is already set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from rlhf.api.environment import ACCELERATOR_ENV
from rlhf.engine.distributed import DEFAULT_MASTER_PORT, available_cpus, torch_env

#: Where the MPI operator mounts the hostfile in the launcher pod (it is not mounted in workers).
DEFAULT_HOSTFILE = "/etc/mpi/hostfile"
#: The accelerators the trainer knows (values of RLHF_ACCELERATOR, see rlhf.api.TRAINER_ACCELERATORS).
ACCELERATORS = tuple(ACCELERATOR_ENV)

_HOST = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")


class EnvError(ValueError):
    """The rank's environment is inconsistent; the message names the variable or file at fault."""


def parse_hostfile(text: str, source: str = "hostfile") -> list[str]:
    """Host names of an MPI hostfile, in order.

    Accepts OpenMPI's ``host slots=N [max_slots=M]`` lines (what the MPI operator writes),
    Intel/MPICH ``host:N`` lines, blank lines and ``#`` comments.
    """
    hosts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host = line.split()[0]
        if ":" in host and not host.startswith("["):  # host:slots (Intel/MPICH); leave [IPv6] alone
            host = host.rsplit(":", 1)[0]
        if not _HOST.match(host) or "=" in host:
            raise EnvError(f"{source}:{number}: cannot read a host name from {raw.strip()!r}")
        hosts.append(host)
    return hosts


def hostfile_path(environ: Mapping[str, str]) -> str:
    """RLHF_HOSTFILE, else OpenMPI's default hostfile as the MPI operator sets it, else /etc/mpi/hostfile."""
    return environ.get("RLHF_HOSTFILE") or environ.get("OMPI_MCA_orte_default_hostfile") or DEFAULT_HOSTFILE


def read_hosts(path: str | Path) -> list[str]:
    """The hosts of the hostfile at ``path`` ([] when it does not exist)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EnvError(f"hostfile {path} cannot be read: {e}") from None
    return parse_hostfile(text, str(path))


def master_addr(environ: Mapping[str, str]) -> str | None:
    """Where rank 0 runs: RLHF_MASTER_ADDR, else the first host of the hostfile, else None.

    With mpirun's default by-slot mapping, rank 0 lands on the first host of the hostfile.
    """
    explicit = environ.get("RLHF_MASTER_ADDR", "").strip()
    if explicit:
        return explicit
    hosts = read_hosts(hostfile_path(environ))
    return hosts[0] if hosts else None


def accelerator_env(accelerator: str | None, local_ranks: int, cpus: int) -> dict[str, str]:
    """Defaults for one rank on ``accelerator`` (cuda, hpu, cpu; None: only the thread count).

    Every rank gets an equal share of the container's CPUs as OMP_NUM_THREADS (torch would
    otherwise start one thread per core in every rank), then the API's table of the
    accelerator's defaults (:data:`rlhf.api.environment.ACCELERATOR_ENV`, which the operator also
    puts in the pods); HCCL takes MASTER_ADDR/MASTER_PORT like NCCL does.
    """
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise EnvError(f"RLHF_ACCELERATOR must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    env = {"OMP_NUM_THREADS": str(max(1, cpus // max(1, local_ranks)))}
    if accelerator is not None:
        env.update(ACCELERATOR_ENV[accelerator])
    return env


def stage_env(environ: Mapping[str, str], cpus: int | None = None) -> dict[str, str]:
    """The variables to add to ``environ`` before the trainer starts (existing ones are kept).

    Under mpirun: RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE from OMPI_COMM_WORLD_*, MASTER_ADDR
    from :func:`master_addr` (127.0.0.1 when unknown, right for one machine), MASTER_PORT from
    RLHF_MASTER_PORT (default 29500). Then :func:`accelerator_env` for RLHF_ACCELERATOR.
    """
    base = dict(environ)
    port = base.get("RLHF_MASTER_PORT", "").strip() or DEFAULT_MASTER_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise EnvError(f"RLHF_MASTER_PORT must be a TCP port number, got {port!r}")
    if "OMPI_COMM_WORLD_RANK" in base and "MASTER_PORT" not in base:
        base["MASTER_PORT"] = port
    added = {k: v for k, v in base.items() if k not in environ}
    added.update(torch_env(base, master_addr=master_addr(environ)))
    merged = {**base, **added}
    accelerator = environ.get("RLHF_ACCELERATOR", "").strip() or None
    local_ranks = int(merged.get("LOCAL_WORLD_SIZE", "1"))
    cpus = available_cpus() if cpus is None else cpus
    for key, value in accelerator_env(accelerator, local_ranks, cpus).items():
        if key not in merged:
            added[key] = value
    return added
