"""GRPO / RLOO on one rank in-process (CPU/gloo) with the nano models: the loop, its outputs, rewards
from code and from a reward model, the errors of a failing reward function, and the config's checks."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from grpo_setup import grpo_overrides

from rlhf.config import ConfigError, GRPOConfig, load
from rlhf.rewards import RewardError
from rlhf.stages.dispatch import run_stage

ITERATION_METRICS = {
    "reward_mean",
    "reward_std",
    "group_reward_std",
    "zero_std_groups",
    "loss",
    "clipfrac",
    "approx_kl",
    "kl",
    "answer_tokens",
    "generate_seconds",
    "reward_seconds",
    "train_seconds",
    "generate_tokens_per_second",
    "samples_per_second",
    "lr",
    "reward/reward",
}


def _rows(out, split):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.fixture(scope="module")
def grpo_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    cfg = load(
        GRPOConfig,
        None,
        grpo_overrides(
            tiny, out, "grpo.max_iterations=3", "generation.generation_batches=2", "grpo.rollout_epochs=2"
        ),
    )
    return out, cfg, run_stage(cfg)


def test_grpo_iterates_logs_and_saves_a_model(grpo_run):
    out, cfg, summary = grpo_run
    assert summary["status"] == "completed" and summary["stage"] == "grpo" and summary["global_step"] == 3
    rows = _rows(out, "train")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row.keys() >= ITERATION_METRICS, ITERATION_METRICS - row.keys()
        assert 0 <= row["reward/reward"] <= 2 and row["reward_mean"] == pytest.approx(row["reward/reward"])
        assert row["kl"] >= 0  # k3 is never negative
    # 4 prompts x 2 generation batches x 4 answers per iteration, 2 passes in mini-batches of 8
    assert summary["train_samples"] == 3 * 32
    for prefix in ("baseline", "eval"):
        for key in ("reward_mean", "distinct_2", "mean_words", "property_rate", "content_rate"):
            assert f"{prefix}/{key}" in summary["metrics"], f"{prefix}/{key}"
    assert {
        "check/property_gain_points",
        "check/content_ratio",
        "check/distinct_2_ratio",
        "check/length_ratio",
    } <= summary["metrics"].keys()
    answers = [json.loads(line) for line in (out / "eval_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all(0 <= a["score"] <= 2 for a in answers)
    from rlhf import tools

    actor, tok = tools.load_actor(out / "model")
    assert actor.config.vocab_size >= 512


def test_grpo_rerun_with_the_same_config_is_skipped(grpo_run):
    _, cfg, _ = grpo_run
    assert run_stage(cfg)["skipped"] is True


def test_rloo_with_a_reward_model_and_weighted_functions_lora_and_no_kl(tiny, tmp_path):
    """A reward model (the nano reward checkpoint, fresh head) plus two weighted functions; RLOO with
    batch scaling; LoRA on a frozen base; no KL term (no reference model)."""
    out = tmp_path / "rloo"
    cfg = load(
        GRPOConfig,
        None,
        grpo_overrides(
            tiny,
            out,
            f"reward_model.name_or_path={tiny.reward}",
            "rewards.model_weight=0.5",
            "rewards.functions=[{name: rlhf.data.synthetic:content_reward, weight: 2}, "
            "rlhf.data.synthetic:property_reward]",
            "grpo.advantage=leave_one_out",
            "grpo.scale_rewards=batch",
            "grpo.kl_coef=0",
            "grpo.max_iterations=1",
            "lora.dim=4",
            "lora.only_optimize_lora=true",
            "evaluation.baseline=false",
        ),
    )
    summary = run_stage(cfg)
    row = _rows(out, "train")[0]
    assert {"reward/model", "reward/content_reward", "reward/property_reward"} <= row.keys()
    expected = 0.5 * row["reward/model"] + 2 * row["reward/content_reward"] + row["reward/property_reward"]
    assert row["reward_mean"] == pytest.approx(expected, abs=1e-5)
    assert row["kl"] == 0
    assert summary["status"] == "completed" and (out / "model" / "model.safetensors").is_file()


def test_the_reference_is_the_actor_without_adapters_only_with_lora_on_a_frozen_base(tiny, tmp_path):
    from rlhf.stages.grpo_models import reference_kind

    def kind(*extra):
        return reference_kind(load(GRPOConfig, None, grpo_overrides(tiny, tmp_path, *extra)))

    assert kind() == "copy"
    assert kind("grpo.kl_coef=0") == "none"
    assert kind("lora.dim=4", "lora.only_optimize_lora=true") == "adapters"
    assert kind("lora.dim=4") == "copy"  # the base trains: without adapters it is no longer the SFT model
    assert (
        kind("lora.dim=4", "lora.only_optimize_lora=true", f"reference.name_or_path={tiny.actor}") == "copy"
    )


# --------------------------------------------------------------------------- reward functions that fail

FAILING = """
def on_france(prompts, answers, rows):
    out = []
    for row in rows:
        if "France" in row["prompt"]:
            raise ValueError("no capitals today")
        out.append(1.0)
    return out


