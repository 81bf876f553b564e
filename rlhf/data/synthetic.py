"""A seeded synthetic preference dataset for demos, tests and benchmarks.

Every prompt is a short single-turn fact-recall question from one of six families. The facts are
few (72 keys in all) so that a tiny transformer trained on CPU for a few minutes sees each of them
many times and memorises it (associative recall, no copying or arithmetic needed)::

    capital   "What is the capital of {country}?"   -> its capital              (10 countries)
    opposite  "What is the opposite of {word}?"     -> its antonym              (12 pairs, both ways)
    sound     "What sound does a {animal} make?"    -> its sound                (10 animals)
    color     "What color is {thing}?"              -> its color                (10 things)
    plural    "What is the plural of {noun}?"       -> its irregular plural     (10 nouns)
    category  "Name a {category}."                  -> any member of it         (8 categories x 8)

Each family has four question phrasings and three answer phrasings, and a prompt may start with a
short preamble ("Hi!", ...), so the texts vary while the facts stay few.

Two things can be checked in any answer text, including model generations on held-out prompts:

* the *preferred property* (:func:`has_property`): the answer ends with the polite closing
  :data:`CLOSING` ("Cheers!");
* the *content* (:func:`content_ok`): the answer names the right item as a whole word
  (case-sensitive) and no other item of the family's answer set (so an answer listing every
  capital is wrong); it is judged from the prompt text alone, by parsing it against the question
  templates.

Three parts are produced:

* ``sft``: (prompt, chosen) with always-correct content and the closing only about half the time,
  so supervised fine-tuning alone does not teach the preference;
* ``pairs``: (prompt, chosen, rejected) where chosen has correct content *and* the closing, and
  rejected is, roughly 40/40/20, correct content without the closing, the closing with wrong or
  missing content (the fact of another key of the same family, e.g. "Madrid" for France, a member
  of another category, or, a quarter of the time, the closing alone), or neither; a reward model
  must therefore value both;
* ``heldout``: prompts only, disjoint by construction from the prompts of the other parts (a stable
  hash of the question text, preamble excluded, decides which side of the split a question is on,
  for every seed). Held-out questions ask about the same facts as training ones, in phrasings the
  training side never pairs with that key: every fact is asked in training with some phrasing.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf.data.formats import format_answer, format_prompt
from rlhf.text_metrics import diversity_stats

CLOSING = "Cheers!"
"""The preferred property: an answer has it when it ends with this closing (whatever its content).
One word, so that an actor which learns to add it everywhere changes its answers' length and
diversity only a little: collapse shows in those statistics, not a longer fixed suffix."""

HELDOUT_PERCENT = 50
"""Percentage of the keys (by a stable hash) that have one question phrasing held out."""

REJECTED_KINDS = ("no_property", "wrong_content", "neither")
REJECTED_WEIGHTS = (0.4, 0.4, 0.2)
CLOSING_ONLY_RATE = 0.25
"""Share of the ``wrong_content`` rejections that are the closing alone (no content at all)."""

_ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("wet", "dry"),
    ("loud", "quiet"), ("rich", "poor"),
)  # fmt: skip

FACTS: dict[str, dict[str, str]] = {
    "capital": {
        "France": "Paris", "Spain": "Madrid", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo",
        "Kenya": "Nairobi", "Germany": "Berlin", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens",
    },
    "opposite": {**dict(_ANTONYMS), **{b: a for a, b in _ANTONYMS}},
    "sound": {
        "dog": "woof", "cat": "meow", "cow": "moo", "sheep": "baa", "pig": "oink", "duck": "quack",
        "horse": "neigh", "owl": "hoot", "lion": "roar", "snake": "hiss",
    },
    "color": {
        "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
        "a tomato": "red", "a carrot": "orange", "chocolate": "brown", "a flamingo": "pink",
        "an elephant": "gray",
    },
    "plural": {
        "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
        "man": "men", "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives",
    },
}  # fmt: skip
"""Single-answer families: key (as it appears in the question) -> the one right answer item."""

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
"""The ``category`` family: category -> its members (any one of them is a right answer)."""

UNASKED_FACTS: dict[str, dict[str, str]] = {
    "capital": {
        "Portugal": "Lisbon", "Sweden": "Stockholm", "Austria": "Vienna", "Ireland": "Dublin",
        "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana", "Turkey": "Ankara",
    },
    "opposite": {
        "warm": "cool", "cool": "warm", "tiny": "huge", "huge": "tiny", "clean": "dirty",
        "dirty": "clean", "thick": "thin", "thin": "thick",
    },
    "sound": {
        "bee": "buzz", "frog": "croak", "wolf": "howl", "turkey": "gobble", "hen": "cluck",
        "crow": "caw", "donkey": "bray", "goat": "bleat",
    },
    "color": {
        "lavender": "lilac", "a spoon": "silver", "sand": "beige", "a lagoon": "turquoise",
        "honey": "golden", "wine": "maroon", "a peacock": "teal", "the night": "navy",
    },
    "plural": {
        "cactus": "cacti", "ox": "oxen", "die": "dice", "louse": "lice", "fungus": "fungi",
        "wife": "wives", "calf": "calves", "loaf": "loaves",
    },
}  # fmt: skip
"""Facts of the same families that no question asks about. Their items are the wrong content of
rejected answers by default (see ``hard_negative_rate`` in :func:`make_records`)."""

UNASKED_CATEGORIES = {
    "piece of furniture": ("table", "chair", "sofa", "desk", "bed", "shelf", "stool", "bench"),
    "tool": ("hammer", "saw", "wrench", "drill", "chisel", "shovel", "rake", "pliers"),
}
"""Categories that no question asks about; their members are wrong answers to ``Name a ...``."""

PLAIN_PREAMBLES = (
    "",
    "",
    "Quick question.",
    "One more question.",
    "Here is an easy one.",
    "Let me ask you something.",
    "I have a small task for you.",
    "I am testing you with easy questions, so please answer carefully.",
)
FRIENDLY_PREAMBLES = (
    "Hi!",
    "Hello there.",
    "Good morning!",
    "Hey, nice to meet you.",
    "Could you help me with something simple?",
    "Thanks for your help, I have a question.",
)
FRIENDLY_RATE = 0.5
"""Share of the prompts that start with one of :data:`FRIENDLY_PREAMBLES` (the others start with
one of :data:`PLAIN_PREAMBLES`, possibly none)."""

SFT_CLOSING_RATES = (0.2, 0.8)
"""How often an SFT answer carries the closing, after a plain / a friendly preamble (friendly
prompts get friendly answers): about half the time overall, and predictably enough from the prompt
that a greedily decoding SFT model shows the property on about half of the prompts too, rather
than on all or none of them."""

# Question templates and answer phrasings per family. Fields: k (the key), ak (the key after "a" or
# "an"), x (the answer item). Every question ends with its key and no answer repeats it: the key
# occurs once, at the same distance from the answer whatever the phrasing or preamble, so recalling
# its fact is a plain lookup (no copying) that a tiny model learns in a few hundred steps.
QUESTIONS = {
    "capital": (
        "What is the capital of {k}?",
        "Which city is the capital of {k}?",
        "Tell me the capital of {k}.",
        "Do you know the capital city of {k}?",
    ),
    "opposite": (
        "What is the opposite of {k}?",
        "Tell me the opposite of {k}.",
        "Which word means the opposite of {k}?",
        "Give me the opposite of the word {k}.",
    ),
    "sound": (
        "What sound is made by {ak}?",
        "What is the sound of {ak}?",
        "Which noise comes from {ak}?",
        "Tell me the sound of {ak}.",
    ),
    "color": (
        "What color is {k}?",
        "What is the color of {k}?",
        "Tell me the color of {k}.",
        "Do you know the color of {k}?",
    ),
    "plural": (
        "What is the plural of {k}?",
        "Tell me the plural of {k}.",
        "What is the plural form of {k}?",
        "How do you write more than one {k}?",
    ),
    "category": ("Name {ak}.", "Can you name {ak}?", "Tell me one {k}.", "Give me an example of {ak}."),
}
ANSWERS = {
    "capital": ("{x}.", "It is {x}.", "The capital is {x}."),
    "opposite": ("{x}.", "It is {x}.", "The opposite is {x}."),
    "sound": ("{x}.", "It says {x}.", "It goes {x}."),
    "color": ("{x}.", "It is {x}.", "The color is {x}."),
    "plural": ("{x}.", "It is {x}.", "The plural is {x}."),
    "category": ("{x}.", "How about {x}?", "One example is {x}."),
}
FAMILIES = tuple(QUESTIONS)


def _keys(family: str) -> tuple[str, ...]:
    """The keys a question of ``family`` can ask about."""
    return tuple(CATEGORIES if family == "category" else FACTS[family])


def _right_items(family: str, key: str) -> tuple[str, ...]:
    """The items that answer the question about ``key`` correctly."""
    return CATEGORIES[key] if family == "category" else (FACTS[family][key],)


def _answer_set(family: str) -> frozenset[str]:
    """Every item some question of ``family`` has as a right answer."""
    return frozenset(x for key in _keys(family) for x in _right_items(family, key))


def _unasked_items(family: str) -> tuple[str, ...]:
    """The items of the facts of ``family`` that no question asks about."""
    if family == "category":
        return tuple(x for members in UNASKED_CATEGORIES.values() for x in members)
    return tuple(dict.fromkeys(UNASKED_FACTS[family].values()))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _fields(key: str) -> dict[str, str]:
    """The template fields of a key (all but the answer item ``x``)."""
    return {"k": key, "ak": _article(key)}


def _template_regex(template: str, keys: Sequence[str]) -> str:
    """A regex matching ``template`` with any of ``keys`` in its (one) key field, captured as ``k``."""
    alternatives = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if field == "k":
            out.append(f"(?P<k>{alternatives})")
        elif field == "ak":
            out.append(f"an? (?P<k>{alternatives})")
        elif field is not None:
            raise ValueError(f"question template {template!r} has an unknown field {field!r}")
    return "".join(out)


# One regex per question template (tried in order), each capturing the key as group ``k``.
_PATTERNS = {
    family: tuple(re.compile(_template_regex(t, _keys(family))) for t in templates)
    for family, templates in QUESTIONS.items()
}


# --------------------------------------------------------------------------- checks


def has_property(answer: str) -> bool:
    """Whether ``answer`` carries the preferred property: it ends with :data:`CLOSING`."""
    return answer.strip().endswith(CLOSING)


def _match(prompt: str) -> tuple[str, re.Match] | None:
    """The task family and template match of ``prompt`` (only its last ``Human:`` turn), or None."""
    turn = prompt.rsplit("Human:", 1)[-1]
    for family, patterns in _PATTERNS.items():
        for pattern in patterns:
            match = pattern.search(turn)
            if match:
                return family, match
    return None


def parse_task(prompt: str) -> tuple[str, dict[str, str]] | None:
    """The (family, fields) of the task in ``prompt``, e.g. ``("capital", {"k": "France"})``, or None."""
    found = _match(prompt)
    return None if found is None else (found[0], found[1].groupdict())


def _has(answer: str, token: str) -> bool:
    """Whether ``token`` occurs in ``answer`` as a whole word (case-sensitive)."""
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", answer) is not None


def content_ok(prompt: str, answer: str) -> bool:
    """Whether ``answer`` answers ``prompt`` correctly; False for prompts of no known task family.

    Correct means: a right item occurs in the answer as a whole word (case-sensitive), and no other
    item of the family (asked about or not) does, the asked-about key itself aside, which an answer
    may repeat ("The opposite of hot is cold."). So an answer listing every capital is wrong.
    """
    task = parse_task(prompt)
    if task is None:
        return False
    family, key = task[0], task[1]["k"]
    right = _right_items(family, key)
    others = (_answer_set(family) | set(_unasked_items(family))) - set(right) - {key}
    return any(_has(answer, x) for x in right) and not any(_has(answer, x) for x in others)


def answer_stats(prompts: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Property rate, content rate, distinct-2 (over whitespace tokens) and mean length in words."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    n = len(answers)
    return {
        "n": n,
        "property_rate": sum(map(has_property, answers)) / n if n else 0.0,
        "content_rate": sum(content_ok(p, a) for p, a in zip(prompts, answers, strict=True)) / n
        if n
        else 0.0,
        **diversity_stats(answers),
    }


# --------------------------------------------------------------------------- reward functions
# The checks above as reward functions of ``rewards.functions`` (rlhf.rewards: prompts, answers and
# dataset rows in, one number per answer out), so the task trains with a verifiable reward.


def _question(prompt: str, row: Mapping[str, Any] | None) -> str:
    """The text to parse the task from: the dataset row's prompt (the last user turn of a conversation),
    else the prompt as the model read it."""
    value = row.get("prompt") if isinstance(row, Mapping) else None
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        value = value[-1].get("content")
    return value if isinstance(value, str) and value else prompt


def content_reward(
    prompts: Sequence[str], answers: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[float]:
    """1 for an answer with the asked-for content (:func:`content_ok`), else 0."""
    return [float(content_ok(_question(p, r), a)) for p, a, r in zip(prompts, answers, rows, strict=True)]


def property_reward(
    prompts: Sequence[str], answers: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[float]:
    """1 for an answer with the preferred property (:func:`has_property`), else 0."""
    return [float(has_property(a)) for a in answers]


def reward(prompts: Sequence[str], answers: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The synthetic task's verifiable reward: 0 for an answer without the asked-for content, 1 for one
    with it, 2 for one with it and the property. The property counts only with the right content, so
    the closing alone, or wrong content with it, earns nothing (what the reward model is taught by
    its rejected answers, here by the program itself)."""
    content = content_reward(prompts, answers, rows)
    return [c * (1.0 + float(has_property(a))) for c, a in zip(content, answers, strict=True)]


