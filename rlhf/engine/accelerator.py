"""Which device family we run on: cuda/nccl, Habana hpu/hccl, or cpu/gloo, and its quirks."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal, cast

import torch

Name = Literal["cuda", "hpu", "cpu"]


@dataclass(frozen=True)
class Accelerator:
    name: Name

    @property
    def backend(self) -> str:
        return {"cuda": "nccl", "hpu": "hccl", "cpu": "gloo"}[self.name]

    @property
    def static_shapes(self) -> bool:
        """Gaudi compiles a graph per shape: pad every batch to the maximum length."""
        return self.name == "hpu"

    @property
    def needs_fp32_loss(self) -> bool:
        """Habana's recipes train in bf16 but compute the loss in fp32."""
        return self.name == "hpu"

    def device(self, local_rank: int) -> torch.device:
        if self.name == "cpu":
            return torch.device("cpu")
        return torch.device(self.name, local_rank)

    def set_device(self, local_rank: int) -> None:
        if self.name == "cuda":
            torch.cuda.set_device(local_rank)

    def mark_step(self) -> None:
        """Flush the lazy-mode graph on Gaudi; nothing elsewhere."""
        if self.name == "hpu":
            # Gaudi's PyTorch bridge: installed on Gaudi images only, without type information.
            import habana_frameworks.torch.core as htcore  # type: ignore[import-not-found]

            htcore.mark_step()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self.name == "cuda":
            torch.cuda.manual_seed_all(seed)


def detect() -> Accelerator:
    """RLHF_ACCELERATOR if set, else hpu when habana_frameworks is installed, else cuda, else cpu."""
    forced = os.environ.get("RLHF_ACCELERATOR")
    if forced:
        if forced not in ("cuda", "hpu", "cpu"):
            raise ValueError(f"RLHF_ACCELERATOR must be cuda, hpu or cpu, got {forced!r}")
        return Accelerator(cast(Name, forced))
    if importlib.util.find_spec("habana_frameworks") is not None:
        import habana_frameworks.torch.core  # noqa: F401  (registers the hpu device)

        return Accelerator("hpu")
    if torch.cuda.is_available():
        return Accelerator("cuda")
    return Accelerator("cpu")
