"""Platform profiles: what a worker pod needs on NVIDIA GPUs, Habana Gaudi or plain CPUs.

One RLHFRun spec renders onto any of them; only this table differs. Values here are ours (not
user input), the templates still emit them through ``tojson``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.api import DEVICE_RESOURCES, TRAINER_ACCELERATORS


@dataclass(frozen=True)
class Profile:
    """How the pods of one accelerator family look."""

    accelerator: str
    #: Extended resource per device (``nvidia.com/gpu``, ``habana.ai/gaudi``), None on CPU.
    device_resource: str | None
    #: A memory-backed /dev/shm (NCCL and DataLoader workers need more than the default 64Mi).
    shm_volume: bool = False
    #: Gaudi: the host's IPC namespace, SYS_NICE and 2Mi hugepages for the HCCL/driver buffers.
    #: hostIPC and SYS_NICE go beyond PodSecurity's restricted and baseline levels: they are rendered
    #: only on a pool with ``privileged: true`` (:data:`rlhf.api.pools.PRIVILEGED_NEEDS`).
    host_ipc: bool = False
    add_capabilities: tuple[str, ...] = ()
    #: Default ``hugepages-2Mi`` per worker pod (Habana's MPIJob examples); the pool may override.
    hugepages: str | None = None

    @property
    def privileged(self) -> bool:
        """Whether the workers need a pool that allows privileged pods (PodSecurity level privileged)."""
        return self.host_ipc or bool(self.add_capabilities)

    @property
    def trainer_accelerator(self) -> str:
        """Value of RLHF_ACCELERATOR: cuda, hpu or cpu."""
        return TRAINER_ACCELERATORS[self.accelerator]


PROFILES: dict[str, Profile] = {
    "nvidia": Profile(
        "nvidia",
        DEVICE_RESOURCES["nvidia"],
        shm_volume=True,
    ),
    "habana": Profile(
        "habana",
        DEVICE_RESOURCES["habana"],
        host_ipc=True,
        add_capabilities=("SYS_NICE",),
        hugepages="95000Mi",
    ),
    "cpu": Profile("cpu", DEVICE_RESOURCES["cpu"], shm_volume=True),
}


def profile(accelerator: str) -> Profile:
    """The profile of ``accelerator`` (nvidia, habana or cpu)."""
    try:
        return PROFILES[accelerator]
    except KeyError:
        raise KeyError(
            f"unknown accelerator {accelerator!r}; expected one of {', '.join(PROFILES)}"
        ) from None
