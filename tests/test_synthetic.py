"""Tests of the synthetic preference dataset (rlhf.data.synthetic)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from rlhf.data import synthetic as syn
from rlhf.data.formats import format_prompt

SMALL = {"n_sft": 600, "n_pairs": 600, "n_heldout": 100}
EXPECTED = {"no_property": (False, True), "wrong_content": (True, False), "neither": (False, False)}


@pytest.fixture(scope="module")
def records():
    return syn.make_records(seed=0, **SMALL)


@pytest.fixture(scope="module")
def full():
    return syn.make_records(seed=0)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _question(prompt):
    return syn._match(prompt)[1].group(0)


def _task(prompt):
    family, fields = syn.parse_task(prompt)
    return family, fields["k"]


def _all_keys():
    return [(f, k) for f in syn.FAMILIES for k in syn._keys(f)]


def _items_in(answer, family):
    """The family items (asked about or not) that ``answer`` names as whole words."""
    items = syn._answer_set(family) | set(syn._unasked_items(family))
    return {x for x in items if re.search(rf"(?<!\w){re.escape(x)}(?!\w)", answer)}


def test_generate_writes_files_deterministically(tmp_path):
    a = syn.generate(tmp_path / "a", seed=3, **SMALL)
    b = syn.generate(tmp_path / "b", seed=3, **SMALL)
    c = syn.generate(tmp_path / "c", seed=4, **SMALL)
    d = syn.generate(tmp_path / "d", seed=3, hard_negative_rate=0.0, **SMALL)
    assert set(a) == {"sft", "pairs", "heldout"}
    assert [p.name for p in a.values()] == ["sft.jsonl", "pairs.jsonl", "heldout_prompts.jsonl"]
    for part in a:
        assert a[part].read_bytes() == b[part].read_bytes() == d[part].read_bytes()
        assert a[part].read_bytes() != c[part].read_bytes()
    sft, pairs, heldout = _read(a["sft"]), _read(a["pairs"]), _read(a["heldout"])
    assert (len(sft), len(pairs), len(heldout)) == (600, 600, 100)
    assert all(set(r) == {"prompt", "chosen"} for r in sft)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in pairs)
    assert all(set(r) == {"prompt"} for r in heldout)
    assert syn.make_records(seed=3, **SMALL)["pairs"][0]["prompt"] == pairs[0]["prompt"]


def test_prompt_and_answer_format(records):
    for r in records["sft"] + records["pairs"] + records["heldout"]:
        assert r["prompt"].startswith("Human: ") and r["prompt"].endswith("\n\nAssistant:")
        assert syn.parse_task(r["prompt"]) is not None
    for r in records["sft"] + records["pairs"]:
        for answer in (r["chosen"], r.get("rejected", r["chosen"])):
            assert answer.startswith(" ") and answer == " " + answer.strip()
            assert _task(r["prompt"])[1] not in answer.split()  # answers do not repeat the key
    families = Counter(_task(r["prompt"])[0] for r in records["sft"])
    assert set(families) == set(syn.FAMILIES)
    # uniform over keys, a category counting CATEGORY_WEIGHT times
    weights = {f: len(syn._keys(f)) * (syn.CATEGORY_WEIGHT if f == "category" else 1) for f in syn.FAMILIES}
    for family, n in families.items():
        assert n / len(records["sft"]) == pytest.approx(weights[family] / sum(weights.values()), abs=0.05)


def test_sft_always_correct_property_about_half(records):
    prompts = [r["prompt"] for r in records["sft"]]
    stats = syn.answer_stats(prompts, [r["chosen"] for r in records["sft"]])
    assert stats["content_rate"] == 1.0
    assert 0.4 <= stats["property_rate"] <= 0.6
    # the closing follows friendly preambles far more often than plain ones
    by_tone = {True: [], False: []}
    for r in records["sft"]:
        friendly = any(r["prompt"].startswith(f"Human: {p} ") for p in syn.FRIENDLY_PREAMBLES)
        by_tone[friendly].append(syn.has_property(r["chosen"]))
    assert sum(by_tone[True]) / len(by_tone[True]) > 0.7
    assert sum(by_tone[False]) / len(by_tone[False]) < 0.3
    # answers vary: every phrasing of every family occurs
    for family, templates in syn.ANSWERS.items():
        for template in templates:
            prefix = template.split("{x}")[0]
            assert any(
                _task(r["prompt"])[0] == family and r["chosen"].startswith(" " + prefix)
                for r in records["sft"]
            ), template


def test_pairs_chosen_pass_and_rejected_fail(records):
    kinds = Counter()
    for r in records["pairs"]:
        assert syn.has_property(r["chosen"]) and syn.content_ok(r["prompt"], r["chosen"])
        prop, content = syn.has_property(r["rejected"]), syn.content_ok(r["prompt"], r["rejected"])
        assert (prop, content) == EXPECTED[r["rejected_kind"]], r
        kinds[r["rejected_kind"]] += 1
    n = len(records["pairs"])
    assert set(kinds) == set(syn.REJECTED_KINDS)
    assert 0.3 < kinds["no_property"] / n < 0.5
    assert 0.3 < kinds["wrong_content"] / n < 0.5
    assert 0.1 < kinds["neither"] / n < 0.3
    closing_only = sum(r["rejected"].strip() == syn.CLOSING for r in records["pairs"])
    assert 0.15 < closing_only / kinds["wrong_content"] < 0.35


def test_wrong_items_and_hard_negatives(records):
    """Wrong content names one wrong item of the same family, in the chosen answer's phrasing."""
    hard = syn.make_records(seed=0, hard_negative_rate=1.0, **SMALL)
    for recs, pool in ((records, syn._unasked_items), (hard, syn._answer_set)):
        n_wrong = 0
        for r in recs["pairs"]:
            family, key = _task(r["prompt"])
            assert syn.has_property(r["chosen"]) and syn.content_ok(r["prompt"], r["chosen"])
            assert (syn.has_property(r["rejected"]), syn.content_ok(r["prompt"], r["rejected"])) == EXPECTED[
                r["rejected_kind"]
            ]
            if r["rejected_kind"] == "no_property" or r["rejected"].strip() == syn.CLOSING:
                continue
            n_wrong += 1
            (wrong,) = _items_in(r["rejected"], family)
            assert wrong in pool(family) and wrong not in syn._right_items(family, key)
            if family == "category":  # a member of another (asked or unasked) category
                assert wrong not in syn.CATEGORIES[key]
            (right,) = _items_in(r["chosen"], family)
            assert r["rejected"].removesuffix(" " + syn.CLOSING) == r["chosen"].removesuffix(
                " " + syn.CLOSING
            ).replace(right, wrong)
        assert n_wrong > 0.3 * len(recs["pairs"])