# --------------------------------------------------------------------------- generation


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def questions(family: str, key: str) -> list[str]:
    """Every question text (preamble aside) that asks about ``key`` of ``family``."""
    return [template.format(**_fields(key)) for template in QUESTIONS[family]]


def _heldout_question(family: str, key: str) -> str | None:
    """The one question about ``key`` reserved for held-out prompts, or None.

    A stable hash of the family and key decides whether the key has one (for about
    :data:`HELDOUT_PERCENT` % of the keys), and a stable hash of the question text which phrasing
    it is: every fact stays asked in training, in all its other phrasings.
    """
    if _digest(f"{family}/{key}") % 100 >= HELDOUT_PERCENT:
        return None
    return min(questions(family, key), key=_digest)


def is_heldout(prompt: str) -> bool:
    """Whether the question of ``prompt`` lies in the held-out part of the task space.

    The split depends on the question itself (preamble excluded), so a held-out question never
    occurs in the training parts, whatever its preamble, and the split is the same for every seed.
    """
    found = _match(prompt)
    if found is None:
        raise ValueError(f"not a synthetic task prompt: {prompt!r}")
    family, match = found
    return match.group(0) == _heldout_question(family, match["k"])


CATEGORY_WEIGHT = 2
"""How much more often a category is asked about than a single-answer key (its eight right answers
each need enough examples too)."""