def a_string(prompts, answers, rows):
    return ["high"] * len(answers)


def a_bool(prompts, answers, rows):
    return [True] * len(answers)


def too_few(prompts, answers, rows):
    return [1.0]


def nan(prompts, answers, rows):
    return [float("nan")] * len(answers)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_mod.py").write_text(textwrap.dedent(FAILING))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards_mod"
    sys.modules.pop("user_rewards_mod", None)


def test_a_reward_function_that_raises_stops_the_stage_naming_it_and_the_row(tiny, tmp_path, user_module):
    # a data file whose one France question is its record 2, so the message can name it
    data = tmp_path / "prompts.jsonl"
    questions = [
        "What is the capital of Spain?",
        "What is the capital of Japan?",
        "What is the capital of France?",
        "What is the capital of Peru?",
        "Name a fruit.",
        "Name a metal.",
        "Name a shape.",
        "Name a color.",
    ]
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Human: {q}\n\nAssistant:", "chosen": " Yes.", "rejected": " No."}) + "\n"
            for q in questions
        )
    )
    cfg = load(
        GRPOConfig,
        None,
        grpo_overrides(
            tiny,
            tmp_path / "out",
            f"data.paths=[{data}]",
            "data.split=0,0,1",
            "data.eval_fraction=0",
            f"rewards.functions=[rlhf.data.synthetic:reward, {user_module}:on_france]",
            "evaluation.baseline=false",
            "grpo.max_iterations=2",
        ),
    )
    with pytest.raises(RewardError) as e:
        run_stage(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert f"rewards.functions[1] ({user_module}:on_france) raised ValueError: no capitals today" in message
    assert f"{data}: record 2 (line 3)" in message and "What is the capital of France?" in message


@pytest.mark.parametrize(
    "name, words",
    [
        ("a_string", r"returned 'high' \(a str, not a number\) for row .*pairs.jsonl: record"),
        ("a_bool", r"returned True \(a boolean\)"),
        ("too_few", r"returned 1 values for 16 answers"),
        ("nan", r"returned nan \(not a finite number\)"),
    ],
)
def test_a_reward_function_that_returns_no_numbers_stops_the_stage(tiny, tmp_path, user_module, name, words):
    cfg = load(
        GRPOConfig,
        None,
        grpo_overrides(
            tiny, tmp_path / "out", f"rewards.functions=[{user_module}:{name}]", "evaluation.baseline=false"
        ),
    )
    with pytest.raises(RewardError, match=rf"rewards.functions\[0\] \({user_module}:{name}\) {words}"):
        run_stage(cfg)


@pytest.mark.parametrize(
    "name, words",
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("rlhf.data.synthetic:no_such_function", "'rlhf.data.synthetic' has no attribute 'no_such_function'"),
        ("rlhf.data.synthetic:CLOSING", "is a str, not a function"),
    ],
)
def test_a_reward_function_that_is_not_there_is_named_before_any_model_loads(tiny, tmp_path, name, words):
    from rlhf.stages.grpo import GRPOTrainer

    cfg = load(GRPOConfig, None, grpo_overrides(tiny, tmp_path, f"rewards.functions=[{name}]"))
    with pytest.raises(RewardError, match=rf"rewards.functions\[0\]: .*{words}"):
        GRPOTrainer(cfg)


