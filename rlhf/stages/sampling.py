"""Orders of training samples: skipping what a resumed job already consumed, and grouping
samples of similar length into the same batch so batches carry less padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Batches sorted together per group (transformers' LengthGroupedSampler uses the same mega-batch).
LENGTH_GROUP_BATCHES = 50


class SkipSampler(Sampler[int]):
    """The first ``skip`` indices of ``sampler`` dropped (resuming inside an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        # torch's Sampler declares no __len__; every sampler wrapped here (Distributed, Random, ours) has one.
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def group_by_length(order: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """``order`` (already shuffled) regrouped so each batch holds samples of similar length.

    The order is cut into groups of :data:`LENGTH_GROUP_BATCHES` batches; each group is sorted by
    length and its full batches are put in a seeded random order (a partial batch, only possible
    in the last group, stays last so batch boundaries do not move). Deterministic for a seed.
    """
    g = torch.Generator().manual_seed(seed)
    group = LENGTH_GROUP_BATCHES * batch_size
    out: list[int] = []
    for start in range(0, len(order), group):
        members = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches = [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
        tail = [batches.pop()] if len(batches[-1]) < batch_size else []
        for b in torch.randperm(len(batches), generator=g).tolist():
            out.extend(batches[b])
        for batch in tail:
            out.extend(batch)
    return out


def column_lengths(dataset, columns: Sequence[str]) -> list[int]:
    """Each sample's length in tokens: the longest of its token-list ``columns``."""
    per_column = [[len(ids) for ids in dataset[c]] for c in columns]
    return [max(lengths) for lengths in zip(*per_column, strict=True)]


class LengthGroupedSampler(Sampler[int]):
    """``sampler``'s indices (one rank's shard of an epoch, a ``DistributedSampler``) regrouped by
    :func:`group_by_length`, seeded by ``seed`` and the sampler's epoch."""

    def __init__(self, sampler: Sampler[int], lengths: Sequence[int], batch_size: int, seed: int):
        self.sampler, self.lengths, self.batch_size, self.seed = sampler, lengths, batch_size, seed

    def __iter__(self) -> Iterator[int]:
        seed = self.seed * 1_000_003 + getattr(self.sampler, "epoch", 0)
        return iter(group_by_length(list(self.sampler), self.lengths, self.batch_size, seed))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]  # a sized sampler, as in SkipSampler.__len__
