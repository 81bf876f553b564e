"""Resume never loses work and never silently mixes runs: it finds the newest step every engine
completed (whatever DeepSpeed's ``latest`` says), and refuses a checkpoint of other data or
settings unless told to continue anyway."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf.config import ConfigError, PPOConfig, SFTConfig, load
from rlhf.stages import checkpoint
from rlhf.stages.dispatch import run_stage

# ------------------------------------------------------------------------- which checkpoint is complete


def _step(ckpt_dir, step: int, complete: bool = True) -> None:
    d = ckpt_dir / f"step-{step}"
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (d / checkpoint.COMPLETE).write_text("{}")


@pytest.mark.parametrize(
    "latest", ["", "step-", "step-6", None]
)  # empty, torn, naming a partial step, missing
def test_the_newest_complete_checkpoint_wins_whatever_latest_says(tmp_path, latest):
    for step, complete in ((2, True), (4, True), (6, False)):
        _step(tmp_path, step, complete)
    if latest is not None:
        (tmp_path / "latest").write_text(latest)
    assert checkpoint.latest_tag(tmp_path) == "step-4"


def test_checkpoints_from_before_completion_markers_trust_a_readable_latest(tmp_path):
    _step(tmp_path, 2, complete=False)
    _step(tmp_path, 4, complete=False)
    (tmp_path / "latest").write_text("step-2")  # step-4 was being written when the job died
    assert checkpoint.latest_tag(tmp_path) == "step-2"
    (tmp_path / "latest").write_text("step-4")
    assert checkpoint.latest_tag(tmp_path) == "step-4"
    (tmp_path / "latest").write_text("")
    assert checkpoint.latest_tag(tmp_path) is None


def test_engines_resume_and_prune_together(tmp_path):
    actor, critic = tmp_path / "actor", tmp_path / "critic"
    for step in (1, 2):
        _step(actor, step)
    _step(critic, 1)
    _step(critic, 2, complete=False)  # killed while the critic saved iteration 2
    assert checkpoint.newest_common_step([actor, critic]) == 1
    checkpoint.prune([actor, critic], keep_last=1)  # keeps 1 (complete in both) and anything newer
    assert sorted(p.name for p in actor.iterdir()) == ["step-1", "step-2"]
    (critic / "step-2" / checkpoint.COMPLETE).write_text("{}")
    checkpoint.prune([actor, critic], keep_last=1)
    assert [p.name for p in actor.iterdir()] == ["step-2"] and [p.name for p in critic.iterdir()] == [
        "step-2"
    ]


# ------------------------------------------------------------------------------------ PPO killed mid-save


class Killed(Exception):
    """Stands in for SIGKILL at a chosen point."""


def test_ppo_killed_between_the_actor_and_critic_saves_resumes_with_keep_last_1(tiny, tmp_path, monkeypatch):
    out = tmp_path / "ppo"
    overrides = tiny.ppo_overrides(
        out,
        "ppo.max_iterations=3",
        "checkpoint.save_interval=1",
        "checkpoint.keep_last=1",
        "evaluation.baseline=false",
        "evaluation.max_prompts=2",
    )
    save = checkpoint.save

    def dies_saving_the_critic_at_2(engine, ckpt_dir, step, *args, **kwargs):
        if ckpt_dir.name == "critic" and step == 2:
            (ckpt_dir / "step-2").mkdir(parents=True, exist_ok=True)  # half written
            raise Killed
        return save(engine, ckpt_dir, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", dies_saving_the_critic_at_2)
    with pytest.raises(Killed):
        run_stage(load(PPOConfig, None, overrides))
    monkeypatch.setattr(checkpoint, "save", save)
    summary = run_stage(load(PPOConfig, None, overrides))
    assert summary["resumed_from_step"] == 1 and summary["global_step"] == 3
    for engine in ("actor", "critic"):  # keep_last 1: only the final iteration is left
        assert [p.name for p in (out / "checkpoints" / engine).glob("step-*")] == ["step-3"]


# ------------------------------------------------------------------------------ SFT: latest, and settings


def _sft(tiny, data, out, *extra) -> SFTConfig:
    return load(
        SFTConfig,
        None,
        [
            *tiny.sft_overrides(
                out, "optim.max_steps=4", "checkpoint.save_interval=2", "checkpoint.keep_last=3", *extra
            ),
            f"data.sft_only_paths=[{data}]",
        ],
    )


@pytest.fixture
def sft_data(tiny, tmp_path):
    data = tmp_path / "sft.jsonl"
    shutil.copy(tiny.data / "sft.jsonl", data)
    return data


def test_sft_resumes_from_the_newest_complete_checkpoint_when_latest_is_empty(tiny, tmp_path, sft_data):
    out = tmp_path / "out"
    run_stage(_sft(tiny, sft_data, out))
    (out / "checkpoints" / "latest").write_text("")  # killed while DeepSpeed rewrote it
    (out / "checkpoints" / "step-6").mkdir()  # and a checkpoint that never completed
    more = run_stage(_sft(tiny, sft_data, out, "optim.max_steps=6"))
    assert more["resumed_from_step"] == 4 and more["global_step"] == 6


def test_a_resume_with_a_changed_setting_is_refused_naming_it_unless_allowed(tiny, tmp_path, sft_data):
    out = tmp_path / "out"
    run_stage(_sft(tiny, sft_data, out))
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        run_stage(_sft(tiny, sft_data, out, "optim.learning_rate=1e-3"))
    message = str(e.value)
    assert "optim.learning_rate: 0.003 at the checkpoint, 0.001 now" in message
    assert "checkpoint.allow_changed_config" in message
    assert (out / "config.yaml").read_text() == before, "a refused run must not rewrite config.yaml"
    more = run_stage(
        _sft(
            tiny,
            sft_data,
            out,
            "optim.learning_rate=1e-3",
            "optim.max_steps=6",
            "checkpoint.allow_changed_config=true",
        )
    )
    assert more["resumed_from_step"] == 4 and more["global_step"] == 6
    assert any("optim.learning_rate" in w for w in more["warnings"])


def test_a_resume_on_a_shrunk_dataset_is_refused(tiny, tmp_path, sft_data):
    out = tmp_path / "out"
    run_stage(_sft(tiny, sft_data, out, "optim.max_steps=10"))
    (out / "summary.json").unlink()  # as if it had been killed after its last checkpoint
    lines = sft_data.read_text().splitlines()
    sft_data.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with pytest.raises(ConfigError, match=r"data \(train\): \d+ training samples at the checkpoint, \d+ now"):
        run_stage(_sft(tiny, sft_data, out, "optim.max_steps=10"))


def test_more_steps_and_other_logging_may_change(tiny, tmp_path, sft_data):
    out = tmp_path / "out"
    run_stage(_sft(tiny, sft_data, out))
    more = run_stage(
        _sft(tiny, sft_data, out, "optim.max_steps=6", "logging.log_interval=1", "checkpoint.keep_last=1")
    )
    assert more["resumed_from_step"] == 4 and more["warnings"] == []
    saved = json.loads((out / "checkpoints" / "step-6" / "run_settings.json").read_text())
    assert saved["data"]["train"]["train_samples"] == more["data"]["train_samples"]