def test_heldout_disjoint_and_unique(records):
    train = {r["prompt"] for r in records["sft"] + records["pairs"]}
    heldout = [r["prompt"] for r in records["heldout"]]
    assert len(set(heldout)) == len(heldout)
    assert not train & set(heldout)
    assert all(syn.is_heldout(p) for p in heldout) and not any(syn.is_heldout(p) for p in train)
    # the questions themselves (preamble aside) are disjoint too
    assert not {_question(p) for p in train} & {_question(p) for p in heldout}
    # and so, by construction, for any other seed
    other = syn.make_records(seed=1, **SMALL)
    assert not {r["prompt"] for r in other["sft"] + other["pairs"]} & set(heldout)
    # held-out prompts mix friendly and plain preambles, so the SFT property rate shows there too
    friendly = sum(any(p.startswith(f"Human: {f} ") for f in syn.FRIENDLY_PREAMBLES) for p in heldout)
    assert 0.3 < friendly / len(heldout) < 0.7
    assert len({_task(p) for p in heldout}) > 20  # many different facts are asked about


def test_every_fact_is_asked_in_training(full):
    heldout_keys = 0
    for family, key in _all_keys():
        asked = syn.questions(family, key)
        assert len(asked) == len(syn.QUESTIONS[family])
        held = [q for q in asked if syn.is_heldout(format_prompt(q))]
        assert len(held) <= 1  # at most one phrasing per key is held out
        heldout_keys += len(held)
        preambles = ("", *syn.FRIENDLY_PREAMBLES, *syn.PLAIN_PREAMBLES)
        for preamble in preambles:  # preambles do not move the split
            for q in asked:
                assert syn.is_heldout(format_prompt(f"{preamble} {q}".strip())) == (q in held)
    assert 0.3 < heldout_keys / len(_all_keys()) < 0.7
    # every fact occurs in the default training parts, in at least two phrasings
    seen: dict[tuple[str, str], set[str]] = {}
    for r in full["sft"] + full["pairs"]:
        seen.setdefault(_task(r["prompt"]), set()).add(_question(r["prompt"]))
    assert set(seen) == set(_all_keys())
    assert all(len(qs) >= 2 for qs in seen.values())
    sft_keys = Counter(_task(r["prompt"]) for r in full["sft"])
    assert min(sft_keys.values()) >= 10  # each fact is seen many times in SFT
    # and the held-out facts are all asked in training too
    assert {_task(r["prompt"]) for r in full["heldout"]} <= set(seen)