# --------------------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "override, message",
    [
        ("rewards.functions=[]", "rewards: no reward source"),
        ("rewards.functions=[not-a-path]", r"rewards.functions.0.name: expected an import path"),
        ("rewards.functions=[{name: rlhf.data.synthetic:reward, weight: .nan}]", "must be a finite number"),
        ("optim.per_device_train_batch_size=5", "must divide the answers of one iteration"),
        ("grpo.group_size=1", "grpo.group_size: Input should be greater than or equal to 2"),
        ("grpo.advantage=mean", "grpo.advantage"),
        ("grpo.kl_estimator=k4", "grpo.kl_estimator"),
        ("generation.max_answer_len=60", "exceeds data.max_seq_len"),
        ("data.split=1,1,0", "GRPO needs data.paths with a positive PPO"),
    ],
)
def test_grpo_config_checks(tiny, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load(GRPOConfig, None, grpo_overrides(tiny, tmp_path, override))


def test_a_reward_model_with_no_weight_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="rewards.model_weight: 0 with a reward_model set"):
        load(
            GRPOConfig,
            None,
            grpo_overrides(
                tiny, tmp_path, f"reward_model.name_or_path={tiny.reward}", "rewards.model_weight=0"
            ),
        )


def test_grpo_config_sections_data_and_round_trip(tiny, tmp_path):
    from rlhf.config import STAGES, dump

    cfg = load(GRPOConfig, None, grpo_overrides(tiny, tmp_path, f"reward_model.name_or_path={tiny.reward}"))
    assert STAGES["grpo"] is GRPOConfig and cfg.tokenizer_model is cfg.actor
    assert [name for name, _ in cfg.model_sections()] == ["actor", "reward_model"]
    with_ref = load(GRPOConfig, None, grpo_overrides(tiny, tmp_path, f"reference.name_or_path={tiny.actor}"))
    assert [name for name, _ in with_ref.model_sections()] == ["actor", "reference"]
    assert cfg.data_requests() == {"prompts": {"phase": 2, "max_prompt_len": 32}}
    (tmp_path / "grpo.yaml").write_text(dump(cfg))
    assert load(GRPOConfig, tmp_path / "grpo.yaml") == cfg


def test_rlhf_config_grpo_prints_every_default(tiny, tmp_path, capsys):
    from rlhf.cli import main

    assert main(["config", "grpo", *grpo_overrides(tiny, tmp_path)]) == 0
    printed = capsys.readouterr().out
    for key in (
        "group_size: 4",
        "advantage: group",
        "kl_estimator: k3",
        "model_weight: 1.0",
        "name: rlhf.data.synthetic:reward",
    ):
        assert key in printed


# ------------------------------------------------------------------------------------ kill and resume


class Killed(Exception):
    """Stands in for SIGKILL at a chosen point."""


def test_grpo_killed_after_a_checkpoint_resumes_where_an_uninterrupted_run_would(tiny, tmp_path, monkeypatch):
    """Sampling, the data position, the optimizer and the lr schedule all continue from the checkpoint:
    the resumed run's metrics and final weights equal the uninterrupted run's exactly."""
    from test_multirank import assert_same_saved_model

    from rlhf.stages import checkpoint

    def overrides(out):
        # the untrained actor earns nothing from the checker: the reward model's random head gives the signal
        return grpo_overrides(
            tiny,
            out,
            "grpo.max_iterations=4",
            "checkpoint.save_interval=1",
            "evaluation.baseline=false",
            "evaluation.max_prompts=2",
            "optim.lr_scheduler=cosine",
            "actor.dropout=0.1",
            f"reward_model.name_or_path={tiny.reward}",
        )

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(load(GRPOConfig, None, overrides(straight)))
    save = checkpoint.save

    def dies_after_saving_2(engine, ckpt_dir, step, *args, **kwargs):
        tag = save(engine, ckpt_dir, step, *args, **kwargs)
        if step == 2:
            raise Killed
        return tag

    monkeypatch.setattr(checkpoint, "save", dies_after_saving_2)
    with pytest.raises(Killed):
        run_stage(load(GRPOConfig, None, overrides(resumed)))
    monkeypatch.setattr(checkpoint, "save", save)
    summary = run_stage(load(GRPOConfig, None, overrides(resumed)))
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 4
    assert_same_saved_model(straight, resumed)

    def rows(out):
        return [
            (r["step"], r["reward_mean"], r["loss"], r["answer_tokens"], r["lr"]) for r in _rows(out, "train")
        ]

    assert rows(straight) == rows(resumed) and len(rows(straight)) == 4
    assert all(
        r[2] != 0 for r in rows(straight)
    )  # it learnt something (else equal weights would prove nothing)
