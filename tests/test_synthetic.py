"""Tests of our synthetic preference dataset (rlhf.data.synthetic)."""

from __future__ import annotations

import collections

import pytest

from rlhf.data import synthetic as syn
from rlhf.data.formats import format_prompt


@pytest.fixture(scope="module")
def records():
    return syn.make_records(seed=0, n_sft=2000, n_pairs=2000, n_heldout=200)


def test_generate_is_deterministic(tmp_path):
    a = syn.generate(tmp_path / "a", seed=3, n_sft=50, n_pairs=50, n_heldout=10)
    b = syn.generate(tmp_path / "b", seed=3, n_sft=50, n_pairs=50, n_heldout=10)
    c = syn.generate(tmp_path / "c", seed=4, n_sft=50, n_pairs=50, n_heldout=10)
    assert set(a) == {"sft", "pairs", "heldout"}
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes()
    assert a["pairs"].read_bytes() != c["pairs"].read_bytes()
    rows = syn.read_jsonl(a["pairs"])
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}


def test_sft_answers_are_correct_and_carry_the_property_about_half_the_time(records):
    sft = records["sft"]
    assert all(syn.content_ok(r["prompt"], r["chosen"]) for r in sft)
    rate = sum(syn.has_property(r["chosen"]) for r in sft) / len(sft)
    assert 0.4 <= rate <= 0.6


def test_pairs_value_both_property_and_content(records):
    kinds = collections.Counter()
    for r in records["pairs"]:
        assert syn.content_ok(r["prompt"], r["chosen"]) and syn.has_property(r["chosen"])
        content, prop = syn.content_ok(r["prompt"], r["rejected"]), syn.has_property(r["rejected"])
        kind = r["rejected_kind"]
        kinds[kind] += 1
        assert (content, prop) == {"no_property": (True, False), "wrong_content": (False, True),
                                   "neither": (False, False)}[kind], r
    n = sum(kinds.values())
    assert set(kinds) == set(syn.REJECTED_KINDS)
    assert 0.3 < kinds["no_property"] / n < 0.5 and 0.3 < kinds["wrong_content"] / n < 0.5


def test_heldout_prompts_are_disjoint_and_cover_known_facts(records):
    train_prompts = {r["prompt"] for part in ("sft", "pairs") for r in records[part]}
    held = [r["prompt"] for r in records["heldout"]]
    assert len(held) == 200 and not train_prompts & set(held)
    assert all(syn.is_heldout(p) for p in held)
    assert not any(syn.is_heldout(p) for p in train_prompts)
    trained_facts = {(f, tuple(sorted(v.items()))) for f, v in map(syn.parse_task, train_prompts)}
    for family, fields in map(syn.parse_task, held):
        assert (family, tuple(sorted(fields.items()))) in trained_facts  # the fact itself is taught


@pytest.mark.parametrize(
    "question, good, bad",
    [
        ("What is the capital of France?", "Paris. Hope this helps!", "Madrid. Hope this helps!"),
        ("What is the opposite of hot?", "cold.", "small."),
        ("What color is snow?", "It is white.", "It is black."),
        ("What is the plural of mouse?", "mice", "mouses"),
        ("Name a fruit.", "How about mango?", "How about carrot?"),
    ],
)
def test_content_ok_by_family(question, good, bad):
    prompt = format_prompt(question)
    assert syn.parse_task(prompt) is not None
    assert syn.content_ok(prompt, good)
    assert not syn.content_ok(prompt, bad)


def test_content_ok_rejects_unknown_prompts_and_listing_everything():
    assert not syn.content_ok(format_prompt("Tell me a joke."), "Paris")
    every_capital = " ".join(syn.FACTS["capital"].values())
    assert not syn.content_ok(format_prompt("What is the capital of France?"), every_capital)


def test_answer_stats_by_hand():
    p = format_prompt("What is the capital of Japan?")
    stats = syn.answer_stats([p, p], ["Tokyo. Hope this helps!", "Tokyo Tokyo"])
    assert stats["n"] == 2
    assert stats["property_rate"] == 0.5 and stats["content_rate"] == 1.0
    # bigrams: (Tokyo., Hope) (Hope, this) (this, helps!) (Tokyo, Tokyo): 4 distinct of 4
    assert stats["distinct_2"] == 1.0
    assert stats["mean_length"] == 3.0
    assert syn.answer_stats([], [])["n"] == 0
