"""A model that cannot load, or does not fit the run, stops `rlhf train` at once with one line naming
the config key — not a traceback, not a run that "trains" on empty token sequences, not an
IndexError hours in."""

from __future__ import annotations

import shutil

import pytest

from rlhf.cli import main


def _train(capsys, stage: str, overrides: list[str]) -> str:
    code = main(["train", stage, *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_tokenizer(tiny, tmp_path):
    """The actor's weights and config, without its tokenizer files."""
    d = tmp_path / "weights_only"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny.actor / name, d / name)
    return d


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does not exist"),
        ("empty", "is an empty directory"),
        ("file", "is a file, not a model directory"),
        ("no_config", "has no config.json"),
        ("hub", "cannot be loaded"),  # a Hub id that is not in the (offline) cache
    ],
)
def test_a_model_path_that_cannot_load_is_one_line_naming_the_key(tiny, tmp_path, capsys, case, words):
    path = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "file": tmp_path / "model.bin",
        "no_config": tmp_path / "no_config",
        "hub": "rlhf-tests/no-such-model",
    }[case]
    if case == "empty":
        path.mkdir()
    if case == "file":
        path.write_bytes(b"\0")
    if case == "no_config":
        path.mkdir()
        (path / "notes.txt").write_text("not a model")
    line = _train(capsys, "sft", [*tiny.sft_overrides(tmp_path / "out"), f"model.name_or_path={path}"])
    assert line.startswith("error: model.name_or_path: ") and words in line, line


def test_a_model_folder_without_tokenizer_files_is_refused(tiny, tmp_path, capsys, no_tokenizer):
    line = _train(
        capsys, "sft", [*tiny.sft_overrides(tmp_path / "out"), f"model.name_or_path={no_tokenizer}"]
    )
    assert line.startswith("error: model.name_or_path: ") and "has no tokenizer files" in line, line
    assert not (tmp_path / "out" / "model").exists()
    # with a tokenizer given separately, the same folder trains
    from rlhf.config import SFTConfig, load
    from rlhf.stages.dispatch import run_stage

    cfg = load(
        SFTConfig,
        None,
        [
            *tiny.sft_overrides(tmp_path / "out"),
            f"model.name_or_path={no_tokenizer}",
            f"model.tokenizer={tiny.actor}",
            "optim.max_steps=1",
        ],
    )
    assert run_stage(cfg)["status"] == "completed"


def test_ppos_reward_model_path_is_checked_naming_its_key(tiny, tmp_path, capsys):
    line = _train(
        capsys, "ppo", tiny.ppo_overrides(tmp_path / "out", f"reward_model.name_or_path={tmp_path / 'rm'}")
    )
    assert line.startswith("error: reward_model.name_or_path: ") and "does not exist" in line, line


def test_sequences_longer_than_the_models_positions_are_refused_at_start(tiny, tmp_path, capsys):
    # the nano models have 512 positions
    line = _train(capsys, "sft", tiny.sft_overrides(tmp_path / "sft", "data.max_seq_len=1024"))
    assert "data.max_seq_len = 1024 exceeds the 512 positions of model.name_or_path" in line, line
    line = _train(
        capsys,
        "ppo",
        tiny.ppo_overrides(
            tmp_path / "ppo",
            "data.max_seq_len=1024",
            "generation.max_prompt_len=400",
            "generation.max_answer_len=200",
        ),
    )
    assert (
        "generation.max_prompt_len + max_answer_len = 600 exceeds the 512 positions of actor.name_or_path"
        in line
    )
    assert not (tmp_path / "sft" / "data_cache").exists(), "refused before any data work"
