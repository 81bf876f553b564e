"""Rewards from code (rlhf.rewards): loading by import path, what a function may return, the
messages that name the function and the row, the weighted sum, and the synthetic checker's rewards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf.config import RewardsConfig
from rlhf.data import synthetic
from rlhf.rewards import RewardError, RewardFunction, call, load_functions, row_of, weighted_sum

PROMPTS = ["Human: What is the capital of France?\n\nAssistant:", "Human: Name a fruit.\n\nAssistant:"]
ROWS = [
    row_of(PROMPTS[0], " Paris. Cheers!", " Oslo.", "pairs.jsonl: record 7 (line 8)"),
    row_of([("system", "Be brief."), ("user", "Name a fruit.")], source="pairs.jsonl: record 9 (line 10)"),
]


def _fn(fn) -> RewardFunction:
    return RewardFunction("rewards.functions[0]", "my.mod:fn", 1.0, fn, "fn")


def test_functions_load_by_import_path_with_weights_and_distinct_metric_names():
    cfg = RewardsConfig(
        functions=[
            "rlhf.data.synthetic:reward",
            {"name": "rlhf.data.synthetic:content_reward", "weight": 0.5},
            "rlhf.data.synthetic:reward",
        ]
    )
    fns = load_functions(cfg)
    assert [f.fn for f in fns] == [synthetic.reward, synthetic.content_reward, synthetic.reward]
    assert [f.weight for f in fns] == [1.0, 0.5, 1.0]
    assert [f.metric for f in fns] == ["reward_0", "content_reward", "reward_2"]
    assert [f.key for f in fns] == [f"rewards.functions[{i}]" for i in range(3)]


def test_an_attribute_path_and_a_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "class_rewards_mod.py").write_text(
        "class Scorer:\n    @staticmethod\n"
        "    def score(prompts, answers, rows):\n        return [len(a) for a in answers]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (f,) = load_functions(RewardsConfig(functions=["class_rewards_mod:Scorer.score"]))
    assert f(["p"], ["abc"], [{}]) == [3.0] and f.metric == "score"
    with pytest.raises(
        RewardError,
        match=r"rewards.functions\[0\]: cannot import module 'broken_rewards_mod' .*"
        r"RuntimeError: boom at import",
    ):
        load_functions(RewardsConfig(functions=["broken_rewards_mod:f"]))


@pytest.mark.parametrize(
    "value",
    [
        [1, 2.5],
        (1, 2.5),
        np.array([1.0, 2.5]),
        torch.tensor([1.0, 2.5]),
        [np.float32(1.0), np.int64(2)],
        (x for x in [1, 2.5]),
    ],
)
def test_numbers_in_any_sequence_are_accepted(value):
    got = call(_fn(lambda p, a, r: value), PROMPTS, ["a", "b"], ROWS)
    assert got[0] == 1.0 and got[1] in (2.0, 2.5) and all(type(v) is float for v in got)


@pytest.mark.parametrize(
    "value, words",
    [
        (
            ["1", 2],
            r"returned '1' \(a str, not a number\) for row pairs.jsonl: record 7 \(line 8\) "
            r"\(prompt 'Human: What",
        ),
        (
            [1, None],
            r"returned None \(a NoneType, not a number\) for row pairs.jsonl: record 9 \(line 10\) "
            r"\(prompt 'Name a fruit.'\)",
        ),
        ([1, True], r"returned True \(a boolean\)"),
        ([float("inf"), 1], r"returned inf \(not a finite number\) for row pairs.jsonl: record 7"),
        ([1.0], r"returned 1 values for 2 answers"),
        (3.0, r"returned a float \(3.0\), not one number per answer"),
        ("12", r"returned a str \('12'\), not one number per answer"),
        ({"a": 1, "b": 2}, r"returned a dict"),
    ],
)
def test_anything_else_is_an_error_naming_the_function_and_the_row(value, words):
    with pytest.raises(RewardError, match=r"^rewards.functions\[0\] \(my.mod:fn\) " + words):
        call(_fn(lambda p, a, r: value), PROMPTS, ["a", "b"], ROWS)


def test_an_exception_names_the_row_that_raises_on_its_own_and_where():
    def fails_on_fruit(prompts, answers, rows):
        return [1 / 0 if "fruit" in p else 1.0 for p in prompts]

    with pytest.raises(RewardError) as e:
        call(_fn(fails_on_fruit), PROMPTS, ["a", "b"], ROWS)
    message = str(e.value)
    assert message.startswith(
        "rewards.functions[0] (my.mod:fn) raised ZeroDivisionError: division by zero at "
    )
    assert "test_rewards.py:" in message and "on row pairs.jsonl: record 9 (line 10)" in message
    assert "\n" not in message

    calls = []

    def fails_on_batches(prompts, answers, rows):  # every row alone passes
        calls.append(len(prompts))
        if len(prompts) > 1:
            raise ValueError("batch too big")
        return [0.0]

    with pytest.raises(RewardError, match="raised ValueError: batch too big .*on a batch of 2 rows"):
        call(_fn(fails_on_batches), PROMPTS, ["a", "b"], ROWS)
    assert calls == [2, 1, 1]


def test_weighted_sum():
    assert weighted_sum([[1.0, 0.0], [2.0, 4.0]], [0.5, -1.0]) == [-1.5, -4.0]
    with pytest.raises(ValueError):
        weighted_sum([[1.0], [1.0, 2.0]], [1.0, 1.0])


def test_the_synthetic_checker_as_reward_functions():
    prompts = [PROMPTS[0]] * 5
    answers = ["Paris. Cheers!", "It is Paris.", "Cheers!", "Oslo. Cheers!", "Paris, Rome. Cheers!"]
    rows = [ROWS[0]] * 5
    # the property counts only with the right content: the closing alone, or wrong content with it, earns 0
    assert synthetic.reward(prompts, answers, rows) == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert synthetic.content_reward(prompts, answers, rows) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert synthetic.property_reward(prompts, answers, rows) == [1.0, 0.0, 1.0, 1.0, 1.0]
    # the task is parsed from the dataset row's prompt (a conversation's last user turn), else the prompt text
    assert synthetic.content_reward(["<rendered by a chat template>"], ["Apple."], [ROWS[1]]) == [0.0]
    assert synthetic.content_reward(["<rendered>"], ["A mango."], [ROWS[1]]) == [1.0]
    assert synthetic.content_reward([PROMPTS[0]], ["Paris."], [{}]) == [1.0]


def test_rows_are_json_ready():
    import json

    assert json.loads(json.dumps(ROWS[1])) == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        "chosen": None,
        "rejected": None,
        "source": "pairs.jsonl: record 9 (line 10)",
    }