_FACT_KEYS = tuple(
    (family, key)
    for family in FAMILIES
    for key in _keys(family)
    for _ in range(CATEGORY_WEIGHT if family == "category" else 1)
)


def _sample_task(rng: random.Random) -> tuple[str, dict]:
    """A random (prompt, task), uniform over the keys (categories weighted by
    :data:`CATEGORY_WEIGHT`); task holds the family, the key and whether the preamble is friendly."""
    family, key = rng.choice(_FACT_KEYS)
    question = rng.choice(QUESTIONS[family]).format(**_fields(key))
    friendly = rng.random() < FRIENDLY_RATE
    preamble = rng.choice(FRIENDLY_PREAMBLES if friendly else PLAIN_PREAMBLES)
    task = {"family": family, "k": key, "friendly": friendly}
    return format_prompt(f"{preamble} {question}".strip()), task


def _answer_item(task: dict, rng: random.Random, correct: bool, hard_negative_rate: float = 0.0) -> str:
    """The item an answer to ``task`` names: a right one, or a wrong one.

    A wrong item is, with probability ``hard_negative_rate``, the fact of another *asked* key of the
    same family (a member of another asked category), else the fact of an unasked key (a member of
    an unasked category).
    """
    family, key = task["family"], task["k"]
    if correct:
        return rng.choice(_right_items(family, key))
    if rng.random() >= hard_negative_rate:
        return rng.choice(_unasked_items(family))
    if family == "category":
        other = rng.choice([c for c in CATEGORIES if c != key])
        return rng.choice(CATEGORIES[other])
    right = FACTS[family][key]
    return rng.choice(sorted(x for x in _answer_set(family) if x != right))


