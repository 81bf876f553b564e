"""ZeRO-3 export of a model whose vocabulary is not a multiple of 8 (GPT-2's 50257, our tiny
tokenizer's 982): the embedding size must be read from the partitioned parameter's full shape, so
the trained model, its export skeleton and a reload agree — not a crash at export on every run."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.config import STAGES, load
from rlhf.stages.dispatch import run_stage


@pytest.fixture(scope="module")
def odd_vocab(tiny, tmp_path_factory):
    """Tiny actor and reward models (sharing a tokenizer) whose vocabulary is not a multiple of 8."""
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models import tiny as tiny_models

    root = tmp_path_factory.mktemp("odd_vocab")
    tokenizer = tiny_models.train_tokenizer(corpus_texts(tiny.data), vocab_size=996)
    assert len(tokenizer) % 8, len(tokenizer)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    actor = tiny_models.build_tiny(root / "actor", tokenizer=tokenizer, **nano)
    reward = tiny_models.build_tiny(root / "reward", tokenizer=tokenizer, seed=1, **nano)
    return actor, reward, len(tokenizer)


def _overrides(tiny, stage, odd_vocab, out, *extra):
    actor, reward, _ = odd_vocab
    if stage == "sft":
        return [*tiny.sft_overrides(out, *extra), f"model.name_or_path={actor}"]
    return [*tiny.reward_overrides(out, *extra), f"model.name_or_path={reward}"]


def _assert_exported(out, vocab: int) -> None:
    weights = load_file(out / "model" / "model.safetensors")
    rows = {k: t.shape[0] for k, t in weights.items() if "embed_tokens" in k or "lm_head" in k}
    assert rows and set(rows.values()) == {vocab}, rows
    assert len(AutoTokenizer.from_pretrained(out / "model")) == vocab


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_zero3_on_one_rank_exports_an_odd_vocabulary(tiny, odd_vocab, tmp_path, stage):
    out = tmp_path / stage
    cfg = load(
        STAGES[stage],
        None,
        _overrides(tiny, stage, odd_vocab, out, "optim.max_steps=2", "deepspeed.zero_stage=3"),
    )
    assert run_stage(cfg)["status"] == "completed"
    _assert_exported(out, odd_vocab[2])
    if stage == "sft":
        assert AutoModelForCausalLM.from_pretrained(out / "model").config.vocab_size == odd_vocab[2]


@pytest.mark.slow
def test_zero3_on_two_ranks_exports_an_odd_vocabulary(tiny, odd_vocab, tmp_path):
    from test_multirank import assert_ranks_agree, run_two_ranks

    out = tmp_path / "out"
    args = _overrides(
        tiny,
        "sft",
        odd_vocab,
        out,
        "optim.max_steps=4",
        "deepspeed.zero_stage=3",
        "deepspeed.stage3_param_persistence_threshold=0",
        "deepspeed.dist_timeout_seconds=120",
    )
    results = run_two_ranks("mpirun", "sft", args, tmp_path)
    assert_ranks_agree(results)
    assert results[0]["summary"]["global_step"] == 4
    _assert_exported(out, odd_vocab[2])
