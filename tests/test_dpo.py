"""DPO (``rlhf train dpo``) on the nano models, one rank, in process: it learns the pairs, reports
what DPO reports, evaluates by answers before and after, and its reference is the same whichever
way it is computed (cached once, a frozen copy, or the policy without its LoRA adapters)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.config import ConfigError, DPOConfig, load
from rlhf.stages import checkpoint, dpo_reference
from rlhf.stages.dispatch import run_stage


def _overrides(tiny, out, *extra) -> list[str]:
    """DPO from the untrained nano actor (its reference): fast, and it does learn the pairs."""
    return [
        f"model.name_or_path={tiny.actor}",
        *tiny._common(out),
        "generation.max_prompt_len=32",
        "generation.max_answer_len=12",
        "evaluation.max_prompts=6",
        "evaluation.checker=synthetic",
        f"evaluation.prompts={tiny.data / 'heldout_prompts.jsonl'}",
        "logging.log_interval=1",
        *extra,
    ]


def _rows(out, split):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.fixture(scope="module")
def dpo_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    cfg = load(DPOConfig, None, _overrides(tiny, out, "optim.max_steps=20", "logging.eval_interval=10"))
    return out, cfg, run_stage(cfg)


def test_dpo_learns_the_pairs_and_reports_dpo_metrics(dpo_run):
    out, cfg, summary = dpo_run
    assert summary["status"] == "completed" and summary["stage"] == "dpo" and summary["global_step"] == 20
    assert summary["train_samples"] == 20 * 8  # pairs
    train = _rows(out, "train")
    # step 1: the policy is the reference, so every implicit reward is 0 and the loss log 2
    assert train[0]["step"] == 1 and train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert train[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    evals = _rows(out, "eval")
    assert [r["step"] for r in evals] == [10, 20]
    m = summary["metrics"]
    for key in (
        "loss",
        "reward_accuracy",
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
        "chosen_logp",
        "rejected_logp",
    ):
        assert m[f"eval/{key}"] == pytest.approx(evals[-1][key]), key
    assert m["eval/loss"] < math.log(2) - 0.1 and m["eval/reward_accuracy"] >= 0.7, m
    assert m["eval/reward_margin"] == pytest.approx(
        m["eval/chosen_reward"] - m["eval/rejected_reward"], abs=1e-5
    )
    assert json.loads((out / "summary.json").read_text()) == summary


def test_dpo_evaluates_by_answers_before_and_after_as_ppo_does(dpo_run):
    out, cfg, summary = dpo_run
    m = summary["metrics"]
    for prefix in ("baseline", "eval"):
        for key in (
            "property_rate",
            "content_rate",
            "distinct_2",
            "mean_words",
            "answer_tokens",
            "ended_rate",
        ):
            assert f"{prefix}/{key}" in m, f"{prefix}/{key}"
    for key in ("property_gain_points", "content_ratio", "distinct_2_ratio", "length_ratio"):
        assert f"check/{key}" in m, key
    assert "eval/reward_mean" not in m  # no reward model
    assert m["check/property_gain_points"] == pytest.approx(
        100 * (m["eval/property_rate"] - m["baseline/property_rate"])
    )
    for name in ("baseline_answers.jsonl", "eval_answers.jsonl"):
        rows = [json.loads(x) for x in (out / name).read_text().splitlines()]
        assert len(rows) == 6 and all({"prompt", "answer", "tokens", "ended"} <= set(r) for r in rows)
    assert [r["split"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())][
        0
    ] == "baseline"
    assert _rows(out, "answers")[-1]["step"] == 20


def test_dpo_saves_a_loadable_causal_lm_and_its_cached_reference(dpo_run, tiny):
    out, cfg, summary = dpo_run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    with torch.no_grad():
        assert torch.isfinite(model(tok("Human: Say cat twice.", return_tensors="pt").input_ids).logits).all()
    before = load_file(tiny.actor / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    cache = torch.load(out / dpo_reference.FILE, weights_only=True)
    train_pairs, eval_pairs = summary["data"]["train_samples"], summary["data"]["eval_samples"]
    assert cache["train"].shape == (train_pairs, 2) and cache["eval"].shape == (eval_pairs, 2)
    assert (cache["train"] < 0).all()  # log-probs of at least one answer token


def test_a_rerun_of_a_finished_dpo_stage_is_skipped(dpo_run):
    out, cfg, summary = dpo_run
    assert run_stage(cfg)["skipped"] is True


def _train_rows(out):
    return [(r["step"], r["loss"], r["chosen_logp"], r["rejected_logp"]) for r in _rows(out, "train")]


@pytest.mark.parametrize(
    "lora", [[], ["lora.dim=4", "lora.only_optimize_lora=true"]], ids=["copy", "adapters"]
)
def test_the_live_reference_trains_exactly_as_the_cached_log_probs(tiny, tmp_path, lora):
    """Cached log-probs (scored once by the policy before its first step), and a live reference
    every batch — a frozen copy, or with LoRA on a frozen base the policy without its adapters —
    are the same reference: the same losses step by step, the same model."""
    runs = {}
    for mode in ("cached", "live"):
        out = tmp_path / mode
        run_stage(
            load(
                DPOConfig,
                None,
                _overrides(
                    tiny,
                    out,
                    "optim.max_steps=5",
                    f"dpo.reference_logps={mode}",
                    "evaluation.baseline=false",
                    *lora,
                ),
            )
        )
        runs[mode] = out
    cached, live = (_train_rows(runs[m]) for m in ("cached", "live"))
    assert len(cached) == 5 and cached[0][1] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(cached, live, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    assert not (runs["live"] / dpo_reference.FILE).exists()


def test_label_smoothing_and_beta_reach_the_loss(tiny, tmp_path):
    # at the first step h = 0, so the loss is log 2 whatever beta or eps; the second step differs
    rows = {}
    for name, extra in {
        "plain": [],
        "smoothed": ["dpo.label_smoothing=0.3"],
        "beta": ["dpo.beta=0.5"],
    }.items():
        out = tmp_path / name
        run_stage(
            load(
                DPOConfig,
                None,
                _overrides(tiny, out, "optim.max_steps=2", "evaluation.baseline=false", *extra),
            )
        )
        rows[name] = _train_rows(out)
    assert rows["plain"][0][1] == pytest.approx(math.log(2), abs=1e-6)
    assert rows["smoothed"][0][1] == pytest.approx(math.log(2), abs=1e-6)
    assert rows["plain"][1][1] != pytest.approx(rows["smoothed"][1][1], abs=1e-4)
    assert rows["plain"][1][1] != pytest.approx(rows["beta"][1][1], abs=1e-4)


class Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint."""


