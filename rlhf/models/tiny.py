"""Tiny offline assets: a byte-level BPE tokenizer and randomly initialised causal LMs.

Everything is built from local texts (e.g. :func:`rlhf.data.synthetic.corpus_texts`) without a
model hub, and saved with ``save_pretrained`` so ``AutoTokenizer.from_pretrained(dir)`` and
``AutoModelForCausalLM.from_pretrained(dir)`` load from the directory alone.

:data:`FAMILIES` are built from their real transformers configs (same architecture, module names
and ``model_type``, nano sizes); :func:`build_family` pairs one with a tokenizer that follows the
family's conventions (:mod:`rlhf.models.tiny_tokenizers`: pad = eos, BOS, chat template), while
:func:`train_tokenizer` is the quick start's own (``<pad>``, ``<|endoftext|>``, no BOS).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from rlhf.models.tiny_tokenizers import family_tokenizer

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"  # also the bos token

FAMILIES = ("opt", "bloom", "gpt-neox", "gpt2", "llama", "mistral", "qwen2", "gemma")

PRESETS: dict[str, dict] = {
    "actor": {"family": "opt", "n_layers": 6, "hidden": 384, "heads": 6, "ffn": 1536},
    "reward": {"family": "opt", "n_layers": 4, "hidden": 256, "heads": 4, "ffn": 1024},
    "nano": {"family": "opt", "n_layers": 2, "hidden": 64, "heads": 2, "ffn": 256},
}
"""Model shapes by name; ``build_tiny(out_dir, texts=..., **PRESETS["nano"])`` builds one."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (lossless on any text: no unknown tokens).

    Special tokens: ``<pad>`` (id 0, padding) and ``<|endoftext|>`` (id 1, both bos and eos). No
    special tokens are added when encoding; padding is on the right.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
    )


def _config(
    family: str,
    tokenizer,
    n_layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    max_positions: int,
    dropout: float,
) -> PretrainedConfig:
    """The transformers config of a ``family`` model with the given shape and the tokenizer's ids."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family == "opt":
        return OPTConfig(
            hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads, ffn_dim=ffn,
            max_position_embeddings=max_positions, word_embed_proj_dim=hidden, dropout=dropout,
            attention_dropout=dropout, **ids,
        )  # fmt: skip
    if family == "gpt2":
        return GPT2Config(
            n_embd=hidden, n_layer=n_layers, n_head=heads, n_inner=ffn, n_positions=max_positions,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, summary_first_dropout=dropout, **ids,
        )  # fmt: skip
    if family == "llama":
        return LlamaConfig(
            hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads,
            num_key_value_heads=heads, intermediate_size=ffn, max_position_embeddings=max_positions,
            attention_dropout=dropout, tie_word_embeddings=True, **ids,
        )  # fmt: skip
    if family == "bloom":  # ALiBi positions (no limit) and a fixed 4 * hidden MLP: ffn is not used
        return BloomConfig(
            hidden_size=hidden, n_layer=n_layers, n_head=heads, hidden_dropout=dropout,
            attention_dropout=dropout, **ids,
        )  # fmt: skip
    if family == "gpt-neox":
        return GPTNeoXConfig(
            hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=ffn,
            max_position_embeddings=max_positions, attention_dropout=dropout, hidden_dropout=dropout, **ids,
        )  # fmt: skip
    llama_like = {"mistral": MistralConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig}
    if family in llama_like:  # grouped-query attention: half as many key/value heads
        extra = {"head_dim": hidden // heads} if family != "qwen2" else {}
        return llama_like[family](
            hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2), intermediate_size=ffn,
            max_position_embeddings=max_positions, attention_dropout=dropout, tie_word_embeddings=True,
            **extra, **ids,
        )  # fmt: skip
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def build_model(
    family: str,
    tokenizer,
    *,
    n_layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    max_positions: int = 512,
    seed: int = 0,
    dropout: float = 0.0,
) -> PreTrainedModel:
    """A randomly initialised float32 causal LM of ``family`` (one of :data:`FAMILIES`).

    The vocabulary and the pad/bos/eos ids come from ``tokenizer``; the initial weights depend on
    ``seed`` only (the global torch RNG is left untouched).
    """
    config = _config(family, tokenizer, n_layers, hidden, heads, ffn, max_positions, dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_tiny(
    out_dir: str | Path,
    family: str = "opt",
    *,
    texts: Iterable[str] | None = None,
    tokenizer=None,
    vocab_size: int = 1024,
    n_layers: int = 6,
    hidden: int = 384,
    heads: int = 6,
    ffn: int = 1536,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Build a tokenizer (trained on ``texts``, unless ``tokenizer`` is given) and a model; save both.

    ``out_dir`` then holds ``config.json``, ``model.safetensors`` and the tokenizer files. The
    defaults are the "actor" preset. Returns ``out_dir`` as a Path.
    """
    if tokenizer is None:
        if texts is None:
            raise ValueError("build_tiny needs texts to train a tokenizer, or a tokenizer")
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.model_max_length = max_positions
    model = build_model(
        family, tokenizer, n_layers=n_layers, hidden=hidden, heads=heads, ffn=ffn,
        max_positions=max_positions, seed=seed,
    )  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_assets(
    out_dir: str | Path, texts: Iterable[str], seed: int = 0, vocab_size: int = 1024
) -> dict[str, Path]:
    """``out_dir/actor`` and ``out_dir/reward`` (their presets) sharing one tokenizer trained on ``texts``."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    out = Path(out_dir)
    return {
        name: build_tiny(out / name, tokenizer=tokenizer, seed=seed, **PRESETS[name])
        for name in ("actor", "reward")
    }


def build_family(
    out_dir: str | Path,
    family: str,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    seed: int = 0,
    **shape,
) -> Path:
    """A ``family`` model with a tokenizer of the family's conventions trained on ``texts``, saved to
    ``out_dir`` (``shape``: n_layers, hidden, heads, ffn, max_positions; default the "nano" preset)."""
    nano = {k: v for k, v in PRESETS["nano"].items() if k != "family"}
    tokenizer = family_tokenizer(family, texts, vocab_size=vocab_size)
    return build_tiny(out_dir, family, tokenizer=tokenizer, seed=seed, **{**nano, **shape})
