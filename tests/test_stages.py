"""Tiny SFT and reward-model runs in-process (one rank, CPU/gloo)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import RewardConfig, SFTConfig, load
from rlhf.stages.dispatch import run_stage


def _rows(out, split):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.fixture(scope="module")
def sft_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    cfg = load(
        SFTConfig,
        None,
        tiny.sft_overrides(
            out, "optim.max_steps=24", "logging.eval_interval=6", "checkpoint.save_interval=6"
        ),
    )
    return out, cfg, run_stage(cfg)


def test_sft_learns_and_saves_a_loadable_model(sft_run):
    out, cfg, summary = sft_run
    assert summary["status"] == "completed" and summary["global_step"] == 24
    evals = _rows(out, "eval")
    assert [r["step"] for r in evals] == [6, 12, 18, 24]
    assert evals[-1]["perplexity"] < evals[0]["perplexity"] * 0.8, evals
    assert summary["metrics"]["eval/perplexity"] == pytest.approx(evals[-1]["perplexity"])
    assert len(_rows(out, "train")) == 12  # log_interval=2
    assert json.loads((out / "summary.json").read_text()) == summary

    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok("Human: Say apple twice.\n\nAssistant:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    # keep_last=2: only the two newest checkpoints remain
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-18", "step-24"]
    assert (out / "config.yaml").is_file()


def test_sft_rerun_skips_finished_stage_and_continues_when_extended(sft_run):
    out, cfg, first = sft_run
    before = (out / "model" / "model.safetensors").read_bytes()
    again = run_stage(cfg)
    assert again["skipped"] is True and again["global_step"] == 24
    assert (out / "model" / "model.safetensors").read_bytes() == before

    longer = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 28})})
    more = run_stage(longer)
    assert "skipped" not in more
    assert more["resumed_from_step"] == 24 and more["global_step"] == 28
    assert more["data"]["reused"] is True
    assert (out / "model" / "model.safetensors").read_bytes() != before
    assert [r["step"] for r in _rows(out, "eval")][-2:] == [24, 28]


def test_reward_model_learns_preferences(tiny, tmp_path):
    cfg = load(RewardConfig, None, tiny.reward_overrides(tmp_path, "optim.epochs=2"))
    summary = run_stage(cfg)
    m = summary["metrics"]
    assert m["eval/accuracy"] >= 0.8, m
    assert m["eval/chosen_score"] > m["eval/rejected_score"]

    # Saved as a standard sequence-classification checkpoint; the score position comes from the mask,
    # so no padding setting travels with it.
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert hf.config.num_labels == 1 and not hasattr(hf.config, "num_padding_at_beginning")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    good = "Human: Say cat twice.\n\nAssistant: cat cat. Cheers!"
    bad = "Human: Say cat twice.\n\nAssistant: Cheers!"
    batch = tok([good, bad], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = hf(**batch).logits.squeeze(-1)
    assert scores.shape == (2,)


def test_lora_sft_merges_adapters_into_saved_model(tiny, tmp_path):
    cfg = load(
        SFTConfig,
        None,
        tiny.sft_overrides(
            tmp_path,
            "optim.max_steps=6",
            "lora.dim=4",
            "lora.only_optimize_lora=true",
            "lora.learning_rate=1e-2",
        ),
    )
    summary = run_stage(cfg)
    assert summary["status"] == "completed"
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny.actor)
    names = dict(saved.named_parameters())
    assert not any("lora" in n for n in names), "adapters must be merged, not saved"
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, names[n])]
    # only the LoRA-targeted linear layers changed; embeddings and norms are frozen
    assert changed and all("proj" in n or "fc" in n for n in changed), changed


def test_gradient_checkpointing_tensorboard_and_static_padding(tiny, tmp_path):
    cfg = load(
        SFTConfig,
        None,
        tiny.sft_overrides(
            tmp_path,
            "optim.max_steps=4",
            "model.gradient_checkpointing=true",
            "logging.tensorboard=true",
            "data.pad_to_max_length=true",
            "optim.gradient_accumulation_steps=2",
            "deepspeed.dtype=bf16",
        ),
    )
    summary = run_stage(cfg)
    assert summary["global_step"] == 4
    assert summary["train_samples"] == 4 * 2 * 8
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert saved.dtype == torch.bfloat16


def test_skipped_records_and_an_empty_eval_split_reach_the_summary_and_a_warning(tiny, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        (tiny.data / "sft.jsonl").read_text() + "not json\n" + '{"prompt": "Human: Hi\\n\\nAssistant:"}\n'
    )
    cfg = load(
        SFTConfig,
        None,
        [
            *tiny.sft_overrides(
                tmp_path / "out", "optim.max_steps=1", "data.eval_fraction=0", "data.on_bad_record=skip"
            ),
            f"data.sft_only_paths=[{data}]",
        ],
    )
    summary = run_stage(cfg)
    assert summary["data"]["skipped_bad_records"] == 2
    assert summary["data"]["eval_samples"] == 0 and summary["metrics"] == {}
    warnings = summary["warnings"]
    assert any("skipped 2 bad records" in w for w in warnings), warnings
    assert any("the eval split is empty" in w for w in warnings), warnings
    err = capsys.readouterr().err
    assert "warning: data (train): skipped 2 bad records" in err and "the eval split is empty" in err
