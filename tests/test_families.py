"""Every model family through SFT -> reward model -> PPO with LoRA on the family's own module names.

Nano models of the real architectures (OPT, BLOOM, GPT-NeoX, GPT-2, Llama, Mistral, Qwen2, Gemma),
each with a tokenizer that follows the family's conventions (:mod:`rlhf.models.tiny_tokenizers`): no
pad token (pad = eos) for GPT-2, GPT-NeoX, Llama and Mistral; a BOS before every text for OPT,
Llama, Mistral and Gemma; chat templates for Llama (``[INST]``, eos inside multi-turn prompts),
Qwen2 (ChatML, eos ``<|im_end|>``) and Gemma (end-of-turn is not the eos). A few steps each.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from rlhf.config import PPOConfig, RewardConfig, SFTConfig, load
from rlhf.config.parts import LoraConfig
from rlhf.data.synthetic import corpus_texts
from rlhf.models import tiny as tiny_models
from rlhf.models.families import LORA_TARGETS, lora_targets
from rlhf.models.lora import apply_lora
from rlhf.stages.dispatch import run_stage

TEMPLATED = {"llama", "qwen2", "gemma"}
ADDS_BOS = {"opt", "llama", "mistral", "gemma"}


def _linear_names(model: torch.nn.Module) -> set[str]:
    return {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))
    }


@pytest.mark.parametrize("model_type", sorted(LORA_TARGETS))
def test_default_lora_targets_are_every_projection_of_the_family(model_type):
    """The table names exactly the linear layers of each family's blocks (transformers' own classes),
    never the output head, so peft finds every name and adapts every projection."""
    small = {
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = AutoConfig.for_model(model_type, **small)
    if model_type == "gpt2":
        config.n_embd, config.n_head = 64, 4
    model = AutoModelForCausalLM.from_config(config)
    assert _linear_names(model) - {"lm_head", "embed_out"} == set(LORA_TARGETS[model_type])


def test_unknown_families_adapt_all_linear_and_targets_are_overridable(tiny):
    assert lora_targets("t5") == "all-linear" and lora_targets(None) == "all-linear"
    model = AutoModelForCausalLM.from_pretrained(tiny.actor)
    wrapped = apply_lora(model, LoraConfig(dim=2, target_modules=["q_proj"]), "CAUSAL_LM")
    assert {
        n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in wrapped.named_parameters() if "lora_A" in n
    } == {"q_proj"}


@pytest.fixture(scope="module")
def texts(tiny):
    return list(corpus_texts(tiny.data))


def _rows(out, split):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_family_runs_sft_reward_ppo_with_lora(family, tiny, texts, tmp_path):
    actor = tiny_models.build_family(tmp_path / "actor", family, texts, vocab_size=400, seed=0)
    reward = tiny_models.build_family(tmp_path / "reward", family, texts, vocab_size=400, seed=1)
    tok = AutoTokenizer.from_pretrained(actor)
    assert (tok.pad_token is None) == (family in {"gpt2", "gpt-neox", "llama", "mistral"})
    common = [
        "data.max_seq_len=96",
        "optim.max_steps=4",
        "logging.log_interval=1",
        "logging.eval_interval=4",
        "data.eval_fraction=0.02",
    ]

    sft_out = tmp_path / "sft"
    sft = load(
        SFTConfig,
        None,
        tiny.sft_overrides(
            sft_out,
            *common,
            f"model.name_or_path={actor}",
            "lora.dim=4",
            "lora.only_optimize_lora=true",
            "lora.learning_rate=1e-2",
        ),
    )
    summary = run_stage(sft)
    assert summary["status"] == "completed", summary
    # LoRA adapted the family's own projections (merged on export): exactly those weights changed
    saved = dict(AutoModelForCausalLM.from_pretrained(sft_out / "model").named_parameters())
    base = AutoModelForCausalLM.from_pretrained(actor)
    changed = {n.rsplit(".", 2)[-2] for n, p in base.named_parameters() if not torch.equal(p, saved[n])}
    assert changed == set(LORA_TARGETS[base.config.model_type]), changed
    # the samples start with the tokenizer's BOS exactly when it adds one; templated families use theirs
    import datasets

    cache = sorted((sft_out / "data_cache").glob("*/train"))
    first = datasets.load_from_disk(str(cache[0]))[0]["input_ids"]
    assert (first[0] == tok.bos_token_id and first[1] != tok.bos_token_id) == (family in ADDS_BOS), first[:3]
    text = tok.decode(first)
    assert ("Human:" not in text) == (family in TEMPLATED), text

    rm_out = tmp_path / "reward_out"
    rm = load(
        RewardConfig,
        None,
        tiny.reward_overrides(
            rm_out, *common, f"model.name_or_path={reward}", "lora.dim=4", "optim.learning_rate=1e-3"
        ),
    )
    summary = run_stage(rm)
    assert summary["status"] == "completed" and "eval/accuracy" in summary["metrics"], summary

    ppo_out = tmp_path / "ppo"
    ppo = load(
        PPOConfig,
        None,
        tiny.ppo_overrides(
            ppo_out,
            f"actor.name_or_path={sft_out / 'model'}",
            f"critic.name_or_path={rm_out / 'model'}",
            "data.max_seq_len=96",
            "generation.max_prompt_len=64",
            "generation.max_answer_len=12",
            "lora.dim=4",
            "critic_lora.dim=4",
            "ppo.max_iterations=1",
            "evaluation.max_prompts=4",
            "evaluation.baseline=false",
            "data.eval_fraction=0.02",
        ),
    )
    summary = run_stage(ppo)
    assert summary["status"] == "completed", summary
    [row] = _rows(ppo_out, "train")
    assert row["answer_tokens"] >= 1 and row["kl"] == row["kl"]  # not NaN
    assert (ppo_out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_lora_under_zero3_in_bf16(tiny, texts, tmp_path):
    """ZeRO-3 partitions the base weights in bf16 as they load, peft adds its adapters in float32
    afterwards: the adapters take the base's dtype, so DeepSpeed's ZeRO-3 optimizer accepts them
    (it asserted one dtype per group: examples/llama2-7b-lora-2x8.yaml could not start)."""
    actor = tiny_models.build_family(tmp_path / "actor", "llama", texts, vocab_size=400)
    zero3 = [
        "deepspeed.zero_stage=3",
        "deepspeed.dtype=bf16",
        "lora.dim=4",
        "optim.max_steps=2",
        "data.max_seq_len=96",
        "data.eval_fraction=0.02",
    ]
    sft = run_stage(
        load(SFTConfig, None, tiny.sft_overrides(tmp_path / "sft", *zero3, f"model.name_or_path={actor}"))
    )
    assert sft["status"] == "completed"
    rm = run_stage(
        load(
            RewardConfig, None, tiny.reward_overrides(tmp_path / "rm", *zero3, f"model.name_or_path={actor}")
        )
    )
    assert rm["status"] == "completed"
    ppo = run_stage(
        load(
            PPOConfig,
            None,
            tiny.ppo_overrides(
                tmp_path / "ppo",
                *zero3[:3],
                "critic_lora.dim=4",
                "data.max_seq_len=96",
                "ppo.max_iterations=1",
                "evaluation.baseline=false",
                "evaluation.max_prompts=2",
                f"actor.name_or_path={tmp_path / 'sft' / 'model'}",
                f"critic.name_or_path={tmp_path / 'rm' / 'model'}",
            ),
        )
    )
    assert ppo["status"] == "completed"
