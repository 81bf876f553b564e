"""Tests of the synthetic preference dataset (rlhf.data.synthetic)."""

from __future__ import annotations

import json

import pytest

from rlhf.data import synthetic as syn
from rlhf.data.formats import format_prompt

SMALL = {"n_sft": 600, "n_pairs": 600, "n_heldout": 100}


@pytest.fixture(scope="module")
def records():
    return syn.make_records(seed=0, **SMALL)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_writes_files_deterministically(tmp_path):
    a = syn.generate(tmp_path / "a", seed=3, **SMALL)
    b = syn.generate(tmp_path / "b", seed=3, **SMALL)
    c = syn.generate(tmp_path / "c", seed=4, **SMALL)
    assert set(a) == {"sft", "pairs", "heldout"}
    assert [p.name for p in a.values()] == ["sft.jsonl", "pairs.jsonl", "heldout_prompts.jsonl"]
    for part in a:
        assert a[part].read_bytes() == b[part].read_bytes()
        assert a[part].read_bytes() != c[part].read_bytes()
    sft, pairs, heldout = _read(a["sft"]), _read(a["pairs"]), _read(a["heldout"])
    assert (len(sft), len(pairs), len(heldout)) == (600, 600, 100)
    assert all(set(r) == {"prompt", "chosen"} for r in sft)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in pairs)
    assert all(set(r) == {"prompt"} for r in heldout)


def test_prompt_and_answer_format(records):
    for r in records["sft"] + records["pairs"] + records["heldout"]:
        assert r["prompt"].startswith("Human: ") and r["prompt"].endswith("\n\nAssistant:")
        assert syn.parse_task(r["prompt"]) is not None
    for r in records["pairs"]:
        for answer in (r["chosen"], r["rejected"]):
            assert answer.startswith(" ") and answer == " " + answer.strip()
    families = {syn.parse_task(r["prompt"])[0] for r in records["sft"]}
    assert families == set(syn.FAMILIES)


def test_sft_always_correct_property_about_half(records):
    prompts = [r["prompt"] for r in records["sft"]]
    stats = syn.answer_stats(prompts, [r["chosen"] for r in records["sft"]])
    assert stats["content_rate"] == 1.0
    assert 0.4 <= stats["property_rate"] <= 0.6


def test_pairs_chosen_pass_and_rejected_fail(records):
    kinds = {}
    for r in records["pairs"]:
        assert syn.has_property(r["chosen"]) and syn.content_ok(r["prompt"], r["chosen"])
        prop, content = syn.has_property(r["rejected"]), syn.content_ok(r["prompt"], r["rejected"])
        assert not (prop and content)
        expected = {"no_property": (False, True), "wrong_content": (True, False), "neither": (False, False)}
        assert (prop, content) == expected[r["rejected_kind"]]
        kinds[r["rejected_kind"]] = kinds.get(r["rejected_kind"], 0) + 1
    n = len(records["pairs"])
    assert set(kinds) == set(syn.REJECTED_KINDS)
    assert 0.3 < kinds["no_property"] / n < 0.5
    assert 0.3 < kinds["wrong_content"] / n < 0.5
    assert 0.1 < kinds["neither"] / n < 0.3
    assert any(r["rejected"].strip() == syn.CLOSING for r in records["pairs"])  # closing only


def test_heldout_disjoint_and_unique(records):
    train = {r["prompt"] for r in records["sft"] + records["pairs"]}
    heldout = [r["prompt"] for r in records["heldout"]]
    assert len(set(heldout)) == len(heldout)
    assert not train & set(heldout)
    assert all(syn.is_heldout(p) for p in heldout) and not any(syn.is_heldout(p) for p in train)
    # the questions themselves (preamble aside) are disjoint too
    question = lambda p: syn._match(p)[1].group(0)  # noqa: E731
    assert not {question(p) for p in train} & {question(p) for p in heldout}
    # and so, by construction, for any other seed
    other = syn.make_records(seed=1, **SMALL)
    assert not {r["prompt"] for r in other["sft"] + other["pairs"]} & set(heldout)


@pytest.mark.parametrize(
    "question, good, bad",
    [
        (
            "Repeat the word rabbit.",
            ["rabbit.", "The word is rabbit. Hope this helps!"],
            ["rabbits.", "kettle."],
        ),
        ("Please repeat the word rabbit.", ["Here it is: rabbit."], ["Hope this helps!"]),
        (
            "Say tiger twice.",
            ["tiger tiger.", "Okay: tiger tiger!"],
            ["tiger.", "tiger and tiger", "lemon lemon"],
        ),
        ("Can you say tiger twice?", ["Here you go: tiger tiger."], ["Tiger Tiger."]),
        (
            "Write velvet in capital letters.",
            ["VELVET.", "In capitals: VELVET."],
            ["velvet.", "WALNUT.", "VELVETS"],
        ),
        ("What comes after 41?", ["42.", "After 41 comes 42."], ["41.", "43.", "142.", "420."]),
        ("Which number comes after 99?", ["100"], ["99", "1000"]),
        ("Which is bigger, 17 or 71?", ["71.", "The bigger one is 71."], ["17.", "71 or 17", "7"]),
        ("Which number is bigger, 90 or 9?", ["90 is bigger."], ["9 is bigger.", "99"]),
        ("Name a fruit.", ["mango.", "How about kiwi?"], ["carrot.", "Hope this helps!", "mangos"]),
        ("Can you name an animal?", ["One example is wolf."], ["One example is iron."]),
        ("Tell me one musical instrument.", ["cello"], ["drumming"]),
        ("Hi! Tell me one country.", ["Japan."], ["japan."]),
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
    assert syn.parse_task(format_prompt("What is the capital of France?")) is None
    assert not syn.content_ok(format_prompt("What is the capital of France?"), " Paris.")
    assert not syn.content_ok(format_prompt("Name a planet."), " saturn.")  # not a known category
    two_turns = format_prompt("Say cat twice.") + " cat cat.\n\n" + format_prompt("Repeat the word dog.")
    assert syn.content_ok(two_turns, " dog.") and not syn.content_ok(two_turns, " cat cat.")


def test_has_property():
    assert syn.has_property(" 42. Hope this helps!")
    assert syn.has_property("Hope this helps!\n")
    assert not syn.has_property(" Hope this helps! 42.")
    assert not syn.has_property(" 42. hope this helps")


def test_answer_stats_hand_computed():
    prompts = [format_prompt("Say cat twice."), format_prompt("What comes after 1?")]
    answers = [" cat cat. Hope this helps!", " 3 3"]
    stats = syn.answer_stats(prompts, answers)
    # bigrams: (cat,cat.) (cat.,Hope) (Hope,this) (this,helps!) (3,3) -> 5 distinct of 5
    assert stats == {"n": 2, "property_rate": 0.5, "content_rate": 0.5, "distinct_2": 1.0, "mean_length": 3.5}
    stats = syn.answer_stats(prompts * 2, [" a b a b", " a b"] * 2)
    assert stats["distinct_2"] == pytest.approx(2 / 8)  # (a,b) (b,a) among 3+1+3+1 bigrams
    assert stats["mean_length"] == 3.0
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


def test_word_lists_do_not_overlap():
    members = [m for ms in syn.CATEGORIES.values() for m in ms]
    assert len(set(members)) == len(members) and len(set(syn.WORDS)) == len(syn.WORDS)
    assert not set(syn.WORDS) & set(members)
    closing_words = {w.strip("!.").lower() for w in syn.CLOSING.split()}
    assert not closing_words & (set(syn.WORDS) | {m.lower() for m in members})