def test_fact_tables_are_consistent():
    assert len(_all_keys()) == 72
    assert {f: len(syn._keys(f)) for f in syn.FAMILIES} == {
        "capital": 10, "opposite": 24, "sound": 10, "color": 10, "plural": 10, "category": 8,
    }  # fmt: skip
    assert all(syn.FACTS["opposite"][syn.FACTS["opposite"][k]] == k for k in syn.FACTS["opposite"])
    assert all(len(m) == 8 for m in syn.CATEGORIES.values())
    template_words = {
        w.strip(".?!,:").lower()
        for ts in syn.ANSWERS.values()
        for t in ts
        for w in t.replace("{x}", "").split()
    }
    closing_words = {w.strip("!.").lower() for w in syn.CLOSING.split()}
    every_item = set()
    for family in syn.FAMILIES:
        right, unasked = syn._answer_set(family), set(syn._unasked_items(family))
        assert not right & unasked
        if family != "category":
            assert len(right) == len(syn.FACTS[family])  # one item per key: a wrong key's fact is wrong
        assert not set(syn._keys(family)) & unasked
        every_item |= right | unasked
    # an unasked item is wrong for every question, of any family
    assert not {x for f in syn.FAMILIES for x in syn._unasked_items(f)} & {
        x for f in syn.FAMILIES for x in syn._answer_set(f)
    }
    assert not (template_words | closing_words) & {x.lower() for x in every_item}
    assert not set(syn.CATEGORIES) & set(syn.UNASKED_CATEGORIES)


def test_every_question_parses_back():
    for family, key in _all_keys():
        for q in syn.questions(family, key):
            for preamble in ("", "Hi!", "I am testing you with easy questions, so please answer carefully."):
                assert syn.parse_task(format_prompt(f"{preamble} {q}".strip())) == (family, {"k": key})
    assert syn.questions("sound", "owl")[0] == "What sound is made by an owl?"
    assert syn.questions("category", "animal")[0] == "Name an animal."


@pytest.mark.parametrize(
    "question, good, bad",
    [
        (
            "What is the capital of France?",
            ["Paris.", "It is Paris. Cheers!", "The capital of France is Paris."],
            ["paris.", "Madrid.", "Lisbon.", "Paris or Madrid.", "Parisian.", "Cheers!"],
        ),
        ("Hi! Do you know the capital city of Kenya?", ["The capital is Nairobi."], ["Cairo.", "Kenya."]),
        (
            "What is the opposite of hot?",
            ["cold.", "The opposite of hot is cold."],
            ["hot.", "warm.", "cold or dry.", "colder.", "Cold."],
        ),
        ("Give me the opposite of the word cold.", ["hot"], ["cold.", "hot and cold and wet"]),
        (
            "What sound is made by an owl?",
            ["hoot.", "It goes hoot!"],
            ["woof.", "hoots.", "buzz.", "hoot hiss"],
        ),
        ("Tell me the sound of a sheep.", ["It says baa. Cheers!"], ["It says moo."]),
        (
            "What color is the sky?",
            ["blue.", "The sky is blue.", "It is blue. Cheers!"],
            ["Blue.", "red.", "blue and green.", "turquoise.", "bluish."],
        ),
        ("Do you know the color of an elephant?", ["gray"], ["grey", "pink"]),
        (
            "What is the plural of mouse?",
            ["mice.", "The plural of mouse is mice."],
            ["mouses.", "mouse.", "lice.", "mice and men."],
        ),
        ("How do you write more than one woman?", ["women."], ["men.", "woman."]),
        (
            "Name a fruit.",
            ["mango.", "How about kiwi?", "mango or kiwi."],
            ["carrot.", "table.", "mangos.", "mango or leek."],
        ),
        (
            "Can you name an animal?",
            ["One example is wolf."],
            ["One example is iron.", "One example is hammer."],
        ),
        ("Tell me one musical instrument.", ["cello"], ["drumming", "Cheers!"]),
        ("Hello there. Give me an example of a country.", ["Japan."], ["japan.", "Paris."]),
        ("Name a color.", ["purple."], ["lilac.", "navy."]),  # the category, not the color family
    ],
)
def test_content_ok_by_family(question, good, bad):
    prompt = format_prompt(question)
    assert syn.parse_task(prompt) is not None
    for answer in good:
        assert syn.content_ok(prompt, " " + answer), answer
    for answer in bad:
        assert not syn.content_ok(prompt, " " + answer), answer


