"""Model-free statistics of generated answers (collapse shows up here before anywhere else)."""

from __future__ import annotations

from collections.abc import Sequence


def distinct_n(answers: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all answers / all n-grams (whitespace words); 0 when there are none."""
    grams = [tuple(ws[i : i + n]) for ws in (a.split() for a in answers) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_words(answers: Sequence[str]) -> float:
    """Mean answer length in whitespace words."""
    return sum(len(a.split()) for a in answers) / len(answers) if answers else 0.0


def diversity_stats(answers: Sequence[str]) -> dict[str, float]:
    """The model-free statistics every evaluation reports under these names (PPO's baseline and
    final evaluation, ``rlhf prompt-eval``, the synthetic task's checker): distinct-2 and the mean
    length in words; the no-reward-hacking ratios compare them."""
    return {"distinct_2": distinct_n(answers, 2), "mean_words": mean_words(answers)}