def _base_answer(task: dict, template: str, item: str) -> str:
    """An answer without the closing: ``template`` naming ``item``."""
    return template.format(x=item, **_fields(task["k"]))


def _with_closing(answer: str) -> str:
    return f"{answer} {CLOSING}"


def _rejected(
    task: dict, template: str, chosen_base: str, rng: random.Random, hard_negative_rate: float
) -> tuple[str, str]:
    """A (kind, rejected answer) for a pair whose chosen answer is ``chosen_base`` + closing.

    ``template`` is the phrasing of ``chosen_base``; a wrong-content answer keeps it, so that the pair
    differs in the item only.
    """
    kind = rng.choices(REJECTED_KINDS, weights=REJECTED_WEIGHTS)[0]
    if kind == "no_property":
        return kind, chosen_base
    wrong = _base_answer(task, template, _answer_item(task, rng, False, hard_negative_rate))
    if kind == "neither":
        return kind, wrong
    return kind, CLOSING if rng.random() < CLOSING_ONLY_RATE else _with_closing(wrong)


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


def make_records(
    *,
    seed: int = 0,
    n_sft: int = 2000,
    n_pairs: int = 2000,
    n_heldout: int = 200,
    hard_negative_rate: float = 0.0,
) -> dict:
    """The dataset in memory: ``{"sft": [...], "pairs": [...], "heldout": [...]}``.

    Records are dicts with the fields written to the JSONL files; pair records also carry
    ``rejected_kind`` (one of :data:`REJECTED_KINDS`), which the file writer leaves out.

    ``hard_negative_rate`` is the share of wrong items (in ``wrong_content`` and ``neither``
    rejections) taken from the facts of other *asked* keys ("Madrid" for the capital of France)
    rather than from :data:`UNASKED_FACTS` ("Lisbon"). Telling those apart needs the key-item
    binding itself, which a tiny reward model trained from scratch for a few hundred steps does not
    learn (it stays near chance on them), whereas it learns within about a hundred steps that an
    unasked item is wrong; hence the default of 0.
    """
    rng = random.Random(seed)
    sft = []
    for prompt, task in _sample_prompts(rng, n_sft, heldout=False, unique=False):
        template = rng.choice(ANSWERS[task["family"]])
        answer = _base_answer(task, template, _answer_item(task, rng, correct=True))
        if rng.random() < SFT_CLOSING_RATES[task["friendly"]]:
            answer = _with_closing(answer)
        sft.append({"prompt": prompt, "chosen": format_answer(answer)})
    pairs = []
    for prompt, task in _sample_prompts(rng, n_pairs, heldout=False, unique=False):
        template = rng.choice(ANSWERS[task["family"]])
        base = _base_answer(task, template, _answer_item(task, rng, correct=True))
        kind, rejected = _rejected(task, template, base, rng, hard_negative_rate)
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
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_sft: int = 2000,
    n_pairs: int = 2000,
    n_heldout: int = 200,
    hard_negative_rate: float = 0.0,
) -> dict[str, Path]:
    """Write ``sft.jsonl``, ``pairs.jsonl`` and ``heldout_prompts.jsonl`` into ``out_dir``.

    Returns ``{"sft": path, "pairs": path, "heldout": path}``. The same arguments always give
    byte-identical files. ``hard_negative_rate``: see :func:`make_records`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = make_records(
        seed=seed, n_sft=n_sft, n_pairs=n_pairs, n_heldout=n_heldout, hard_negative_rate=hard_negative_rate
    )
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