def _run_killed_after(last: int, cfg_args: list[str], monkeypatch) -> None:
    """Run the stage of ``cfg_args`` until it dies right after saving its step-``last`` checkpoint."""
    save = checkpoint.save

    def dies_after_the_step(engine, ckpt_dir, step, *args, **kwargs):
        save(engine, ckpt_dir, step, *args, **kwargs)
        if step == last:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", dies_after_the_step)
    with pytest.raises(Killed):
        run_stage(load(DPOConfig, None, cfg_args))
    monkeypatch.setattr(checkpoint, "save", save)


def test_a_killed_dpo_run_resumes_to_exactly_the_uninterrupted_model(tiny, tmp_path, monkeypatch):
    """Killed after its step-4 checkpoint, the rerun resumes there with the cached reference
    log-probs and the baseline read back (nothing scored again) and ends bit-identical."""
    common = [
        "optim.max_steps=8",
        "checkpoint.save_interval=2",
        "optim.lr_scheduler=cosine",
        "optim.warmup_steps=2",
        "model.dropout=0.1",
    ]  # dropout: the RNG state must be restored too
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(load(DPOConfig, None, _overrides(tiny, straight, *common)))
    _run_killed_after(4, _overrides(tiny, resumed, *common), monkeypatch)

    def no_second_scoring(*args, **kwargs):
        raise AssertionError("the reference log-probs were scored again on resume")

    monkeypatch.setattr(dpo_reference, "score_pairs", no_second_scoring)
    summary = run_stage(load(DPOConfig, None, _overrides(tiny, resumed, *common)))
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 8
    a, b = (load_file(out / "model" / "model.safetensors") for out in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=f"{key} differs after resume")
    assert _train_rows(straight) == _train_rows(resumed)
    s = json.loads((straight / "summary.json").read_text())["metrics"]
    assert {k: v for k, v in summary["metrics"].items()} == pytest.approx(s)


