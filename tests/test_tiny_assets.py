"""Tests of the tiny offline tokenizer and model builders (rlhf.models.tiny)."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.data.synthetic import corpus_texts, make_records
from rlhf.models import tiny

NANO = {k: v for k, v in tiny.PRESETS["nano"].items() if k != "family"}


@pytest.fixture(scope="module")
def texts():
    return list(corpus_texts(make_records(seed=0, n_sft=300, n_pairs=300, n_heldout=10)))


@pytest.fixture(scope="module")
def tokenizer(texts):
    return tiny.train_tokenizer(texts, vocab_size=512)


def test_tokenizer_special_tokens_and_round_trip(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    for text in [
        "Human: Say cat twice.\n\nAssistant: cat cat.",
        "  two  spaces\n\n\nand é ünïcode 😀\t",
        " x",
    ]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # trained merges make the chat format cheap: far fewer tokens than bytes
    prompt = "Human: Repeat the word apple.\n\nAssistant:"
    assert len(tokenizer(prompt)["input_ids"]) < len(prompt) / 2


def test_tokenizer_deterministic_and_pads_right(texts, tokenizer):
    assert tiny.train_tokenizer(texts, vocab_size=512).get_vocab() == tokenizer.get_vocab()
    batch = tokenizer(["a", "a b c d"], padding=True)
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id and batch["attention_mask"][0][0] == 1


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_each_family_builds_and_runs(family, tokenizer):
    model = tiny.build_model(family, tokenizer, **NANO)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer("Human: Name a fruit.\n\nAssistant:")["input_ids"]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 3


def test_build_model_seeded_without_touching_global_rng(tokenizer):
    state = torch.random.get_rng_state()
    a, b = (tiny.build_model("opt", tokenizer, seed=1, **NANO) for _ in range(2))
    c = tiny.build_model("opt", tokenizer, seed=2, **NANO)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.config.dropout == 0.0


def test_unknown_family_rejected(tokenizer):
    with pytest.raises(ValueError, match="unknown model family"):
        tiny.build_model("t5", tokenizer, **NANO)


def test_build_tiny_save_load_identical_logits(tmp_path, texts):
    start = time.perf_counter()
    out = tiny.build_tiny(tmp_path / "nano", texts=texts, vocab_size=512, seed=0, **tiny.PRESETS["nano"])
    assert time.perf_counter() - start < 3.0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    rebuilt = tiny.build_model("opt", tok, seed=0, **NANO)
    text = "Human: What comes after 41?\n\nAssistant: 42."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token == "<pad>" and tok.padding_side == "right" and len(tok) == 512
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, rebuilt(input_ids=ids).logits)
    # same seed, same bytes
    again = tiny.build_tiny(tmp_path / "again", texts=texts, vocab_size=512, seed=0, **tiny.PRESETS["nano"])
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_build_tiny_needs_texts_or_tokenizer(tmp_path):
    with pytest.raises(ValueError):
        tiny.build_tiny(tmp_path, **tiny.PRESETS["nano"])


def test_build_tiny_assets_presets_share_tokenizer(tmp_path, texts):
    paths = tiny.build_tiny_assets(tmp_path, texts, seed=0)
    assert set(paths) == {"actor", "reward"}
    assert (paths["actor"] / "tokenizer.json").read_bytes() == (
        paths["reward"] / "tokenizer.json"
    ).read_bytes()
    actor = AutoModelForCausalLM.from_pretrained(paths["actor"])
    reward = AutoModelForCausalLM.from_pretrained(paths["reward"])
    assert actor.config.model_type == reward.config.model_type == "opt"
    assert (actor.config.num_hidden_layers, actor.config.hidden_size, actor.config.ffn_dim) == (6, 384, 1536)
    assert (reward.config.num_hidden_layers, reward.config.hidden_size, reward.config.ffn_dim) == (
        4,
        256,
        1024,
    )
    n_actor = sum(p.numel() for p in actor.parameters())
    assert 9e6 < n_actor < 13e6
    # the BPE vocabulary is capped at 1024; a small corpus may saturate below it
    vocab = len(AutoTokenizer.from_pretrained(paths["actor"]))
    assert 256 < vocab <= 1024
    assert actor.get_input_embeddings().weight.shape[0] == vocab
