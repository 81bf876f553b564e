"""The environment of a stage's processes, by accelerator: one table for every side that starts
them — the operator (the pods' env, forwarded to every rank by ``mpirun -x``), the trainer image's
entrypoint (defaults for a rank started some other way) and ``rlhf run``. No torch."""

from __future__ import annotations

from rlhf.api.run import TRAINER_ACCELERATORS

#: Every stage process, whatever the accelerator: the stages run offline from the run's storage
#: (``rlhf prepare`` fetched everything), and tokenizers do not fork thread pools in each rank.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

#: Per trainer accelerator (the value of RLHF_ACCELERATOR): DeepSpeed's accelerator, and the
#: collective library's defaults. CUDA: collectives fail instead of hanging, NCCL warnings logged,
#: devices numbered as nvidia-smi does. Gaudi: lazy mode (the trainer marks steps), Habana's logs
#: in a writable place.
ACCELERATOR_ENV: dict[str, dict[str, str]] = {
    "cuda": {
        "DS_ACCELERATOR": "cuda",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    },
    "hpu": {"DS_ACCELERATOR": "hpu", "PT_HPU_LAZY_MODE": "1", "HABANA_LOGS": "/tmp/habana_logs"},
    "cpu": {"DS_ACCELERATOR": "cpu"},
}
assert set(ACCELERATOR_ENV) == set(TRAINER_ACCELERATORS.values())


def stage_process_env(accelerator: str) -> dict[str, str]:
    """The variables every process of a stage on ``accelerator`` (nvidia, habana, cpu) gets."""
    trainer = TRAINER_ACCELERATORS[accelerator]
    return {"RLHF_ACCELERATOR": trainer, **OFFLINE_ENV, **ACCELERATOR_ENV[trainer]}
