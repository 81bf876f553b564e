"""The benchmark's data and models, built offline and cached: the issue's "tiny" setup.

* ``data/pairs.jsonl``: 2000 synthetic preference pairs whose prompts are exactly 9-58 tokens
  (uniform) and whose answers are 10-59 tokens (uniform), so that prompt + answer + end-of-text is
  about 69 tokens on average: 54 % of a 128-token row, the real-token share DeepSpeed-Chat's step 1
  saw on the reference data. The texts are random words from a fixed list of pseudo-words; only
  their lengths matter here.
* ``actor``: OPT, 6 layers, hidden 384, 6 heads, ffn 1536, vocabulary 1024 (about 11.2M parameters);
* ``reward``: OPT, 4 layers, hidden 256, 4 heads, ffn 1024 (about 3.6M parameters);
* ``sft50m`` (on request): OPT, 7 layers, hidden 768, 12 heads, ffn 3072 (about 50M parameters);
* ``sft1b`` (on request, for GPUs): OPT, 24 layers, hidden 2048, 16 heads, ffn 8192 (about 1.2B);
* ``rm350m`` (on request, for GPUs): OPT, 24 layers, hidden 1024, 16 heads, ffn 4096 (about 300M),
  the critic and reward model of the GPU PPO benchmark (DeepSpeed-Chat's OPT-1.3B + OPT-350m pair).

``prompt_tokens``/``answer_tokens`` change the length ranges (the GPU benchmark's longer rows).

Everything is keyed by :data:`VERSION` and the arguments: a rerun reuses what it built.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VERSION = 1
WORDS_SEED = 7

SHAPES: dict[str, dict[str, int]] = {
    "actor": {"n_layers": 6, "hidden": 384, "heads": 6, "ffn": 1536},
    "reward": {"n_layers": 4, "hidden": 256, "heads": 4, "ffn": 1024},
    "sft50m": {"n_layers": 7, "hidden": 768, "heads": 12, "ffn": 3072},
    "sft1b": {"n_layers": 24, "hidden": 2048, "heads": 16, "ffn": 8192},
    "rm350m": {"n_layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096},
}
NANO = {"n_layers": 2, "hidden": 64, "heads": 2, "ffn": 256}
SHAPES_SEEDS = {"actor": 0, "reward": 1, "sft50m": 2}
PROMPT_TOKENS = (9, 58)
ANSWER_TOKENS = (10, 59)
CLOSING = " Cheers!"


def _words(n: int = 600) -> list[str]:
    """``n`` distinct pronounceable pseudo-words (most of them one or two BPE tokens)."""
    rng = random.Random(WORDS_SEED)
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        syllables = rng.randint(1, 4)
        out.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(out)


def _corpus(words: list[str], rng: random.Random, n: int = 4000) -> list[str]:
    texts = []
    for _ in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        texts.append(f"Human: {body}\n\nAssistant: {body}.{CLOSING}")
    return texts


def _fit(tokenizer, words: list[str], rng: random.Random, target: int, make) -> str:
    """A text ``make(body)`` of exactly ``target`` tokens, adding random words to ``body``."""
    body: list[str] = []
    while True:
        text = make(" ".join(body))
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n == target:
            return text
        if n > target:  # the last word was more than one token: try another one
            body.pop()
            if not body and len(tokenizer(make(""), add_special_tokens=False)["input_ids"]) > target:
                raise ValueError(f"cannot make a text of {target} tokens")
        body.append(rng.choice(words))


def make_pairs(
    tokenizer,
    n_pairs: int,
    seed: int = 0,
    prompt_tokens: tuple[int, int] = PROMPT_TOKENS,
    answer_tokens: tuple[int, int] = ANSWER_TOKENS,
) -> list[dict[str, str]]:
    """``n_pairs`` records {prompt, chosen, rejected} with token lengths as described above."""
    rng = random.Random(seed)
    words = _words()
    records = []
    for _ in range(n_pairs):
        prompt = _fit(
            tokenizer, words, rng, rng.randint(*prompt_tokens), lambda b: f"Human: {b}\n\nAssistant:"
        )
        chosen = _fit(tokenizer, words, rng, rng.randint(*answer_tokens), lambda b: f" {b}.{CLOSING}")
        rejected = _fit(tokenizer, words, rng, rng.randint(*answer_tokens), lambda b: f" {b}.")
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return records


def build(
    root: str | Path,
    *,
    n_pairs: int = 2000,
    models: tuple[str, ...] = ("actor", "reward"),
    vocab_size: int = 1024,
    seed: int = 0,
    shapes: str = "issue",
    prompt_tokens: tuple[int, int] = PROMPT_TOKENS,
    answer_tokens: tuple[int, int] = ANSWER_TOKENS,
) -> dict[str, Path]:
    """Build (or reuse) the data and the models under ``root``; returns their paths.

    ``shapes="nano"`` gives every model the 2-layer, 64-wide "nano" shape (smoke tests)."""
    from transformers import AutoTokenizer

    from rlhf.models.tiny import build_tiny, train_tokenizer

    root = Path(root)
    key = {"version": VERSION, "n_pairs": n_pairs, "vocab_size": vocab_size, "seed": seed, "shapes": shapes}
    if (prompt_tokens, answer_tokens) != (PROMPT_TOKENS, ANSWER_TOKENS):  # older keys stay valid
        key.update(prompt_tokens=list(prompt_tokens), answer_tokens=list(answer_tokens))
    stamp = root / "assets.json"
    fresh = stamp.exists() and json.loads(stamp.read_text()) == key
    paths = {"data": root / "data", "pairs": root / "data" / "pairs.jsonl", "tokenizer": root / "tokenizer"}
    if not fresh:
        rng = random.Random(seed)
        tokenizer = train_tokenizer(_corpus(_words(), rng), vocab_size=vocab_size)
        paths["data"].mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(paths["tokenizer"])
        records = make_pairs(tokenizer, n_pairs, seed, prompt_tokens, answer_tokens)
        paths["pairs"].write_text("".join(json.dumps(r) + "\n" for r in records))
        for name in SHAPES:  # models of an older key are stale
            stale = root / name / "config.json"
            if stale.exists():
                stale.unlink()
        stamp.write_text(json.dumps(key))
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    for name in models:
        paths[name] = root / name
        if not (root / name / "config.json").exists():
            shape = NANO if shapes == "nano" else SHAPES[name]
            build_tiny(root / name, tokenizer=tokenizer, seed=SHAPES_SEEDS.get(name, 0), **shape)
    return paths


def length_stats(pairs: str | Path, tokenizer_dir: str | Path) -> dict[str, float]:
    """Token-length statistics of the pairs (to check they are as documented)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [json.loads(line) for line in Path(pairs).read_text().splitlines()]

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    prompts = [n(r["prompt"]) for r in rows]
    chosen = [n(r["chosen"]) for r in rows]
    return {
        "pairs": len(rows),
        "prompt_min": min(prompts),
        "prompt_max": max(prompts),
        "prompt_mean": sum(prompts) / len(rows),
        "chosen_mean": sum(chosen) / len(rows),
        "sft_row_mean": sum(p + c + 1 for p, c in zip(prompts, chosen, strict=True)) / len(rows),
    }
