"""Rows of right-packed sequences (PPO's :class:`~rlhf.stages.rollout.Experience`, GRPO's
:class:`~rlhf.stages.grpo_rollout.Rollout`): a dataclass of tensors, one row per sequence, that
mini-batches select rows of and that generation batches of different lengths concatenate into."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, TypeVar

import torch

P = TypeVar("P", bound="Packed")


class Packed:
    """A dataclass mixin: ``sequences`` is ``[N, T]``; 2-D fields are ``[N, T]`` or ``[N, T-1]``
    (padded at the right), others per row; a field may be None (then in every part alike)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on the subclass
    sequences: torch.Tensor

    def __len__(self) -> int:
        return self.sequences.size(0)

    def select(self: P, index: torch.Tensor | slice) -> P:
        """The rows at ``index`` (a mini-batch)."""
        return type(self)(
            **{f.name: None if (t := getattr(self, f.name)) is None else t[index] for f in fields(self)}
        )

    @classmethod
    def cat(cls: type[P], parts: list[P], pad_id: int) -> P:
        """Concatenate batches of different lengths (right-padding the shorter ones)."""
        width = max(p.sequences.size(1) for p in parts)
        out: dict[str, Any] = {}
        for f in fields(cls):
            tensors = [getattr(p, f.name) for p in parts]
            if any(t is None for t in tensors):
                out[f.name] = None
                continue
            if tensors[0].dim() == 2:  # [N, T] or [N, T-1]: pad each to the widest part's width
                fill = pad_id if f.name == "sequences" else 0
                tensors = [
                    torch.nn.functional.pad(t, (0, width - p.sequences.size(1)), value=fill)
                    for p, t in zip(parts, tensors, strict=True)
                ]
            out[f.name] = torch.cat(tensors)
        return cls(**out)
