"""A seeded synthetic preference dataset for demos, tests and benchmarks.

Every prompt is a short single-turn task from one of six families that a tiny transformer can learn
on CPU in minutes (mostly copy / induction style)::

    repeat    "Repeat the word {w}."            -> the answer contains {w}
    twice     "Say {w} twice."                  -> the answer contains "{w} {w}"
    capital   "Write {w} in capital letters."   -> the answer contains {W} (upper case)
    next      "What comes after {n}?"           -> the answer contains {n+1}
    bigger    "Which is bigger, {a} or {b}?"    -> the answer contains max(a, b) and not min(a, b)
    category  "Name a {category}."              -> the answer contains a member of that category

Two things can be checked in any answer text, including model generations on held-out prompts:

* the *preferred property* (:func:`has_property`): the answer ends with the polite closing
  :data:`CLOSING` ("Hope this helps!");
* the *content* (:func:`content_ok`): the answer does what the prompt asked; it is judged from the
  prompt text alone, by parsing it against the task templates.

Three parts are produced:

* ``sft``: (prompt, chosen) with always-correct content and the closing only about half the time,
  so supervised fine-tuning alone does not teach the preference;
* ``pairs``: (prompt, chosen, rejected) where chosen has correct content *and* the closing, and
  rejected is, roughly 40/40/20, correct content without the closing, the closing with wrong or
  missing content, or neither; a reward model must therefore value both;
* ``heldout``: prompts only, disjoint by construction from the prompts of the other parts (a stable
  hash of the prompt text decides which side of the split a prompt is on, for every seed).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from rlhf.data.formats import format_answer, format_prompt

CLOSING = "Hope this helps!"
"""The preferred property: an answer has it when it ends with this closing (whatever its content)."""

HELDOUT_PERCENT = 10
"""Percentage of the questions (by a stable hash of their text) reserved for held-out prompts."""

REJECTED_KINDS = ("no_property", "wrong_content", "neither")
REJECTED_WEIGHTS = (0.4, 0.4, 0.2)

WORDS = (
    "apple", "river", "stone", "cloud", "garden", "window", "pencil", "rocket", "candle", "forest",
    "bridge", "mirror", "silver", "planet", "island", "button", "castle", "dragon", "engine", "feather",
    "guitar", "hammer", "jacket", "kitten", "ladder", "magnet", "needle", "orange", "pepper", "rabbit",
    "saddle", "ticket", "velvet", "wallet", "yellow", "anchor", "basket", "cactus", "dinner", "falcon",
    "goblet", "helmet", "insect", "jungle", "kettle", "lemon", "marble", "noodle", "oyster", "parrot",
    "puzzle", "ribbon", "shadow", "tunnel", "violin", "walnut", "zipper", "banana", "copper", "desert",
    "meadow", "summer", "winter", "spring", "autumn", "pillow", "blanket", "cookie", "muffin", "pirate",
    "robot", "sailor", "tiger", "zebra", "camera", "carpet", "circle", "coffee", "cotton", "dolphin",
    "ember", "fabric", "glacier", "harbor", "lantern", "meteor", "nectar", "orchid", "pebble", "quartz",
    "saturn", "signal", "spider", "sunset", "thunder", "timber", "turtle", "valley", "whistle", "wizard",
)  # fmt: skip

CATEGORIES = {
    "color": ("red", "blue", "green", "purple", "pink", "brown", "black", "white"),
    "fruit": ("pear", "plum", "mango", "grape", "cherry", "peach", "kiwi", "melon"),
    "animal": ("dog", "cat", "horse", "mouse", "sheep", "goat", "wolf", "bear"),
    "country": ("France", "Spain", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya"),
    "vegetable": ("carrot", "onion", "potato", "celery", "radish", "turnip", "leek", "cabbage"),
    "musical instrument": ("piano", "drum", "flute", "harp", "cello", "trumpet", "banjo", "oboe"),
    "metal": ("iron", "gold", "zinc", "tin", "nickel", "lead", "cobalt", "chrome"),
    "shape": ("square", "triangle", "oval", "hexagon", "cube", "sphere", "cone", "star"),
}

NUMBERS = range(1, 100)

PREAMBLES = (
    "",
    "",
    "",
    "Quick question.",
    "Hi!",
    "Hello there.",
    "I have a small task for you.",
    "Could you help me with something simple?",
    "I am testing you with easy questions, so please answer carefully.",
)

# Question templates and answer phrasings per family. Fields: w (word), W (upper-case word),
# n / m (number / its successor), a / b (compared numbers), c (category), x (the answer item).
QUESTIONS = {
    "repeat": ("Repeat the word {w}.", "Please repeat the word {w}."),
    "twice": ("Say {w} twice.", "Can you say {w} twice?"),
    "capital": ("Write {w} in capital letters.", "Please write {w} in capital letters."),
    "next": ("What comes after {n}?", "Which number comes after {n}?"),
    "bigger": ("Which is bigger, {a} or {b}?", "Which number is bigger, {a} or {b}?"),
    "category": ("Name {ac}.", "Can you name {ac}?", "Tell me one {c}."),
}
ANSWERS = {
    "repeat": ("{x}.", "The word is {x}.", "Here it is: {x}."),
    "twice": ("{x} {x}.", "Okay: {x} {x}.", "Here you go: {x} {x}."),
    "capital": ("{x}.", "In capitals: {x}.", "Here it is: {x}."),
    "next": ("{x}.", "The answer is {x}.", "After {n} comes {x}."),
    "bigger": ("{x}.", "{x} is bigger.", "The bigger one is {x}."),
    "category": ("{x}.", "How about {x}?", "One example is {x}."),
}
FAMILIES = tuple(QUESTIONS)

_PATTERNS = {
    "repeat": re.compile(r"(?:Please r|R)epeat the word (?P<w>[a-z]+)\."),
    "twice": re.compile(r"(?:Can you say|Say) (?P<w>[a-z]+) twice[.?]"),
    "capital": re.compile(r"(?:Please w|W)rite (?P<w>[a-z]+) in capital letters\."),
    "next": re.compile(r"(?:Which number|What) comes after (?P<n>\d+)\?"),
    "bigger": re.compile(r"Which (?:number )?is bigger, (?P<a>\d+) or (?P<b>\d+)\?"),
    "category": re.compile(r"(?:(?:Name|Can you name) an?|Tell me one) (?P<c>[a-z ]+?)[.?]"),
}


# --------------------------------------------------------------------------- checks


def has_property(answer: str) -> bool:
    """Whether ``answer`` carries the preferred property: it ends with :data:`CLOSING`."""
    return answer.strip().endswith(CLOSING)


def _match(prompt: str) -> tuple[str, re.Match] | None:
    """The task family and template match of ``prompt`` (only its last ``Human:`` turn), or None."""
    turn = prompt.rsplit("Human:", 1)[-1]
    for family, pattern in _PATTERNS.items():
        match = pattern.search(turn)
        if match and (family != "category" or match["c"] in CATEGORIES):
            return family, match
    return None


def parse_task(prompt: str) -> tuple[str, dict[str, str]] | None:
    """The (family, fields) of the task in ``prompt``, e.g. ``("next", {"n": "41"})``, or None."""
    found = _match(prompt)
    return None if found is None else (found[0], found[1].groupdict())


def _has(answer: str, token: str) -> bool:
    """Whether ``token`` occurs in ``answer`` as a whole word (case-sensitive)."""
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", answer) is not None


def content_ok(prompt: str, answer: str) -> bool:
    """Whether ``answer`` does what ``prompt`` asked; False for prompts of no known task family."""
    task = parse_task(prompt)
    if task is None:
        return False
    family, f = task
    if family == "repeat":
        return _has(answer, f["w"])
    if family == "twice":
        return _has(answer, f"{f['w']} {f['w']}")
    if family == "capital":
        return _has(answer, f["w"].upper())
    if family == "next":
        return _has(answer, str(int(f["n"]) + 1))
    if family == "bigger":
        hi, lo = sorted((int(f["a"]), int(f["b"])), reverse=True)
        return _has(answer, str(hi)) and not _has(answer, str(lo))
    return any(_has(answer, member) for member in CATEGORIES[f["c"]])


def answer_stats(prompts: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Property rate, content rate, distinct-2 (over whitespace tokens) and mean length in words."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    n = len(answers)
    if n == 0:
        return {"n": 0, "property_rate": 0.0, "content_rate": 0.0, "distinct_2": 0.0, "mean_length": 0.0}
    words = [a.split() for a in answers]
    bigrams = [tuple(ws[i : i + 2]) for ws in words for i in range(len(ws) - 1)]
    return {
        "n": n,
        "property_rate": sum(map(has_property, answers)) / n,
        "content_rate": sum(content_ok(p, a) for p, a in zip(prompts, answers, strict=True)) / n,
        "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "mean_length": sum(map(len, words)) / n,
    }


# --------------------------------------------------------------------------- generation


def is_heldout(prompt: str) -> bool:
    """Whether the question of ``prompt`` lies in the held-out part of the task space.

    The split hashes the question itself (preamble excluded), so a held-out question never occurs
    in the training parts, whatever its preamble, and the split is the same for every seed.
    """
    found = _match(prompt)
    if found is None:
        raise ValueError(f"not a synthetic task prompt: {prompt!r}")
    digest = hashlib.sha256(found[1].group(0).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def _sample_task(rng: random.Random) -> tuple[str, dict]:
    """A random (prompt, task) where task holds the family and its fields."""
    family = rng.choice(FAMILIES)
    task: dict = {"family": family}
    if family in ("repeat", "twice", "capital"):
        task["w"] = rng.choice(WORDS)
    elif family == "next":
        task["n"] = rng.choice(NUMBERS)
    elif family == "bigger":
        task["a"], task["b"] = rng.sample(NUMBERS, 2)
    else:
        task["c"] = rng.choice(sorted(CATEGORIES))
        task["ac"] = ("an " if task["c"][0] in "aeiou" else "a ") + task["c"]
    question = rng.choice(QUESTIONS[family]).format(**task)
    preamble = rng.choice(PREAMBLES)
    return format_prompt(f"{preamble} {question}".strip()), task


def _answer_item(task: dict, rng: random.Random, correct: bool) -> str:
    """The item an answer to ``task`` names: the right one, or a plausible wrong one."""
    family = task["family"]
    if family in ("repeat", "twice", "capital"):
        w = task["w"]
        if correct:
            return w.upper() if family == "capital" else w
        other = rng.choice([x for x in WORDS if x != w])
        if family == "capital":  # the right word left in lower case, or another word in capitals
            return rng.choice([w, other.upper()])
        return other
    if family == "next":
        right = task["n"] + 1
        if correct:
            return str(right)
        return str(rng.choice([task["n"], right + 1, rng.choice([x for x in NUMBERS if x != right])]))
    if family == "bigger":
        return str(max(task["a"], task["b"]) if correct else min(task["a"], task["b"]))
    if correct:
        return rng.choice(CATEGORIES[task["c"]])
    other = rng.choice([c for c in sorted(CATEGORIES) if c != task["c"]])
    return rng.choice(CATEGORIES[other])


def _base_answer(task: dict, rng: random.Random, correct: bool) -> str:
    """An answer without the closing; correct or not in content."""
    family = task["family"]
    item = _answer_item(task, rng, correct)
    if family == "twice" and not correct and rng.random() < 0.5:  # the right word, said once
        return rng.choice(ANSWERS["repeat"]).format(x=task["w"])
    return rng.choice(ANSWERS[family]).format(x=item, n=task.get("n"))


def _with_closing(answer: str) -> str:
    return f"{answer} {CLOSING}"


def _rejected(task: dict, chosen_base: str, rng: random.Random) -> tuple[str, str]:
    """A (kind, rejected answer) for a pair whose chosen answer is ``chosen_base`` + closing."""
    kind = rng.choices(REJECTED_KINDS, weights=REJECTED_WEIGHTS)[0]
    if kind == "no_property":
        return kind, chosen_base
    wrong = _base_answer(task, rng, correct=False)
    if kind == "neither":
        return kind, wrong
    return kind, CLOSING if rng.random() < 0.25 else _with_closing(wrong)


def _sample_prompts(rng: random.Random, n: int, heldout: bool, unique: bool) -> list[tuple[str, dict]]:
    """``n`` random (prompt, task) from the held-out or the training side of the split."""
    out: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            return out
        prompt, task = _sample_task(rng)
        if is_heldout(prompt) != heldout or (unique and prompt in seen):
            continue
        seen.add(prompt)
        out.append((prompt, task))
    if len(out) < n:
        raise ValueError(f"could not sample {n} {'held-out' if heldout else 'training'} prompts")
    return out


def make_records(*, seed: int = 0, n_sft: int = 2000, n_pairs: int = 2000, n_heldout: int = 200) -> dict:
    """The dataset in memory: ``{"sft": [...], "pairs": [...], "heldout": [...]}``.

    Records are dicts with the fields written to the JSONL files; pair records also carry
    ``rejected_kind`` (one of :data:`REJECTED_KINDS`), which the file writer leaves out.
    """
    rng = random.Random(seed)
    sft = []
    for prompt, task in _sample_prompts(rng, n_sft, heldout=False, unique=False):
        answer = _base_answer(task, rng, correct=True)
        if rng.random() < 0.5:
            answer = _with_closing(answer)
        sft.append({"prompt": prompt, "chosen": format_answer(answer)})
    pairs = []
    for prompt, task in _sample_prompts(rng, n_pairs, heldout=False, unique=False):
        base = _base_answer(task, rng, correct=True)
        kind, rejected = _rejected(task, base, rng)
        pairs.append(
            {
                "prompt": prompt,
                "chosen": format_answer(_with_closing(base)),
                "rejected": format_answer(rejected),
                "rejected_kind": kind,
            }
        )
    heldout = [{"prompt": p} for p, _ in _sample_prompts(rng, n_heldout, heldout=True, unique=True)]
    return {"sft": sft, "pairs": pairs, "heldout": heldout}


FILES = {"sft": "sft.jsonl", "pairs": "pairs.jsonl", "heldout": "heldout_prompts.jsonl"}
_FIELDS = {"sft": ("prompt", "chosen"), "pairs": ("prompt", "chosen", "rejected"), "heldout": ("prompt",)}


def generate(
    out_dir: str | Path, *, seed: int = 0, n_sft: int = 2000, n_pairs: int = 2000, n_heldout: int = 200
) -> dict[str, Path]:
    """Write ``sft.jsonl``, ``pairs.jsonl`` and ``heldout_prompts.jsonl`` into ``out_dir``.

    Returns ``{"sft": path, "pairs": path, "heldout": path}``. The same arguments always give
    byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = make_records(seed=seed, n_sft=n_sft, n_pairs=n_pairs, n_heldout=n_heldout)
    paths = {}
    for part, name in FILES.items():
        paths[part] = out / name
        lines = (json.dumps({k: r[k] for k in _FIELDS[part]}) + "\n" for r in records[part])
        with open(paths[part], "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(lines)
    return paths


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def corpus_texts(source: str | Path | dict) -> Iterable[str]:
    """Texts for tokenizer training: every prompt + answer of the SFT and pair parts.

    ``source`` is a directory written by :func:`generate` or the dict from :func:`make_records`.
    Held-out prompts are left out.
    """
    if isinstance(source, dict):
        records = source
    else:
        records = {part: read_jsonl(Path(source) / FILES[part]) for part in ("sft", "pairs")}
    for r in records["sft"]:
        yield r["prompt"] + r["chosen"]
    for r in records["pairs"]:
        yield r["prompt"] + r["chosen"]
        yield r["prompt"] + r["rejected"]