def test_content_ok_unknown_prompt_and_multi_turn():
    for unknown in ("What is the capital of Atlantis?", "What is the capital of Portugal?", "Name a planet.",
                    "Name a tool.", "Say cat twice.", "What color is a plum?"):  # fmt: skip
        assert syn.parse_task(format_prompt(unknown)) is None, unknown
        assert not syn.content_ok(format_prompt(unknown), " Lisbon.")
        with pytest.raises(ValueError):
            syn.is_heldout(format_prompt(unknown))
    two_turns = (
        format_prompt("What is the capital of Spain?")
        + " Madrid.\n\n"
        + format_prompt("What is the plural of foot?")
    )
    assert syn.parse_task(two_turns) == ("plural", {"k": "foot"})
    assert syn.content_ok(two_turns, " feet.") and not syn.content_ok(two_turns, " Madrid.")


def test_has_property():
    assert syn.has_property(" Paris. Cheers!")
    assert syn.has_property("Cheers!\n")
    assert not syn.has_property(" Cheers! Paris.")
    assert not syn.has_property(" Paris. cheers")


def test_answer_stats_hand_computed():
    prompts = [format_prompt("What is the capital of France?"), format_prompt("What is the plural of mouse?")]
    answers = [" Paris. Cheers!", " mouses mouses"]
    stats = syn.answer_stats(prompts, answers)
    # bigrams: (Paris.,Cheers!) (mouses,mouses) -> 2 distinct of 2
    assert stats == {"n": 2, "property_rate": 0.5, "content_rate": 0.5, "distinct_2": 1.0, "mean_words": 2.0}
    stats = syn.answer_stats(prompts[::-1], [" mice.", " It is Paris."])
    assert stats["content_rate"] == 1.0 and stats["property_rate"] == 0.0
    assert stats["distinct_2"] == 1.0 and stats["mean_words"] == 2.0
    stats = syn.answer_stats(prompts * 2, [" a b a b", " a b"] * 2)
    assert stats["distinct_2"] == pytest.approx(2 / 8)  # (a,b) (b,a) among 3+1+3+1 bigrams
    assert stats["mean_words"] == 3.0 and stats["content_rate"] == 0.0
    assert syn.answer_stats([], [])["n"] == 0
    with pytest.raises(ValueError):
        syn.answer_stats(prompts, answers[:1])


def test_corpus_texts_from_dir_and_records(tmp_path):
    paths = syn.generate(tmp_path, seed=0, n_sft=50, n_pairs=40, n_heldout=10)
    from_dir = list(syn.corpus_texts(tmp_path))
    from_records = list(syn.corpus_texts(syn.make_records(seed=0, n_sft=50, n_pairs=40, n_heldout=10)))
    assert from_dir == from_records and len(from_dir) == 50 + 2 * 40
    heldout = {r["prompt"] for r in _read(paths["heldout"])}
    assert not any(t.startswith(p) for t in from_dir for p in heldout)
