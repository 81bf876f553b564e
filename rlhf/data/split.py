"""Deterministic splitting of records across the three phases, and blending of sources.

Rules (DeepSpeed-Chat semantics, all seeded by the stage's ``seed``):

* **Phase split.** A source's ``n`` train records are permuted with ``numpy.random.RandomState(seed)``
  (the same permutation DeepSpeed-Chat's ``get_shuffle_idx`` draws) and cut into three contiguous
  chunks for SFT, reward model and PPO. Chunk ``i`` ends at ``round(n * (s_0 + .. + s_i) / sum(s))``,
  so the chunks are disjoint, cover every record, and a share of 0 gives an empty chunk.
  Records keep the permuted order inside a chunk.
* **Eval.** A source's own eval split is cut the same way (same shares, same seed). A source with
  no eval split first holds out ``k = round(n * eval_fraction)`` records (the last ``k`` of a seeded
  permutation) as its eval split; the remaining ``n - k`` train records are then phase-split.
* **SFT-only sources** are not split: all their train (eval) records go to phase 0's train (eval).
* **Blending.** A phase's train (eval) data is the concatenation, in config order, of its chunk of
  every source (then, for phase 0, every SFT-only source whole), shuffled with the seed.

Because the split depends only on the records, the shares and the seed, the SFT, reward and PPO
stages of one run agree on it and never train on each other's data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
NUM_PHASES = 3


def shuffle_indices(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` (DeepSpeed-Chat's ``get_shuffle_idx``)."""
    idx = np.arange(n, dtype=np.uint32 if n < np.iinfo(np.uint32).max - 1 else np.int64)
    np.random.RandomState(seed=seed).shuffle(idx)
    return idx.tolist()


def split_bounds(n: int, shares: Sequence[float]) -> list[int]:
    """Chunk boundaries ``[0, b_1, .., n]`` proportional to ``shares`` (a 0 share gives an empty chunk)."""
    total = float(sum(shares))
    if total <= 0 or any(s < 0 for s in shares):
        raise ValueError(f"shares must be >= 0 with a positive sum, got {list(shares)}")
    bounds, acc = [0], 0.0
    for share in shares:
        acc += share
        bounds.append(int(round(n * acc / total)))
    bounds[-1] = n
    return bounds


def split_records(records: Sequence[T], shares: Sequence[float], seed: int) -> list[list[T]]:
    """Permute ``records`` with ``seed`` and cut them into ``len(shares)`` disjoint contiguous chunks."""
    order = shuffle_indices(len(records), seed)
    bounds = split_bounds(len(records), shares)
    return [[records[i] for i in order[lo:hi]] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def hold_out(records: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, eval): the last ``round(n * fraction)`` records of a seeded permutation are eval."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
    order = shuffle_indices(len(records), seed)
    k = int(round(len(records) * fraction))
    cut = len(records) - k
    return [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]


def source_parts(
    train: Sequence[T], eval: Sequence[T] | None, shares: Sequence[float], eval_fraction: float, seed: int
) -> tuple[list[list[T]], list[list[T]]]:
    """A preference source's (train chunks, eval chunks), one chunk per phase."""
    if eval is None:
        train, eval = hold_out(train, eval_fraction, seed)
    return split_records(train, shares, seed), split_records(eval, shares, seed)


def sft_only_parts(
    train: Sequence[T], eval: Sequence[T] | None, eval_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """An SFT-only source's (train, eval), the eval held out when the source has none."""
    if eval is None:
        return hold_out(train, eval_fraction, seed)
    return list(train), list(eval)


def blend(parts: Sequence[Sequence[T]], seed: int) -> list[T]:
    """Concatenate ``parts`` in order, then shuffle with ``seed``."""
    joined = [x for part in parts for x in part]
    return [joined[i] for i in shuffle_indices(len(joined), seed)]
