"""Token lists to tensors: the one padding rule of every batch (stages, scoring, tools)."""

from __future__ import annotations

import torch


def pad_rows(rows: list[list[int]], pad_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to ``length``: (input_ids, attention_mask)."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