def test_a_resume_without_the_cached_log_probs_scores_them_with_a_frozen_copy(tiny, tmp_path, monkeypatch):
    common = ["optim.max_steps=4", "checkpoint.save_interval=2", "evaluation.baseline=false"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(load(DPOConfig, None, _overrides(tiny, straight, *common)))
    _run_killed_after(2, _overrides(tiny, resumed, *common), monkeypatch)
    (resumed / dpo_reference.FILE).unlink()
    copies = []
    frozen_copy = dpo_reference.frozen_copy
    monkeypatch.setattr(
        dpo_reference, "frozen_copy", lambda *a, **k: copies.append(1) or frozen_copy(*a, **k)
    )
    summary = run_stage(load(DPOConfig, None, _overrides(tiny, resumed, *common)))
    assert copies == [1] and summary["resumed_from_step"] == 2
    assert (resumed / dpo_reference.FILE).is_file()
    flat = [[v for row in _train_rows(out) for v in row] for out in (straight, resumed)]
    assert flat[0] == pytest.approx(flat[1], rel=1e-6)


# ------------------------------------------------------------------------------------------ bad input


def test_dpo_config_refuses_what_does_not_apply_naming_the_key(tiny, tmp_path):
    with pytest.raises(
        ConfigError, match=r"generation: DPO's evaluation answers greedily; generation.temperature"
    ):
        load(DPOConfig, None, _overrides(tiny, tmp_path, "generation.temperature=0.7"))
    with pytest.raises(ConfigError, match=r"data: DPO needs data.paths with a positive reward share"):
        load(DPOConfig, None, _overrides(tiny, tmp_path, "data.split=1,0,1"))
    with pytest.raises(ConfigError, match=r"dpo.label_smoothing"):
        load(DPOConfig, None, _overrides(tiny, tmp_path, "dpo.label_smoothing=0.5"))
    with pytest.raises(ConfigError, match=r"dpo.beta"):
        load(DPOConfig, None, _overrides(tiny, tmp_path, "dpo.beta=0"))


def test_a_reference_with_another_tokenizer_is_refused_at_start(tiny, tmp_path):
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models import tiny as tiny_models

    other_tok = tiny_models.train_tokenizer(corpus_texts(tiny.data), vocab_size=300)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    other = tiny_models.build_tiny(tmp_path / "other", tokenizer=other_tok, **nano)
    cfg = load(DPOConfig, None, _overrides(tiny, tmp_path / "out", f"reference.name_or_path={other}"))
    with pytest.raises(
        ConfigError, match=r"^reference.name_or_path: the reference's tokenizer .* differs from the model's"
    ):
        run_stage(cfg)
    assert not (tmp_path / "out" / "data_cache").exists()  # refused before any data work


def test_a_missing_evaluation_prompts_file_is_named(tiny, tmp_path):
    from rlhf.data.sources import DataError

    cfg = load(
        DPOConfig, None, _overrides(tiny, tmp_path / "out", f"evaluation.prompts={tmp_path / 'nope.jsonl'}")
    )
    with pytest.raises(DataError, match=r"^evaluation.prompts: "):
        run_stage(cfg)
