"""`rlhf run`: the plan (pure), stage commands, and the runner itself with fast fake stages."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf.cli import main
from rlhf.runner import launch
from rlhf.runner.plan import Machine, PlanError, StagePlan, StageShape, cpu_cores, make_plan, threads_for
from rlhf.runner.procs import exit_reason, group_members, log_tail
from rlhf.runner.progress import Display, read_progress, stage_line
from rlhf.runner.runner import RunError, RunOptions, run_manifest

FAKE = Path(__file__).parent / "scripts" / "fake_stage.py"

# ----------------------------------------------------------------------------------------- the plan


def shapes(sft: StageShape = StageShape(), reward: StageShape = StageShape(), ppo: StageShape = StageShape()):
    return {"sft": sft, "reward": reward, "ppo": ppo}


def waves(plan) -> list[list[str]]:
    return [[p.stage for p in wave] for wave in plan.waves]


def test_cpu_stages_side_by_side_when_their_cores_fit():
    plan = make_plan(
        shapes(StageShape(cpu=2), StageShape(cpu=2), StageShape(cpu=4)),
        "cpu",
        Machine(4),
        ["sft", "reward", "ppo"],
    )
    assert waves(plan) == [["sft", "reward"], ["ppo"]]
    assert [plan.get(s).threads for s in ("sft", "reward", "ppo")] == [2, 2, 4]
    assert "side by side" in plan.note


def test_cpu_stages_one_after_the_other_when_they_do_not_fit():
    plan = make_plan(
        shapes(StageShape(cpu=4), StageShape(cpu=4)), "cpu", Machine(6), ["sft", "reward", "ppo"]
    )
    assert waves(plan) == [["sft"], ["reward"], ["ppo"]]
    assert (
        plan.get("sft").threads == 4 and plan.get("ppo").threads == 6
    )  # ppo has no resources.cpu: all cores
    # Without resources.cpu a stage wants every core, so it never shares the machine.
    assert waves(make_plan(shapes(), "cpu", Machine(64), ["sft", "reward"])) == [["sft"], ["reward"]]


def test_sequential_flag_and_stage_subsets():
    fits = shapes(StageShape(cpu=1), StageShape(cpu=1))
    assert waves(make_plan(fits, "cpu", Machine(8), ["sft", "reward"], sequential=True)) == [
        ["sft"],
        ["reward"],
    ]
    assert waves(make_plan(fits, "cpu", Machine(8), ["reward"])) == [["reward"]]
    assert waves(make_plan(fits, "cpu", Machine(8), ["ppo", "sft"])) == [["sft"], ["ppo"]]
    assert waves(make_plan(fits, "cpu", Machine(8), [])) == []


def test_threads_per_process():
    # resources.cpu is per pod (node), shared by its devicesPerNode processes; never above the cores.
    assert threads_for(StageShape(nodes=1, devices_per_node=2, cpu=8), 16) == 4
    assert threads_for(StageShape(nodes=2, devices_per_node=2, cpu=8), 8) == 2
    assert threads_for(StageShape(cpu=8), 2) == 2
    assert threads_for(StageShape(devices_per_node=4), 2) == 1
    assert threads_for(StageShape(cpu=0.5), 4) == 1
    assert [cpu_cores(q) for q in ("4", "500m", "1.5", "2k", 3)] == [4, 0.5, 1.5, 2000, 3]
    with pytest.raises(PlanError):
        cpu_cores("four")


def test_nvidia_splits_the_gpus_or_runs_one_after_the_other():
    gpus = Machine(16, ("0", "1", "2", "3"))
    plan = make_plan(
        shapes(StageShape(devices_per_node=2), StageShape(devices_per_node=2)),
        "nvidia",
        gpus,
        ["sft", "reward", "ppo"],
    )
    assert waves(plan) == [["sft", "reward"], ["ppo"]]
    assert plan.get("sft").devices == ("0", "1") and plan.get("reward").devices == ("2", "3")
    assert plan.get("sft").threads == 4 and plan.get("ppo").threads == 16
    plan = make_plan(
        shapes(StageShape(devices_per_node=3), StageShape(devices_per_node=2)),
        "nvidia",
        gpus,
        ["sft", "reward"],
    )
    assert waves(plan) == [["sft"], ["reward"]] and plan.get("reward").devices == ("0", "1")
    with pytest.raises(PlanError, match=r"spec\.stages\.sft: 2 node\(s\) x 4 device\(s\) = 8 GPUs"):
        make_plan(shapes(StageShape(nodes=2, devices_per_node=4)), "nvidia", gpus, ["sft"])
    with pytest.raises(PlanError, match=r"spec\.accelerator"):
        make_plan(shapes(), "nvidia", Machine(8), ["sft"])


def test_habana_stages_never_share_the_cards():
    plan = make_plan(shapes(StageShape(cpu=1), StageShape(cpu=1)), "habana", Machine(64), ["sft", "reward"])
    assert waves(plan) == [["sft"], ["reward"]]


# --------------------------------------------------------------------------------- commands and env


def test_stage_commands_and_environment():
    one, four = StagePlan("sft", 1, 3), StagePlan("reward", 4, 2, ("2", "3", "4", "5"))
    cfg = Path("r/sft.config.yaml")
    assert launch.train_command(one, cfg) == [
        sys.executable,
        "-m",
        "rlhf",
        "train",
        "sft",
        "--config",
        str(cfg),
    ]
    assert launch.train_command(four, cfg)[1:8] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "rlhf.cli",
    ]
    env = launch.stage_env(one, "cpu", {"RANK": "5", "PATH": "/bin"})
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["LOCAL_RANK"] == "0"
    assert env["MASTER_ADDR"] == "127.0.0.1" and int(env["MASTER_PORT"]) > 0
    assert (env["OMP_NUM_THREADS"], env["RLHF_ACCELERATOR"], env["DS_ACCELERATOR"]) == ("3", "cpu", "cpu")
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    env = launch.stage_env(four, "nvidia", {"RANK": "5", "MASTER_PORT": "1"})
    assert "RANK" not in env and "MASTER_PORT" not in env  # torchrun sets them for its workers
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3,4,5" and env["RLHF_ACCELERATOR"] == "cuda"
    assert launch.detect_machine("nvidia", {"CUDA_VISIBLE_DEVICES": "1,3"}).gpus == ("1", "3")
    assert launch.detect_machine("cpu", {}).cpus >= 1


def test_exit_reasons_and_log_tails(tmp_path):
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(-9) == "killed by SIGKILL (out of memory?)"
    assert exit_reason(137) == "exit code 137, killed by SIGKILL (out of memory?)"
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "bar 1/3\rbar 2/3\rbar 3/3\n\n")
    tail = log_tail(log, 5)
    assert tail == ["line 96", "line 97", "line 98", "line 99", "bar 3/3"]
    assert log_tail(tmp_path / "missing.log") == []


# ------------------------------------------------------------------------- the runner, fake stages


def local_inputs(tmp_path: Path) -> dict[str, str]:
    """Stand-ins for a manifest's local models and data: what `rlhf run` checks before it starts."""
    for name in ("actor", "reward"):
        (tmp_path / "inputs" / name).mkdir(parents=True, exist_ok=True)
        for file in ("config.json", "tokenizer.json"):
            (tmp_path / "inputs" / name / file).write_text("{}")
    (tmp_path / "inputs" / "pairs.jsonl").write_text("")
    return {
        "actor": str(tmp_path / "inputs" / "actor"),
        "reward": str(tmp_path / "inputs" / "reward"),
        "data": str(tmp_path / "inputs" / "pairs.jsonl"),
    }


def write_manifest(tmp_path: Path, **stages: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inputs = local_inputs(tmp_path)
    spec = {
        "accelerator": "cpu",
        "models": {"actor": inputs["actor"], "reward": inputs["reward"]},
        "data": {"datasets": [{"path": inputs["data"]}], "split": "2,4,4"},
        "storage": {"localDir": str(tmp_path / "run")},
        "stages": {s: {"resources": {"cpu": 1}, **stages.get(s, {})} for s in ("sft", "reward", "ppo")},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFRun", "metadata": {"name": "fake"}, "spec": spec}
        )
    )
    return path


class Fakes:
    """Runs manifests with fake stages; records what they did."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp = tmp_path
        self.events_file = tmp_path / "events.jsonl"
        self.prepared: list[list[str]] = []
        monkeypatch.setenv("FAKE_EVENTS", str(self.events_file))
        self.monkeypatch = monkeypatch

    def run(
        self, manifest: Path, how: dict[str, dict] | None = None, *, cpus: int = 4, **options: Any
    ) -> tuple[int, str]:
        self.monkeypatch.setenv("FAKE_STAGES", json.dumps(how or {}))
        out = io.StringIO()

        def prepare(todo: list[str]) -> list[str]:
            self.prepared.append(todo)
            return [sys.executable, "-c", "print('prepared')"]

        opts = RunOptions(
            machine=Machine(cpus),
            out=out,
            refresh=0.2,
            grace=options.pop("grace", 2.0),
            stage_command=lambda p, cfg: [sys.executable, str(FAKE), p.stage, "--config", str(cfg)],
            prepare_command=prepare,
            **options,
        )
        code = run_manifest(manifest, opts)
        return code, out.getvalue()

    def events(self) -> list[dict]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def span(self, stage: str) -> tuple[float, float]:
        rows = [e for e in self.events() if e["stage"] == stage]
        return min(e["t"] for e in rows if e["event"] == "start"), max(
            e["t"] for e in rows if e["event"] == "end"
        )


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> Fakes:
    return Fakes(tmp_path, monkeypatch)


def test_sft_and_reward_overlap_then_ppo_and_a_rerun_skips_everything(fakes, tmp_path):
    manifest = write_manifest(tmp_path)
    code, out = fakes.run(
        manifest, {"sft": {"seconds": 1.5}, "reward": {"seconds": 1.5}, "ppo": {"seconds": 0.2}}
    )
    assert code == 0, out
    (sft0, sft1), (rm0, rm1), (ppo0, _) = fakes.span("sft"), fakes.span("reward"), fakes.span("ppo")
    assert rm0 < sft1 and sft0 < rm1, "sft and reward should run side by side"
    assert ppo0 >= max(sft1, rm1), "ppo must start after both finished"
    starts = {e["stage"]: e for e in fakes.events() if e["event"] == "start"}
    assert {e["omp"] for e in starts.values()} == {"1"} and starts["sft"]["rank"] == "0"
    assert len({e["pgid"] for e in starts.values()}) == 3 and starts["sft"]["pgid"] == starts["sft"]["pid"]
    assert fakes.prepared == [["sft", "reward", "ppo"]]
    root = tmp_path / "run"
    summary = json.loads((root / "run_summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert {s: v["state"] for s, v in summary["stages"].items()} == {
        "sft": "done",
        "reward": "done",
        "ppo": "done",
    }
    assert summary["stages"]["ppo"]["model_dir"] == str(root / "ppo" / "model")
    assert summary["stages"]["sft"]["metrics"] == {"eval/loss": 0.5, "eval/accuracy": 0.75}
    status = yaml.safe_load((root / "status.yaml").read_text())
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert status["phase"] == "Succeeded"
    assert conditions["SFTSucceeded"] == ("True", "Succeeded") and conditions["Succeeded"][0] == "True"
    assert conditions["Prepared"] == ("True", "Succeeded")  # the operator's vocabulary (rlhf.api.conditions)
    assert conditions["Failed"][0] == "False"
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    # the table: every stage, its steps and metrics, where its model is
    assert "sft     done" in out and "4/4" in out and "loss=0.5" in out and str(root / "ppo" / "model") in out
    assert (root / "sft" / "stage.log").is_file() and (root / "sft.config.yaml").is_file()

    n_events = len(fakes.events())
    code, out = fakes.run(manifest)
    assert code == 0, out
    assert len(fakes.events()) == n_events, "a rerun must not start finished stages"
    assert len(fakes.prepared) == 1, "nothing to prepare when every stage is done"
    states = {s: v["state"] for s, v in json.loads((root / "run_summary.json").read_text())["stages"].items()}
    assert states == {"sft": "skipped", "reward": "skipped", "ppo": "skipped"}
    assert "nothing to run" in out


def test_stages_run_one_after_the_other_when_the_cores_do_not_fit(fakes, tmp_path):
    manifest = write_manifest(tmp_path, ppo={"resources": {"cpu": 1}})
    code, out = fakes.run(
        manifest, {"sft": {"seconds": 0.4}, "reward": {"seconds": 0.4}, "ppo": {"seconds": 0.1}}, cpus=1
    )
    assert code == 0, out
    assert fakes.span("reward")[0] >= fakes.span("sft")[1]
    assert fakes.span("ppo")[0] >= fakes.span("reward")[1]
    fakes.events_file.unlink()
    code, out = fakes.run(
        write_manifest(tmp_path / "b"),
        {"sft": {"seconds": 0.1}, "reward": {"seconds": 0.1}},
        cpus=8,
        sequential=True,
        stages=["sft", "reward"],
    )
    assert code == 0 and "sft, then reward (--sequential)" in out
    assert fakes.span("reward")[0] >= fakes.span("sft")[1]


def test_a_failing_stage_stops_the_others_and_shows_its_log_tail(fakes, tmp_path):
    manifest = write_manifest(tmp_path)
    start = time.monotonic()
    code, out = fakes.run(
        manifest, {"sft": {"seconds": 60, "child": True}, "reward": {"seconds": 0.3, "exit": 3}}
    )
    assert code == 1, out
    assert time.monotonic() - start < 30, "the other stage must be stopped, not awaited"
    assert "stage reward failed: exit code 3" in out
    assert "log line 49" in out and "log line 19" not in out  # the last 30 lines only
    sft = next(e for e in fakes.events() if e["stage"] == "sft" and e["event"] == "start")
    assert group_members(sft["pgid"]) == [], "sft's process group (its child too) must be gone"
    assert any(e["event"] == "interrupted" and e["stage"] == "sft" for e in fakes.events())
    assert not any(e["stage"] == "ppo" for e in fakes.events())
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["status"] == "failed" and "reward failed: exit code 3" in summary["reason"]
    states = {s: v["state"] for s, v in summary["stages"].items()}
    assert states == {"sft": "stopped", "reward": "failed", "ppo": "not run"}
    assert summary["stages"]["sft"]["total_steps"] == 4, "a stopped stage reports how far it got"
    status = yaml.safe_load((tmp_path / "run" / "status.yaml").read_text())
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert status["phase"] == "Failed" and conditions["Failed"] == ("True", "StageFailed")
    assert conditions["RewardSucceeded"] == ("False", "Failed")


@pytest.mark.parametrize("linger", [0.0, 30.0])  # 30: still tearing down when the other stage fails
def test_a_stage_that_completed_shows_completed_when_another_fails(fakes, tmp_path, linger):
    manifest = write_manifest(tmp_path)
    code, out = fakes.run(
        manifest, {"sft": {"seconds": 0.2, "linger": linger}, "reward": {"seconds": 1.5, "exit": 3}}
    )
    assert code == 1, out
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    states = {s: v["state"] for s, v in summary["stages"].items()}
    assert states == {"sft": "done", "reward": "failed", "ppo": "not run"}, out
    assert summary["stages"]["sft"]["metrics"] == {"eval/loss": 0.5, "eval/accuracy": 0.75}
    assert summary["stages"]["sft"]["model_dir"] == str(tmp_path / "run" / "sft" / "model")
    status = yaml.safe_load((tmp_path / "run" / "status.yaml").read_text())
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["SFTSucceeded"] == ("True", "Succeeded")
    assert "sft     done" in out
    # a rerun runs only what did not complete
    fakes.events_file.unlink()
    code, out = fakes.run(manifest, {"reward": {"seconds": 0.1}, "ppo": {"seconds": 0.1}})
    assert code == 0, out
    assert sorted(e["stage"] for e in fakes.events() if e["event"] == "start") == ["ppo", "reward"]


def test_every_stages_local_inputs_are_checked_before_any_stage_starts(fakes, tmp_path):
    manifest = write_manifest(
        tmp_path,
        ppo={
            "trainerOptions": {
                "reward_model.name_or_path": str(tmp_path / "no-such-rm"),
                "evaluation.prompts": str(tmp_path / "p.jsonl"),
            }
        },
    )
    (tmp_path / "inputs" / "reward" / "tokenizer.json").unlink()  # a model folder without its tokenizer
    with pytest.raises(RunError) as e:
        fakes.run(manifest)
    message = str(e.value)
    assert "no stage was started" in message
    assert f"ppo: reward_model.name_or_path: {tmp_path / 'no-such-rm'} does not exist" in message
    assert f"ppo: evaluation.prompts: {tmp_path / 'p.jsonl'} does not exist" in message
    assert "reward: model.name_or_path: " in message and "has no tokenizer files" in message
    assert "sft:" not in message, "SFT's inputs are fine"
    assert "critic" not in message and "actor.name_or_path" not in message, "the run makes those itself"
    assert fakes.events() == [] and fakes.prepared == []
    assert main(["run", str(manifest)]) == 2


def test_a_gguf_only_model_folder_passes_the_input_check_as_prepare_converts_it(fakes, tmp_path):
    manifest = write_manifest(tmp_path)
    actor = tmp_path / "inputs" / "actor"
    for name in ("config.json", "tokenizer.json"):
        (actor / name).unlink()
    (actor / "model-Q8_0.gguf").write_bytes(
        b"GGUF"
    )  # the fake prepare converts nothing; the fake stages do not care
    code, out = fakes.run(manifest, {})
    assert code == 0, out


def test_ctrl_c_stops_every_stage_group_and_exits_130(fakes, tmp_path):
    manifest = write_manifest(tmp_path)

    def interrupt_when_both_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if {e["stage"] for e in fakes.events() if e["event"] == "start"} >= {"sft", "reward"}:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_both_started, daemon=True).start()
    # reward ignores SIGINT: the runner must escalate to SIGTERM after the grace period
    code, out = fakes.run(
        manifest,
        {
            "sft": {"seconds": 60, "child": True},
            "reward": {"seconds": 60, "child": True, "ignore_sigint": True},
        },
        grace=0.5,
    )
    assert code == 130, out
    starts = [e for e in fakes.events() if e["event"] == "start"]
    assert {e["stage"] for e in starts} == {"sft", "reward"}
    for e in starts:
        assert group_members(e["pgid"]) == [], f"{e['stage']}'s process group is still alive"
    assert [e["stage"] for e in fakes.events() if e["event"] == "interrupted"] == ["sft"]
    assert "SIGINT: stopping" in out and "reward: still running, sending SIGTERM" in out
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == 130
    assert {s: v["state"] for s, v in summary["stages"].items()} == {
        "sft": "stopped",
        "reward": "stopped",
        "ppo": "not run",
    }
    status = yaml.safe_load((tmp_path / "run" / "status.yaml").read_text())
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["status"] == "True" and "interrupted by SIGINT" in failed["message"]
    assert {s["state"] for s in status["stages"]} == {"Stopped"}


def test_stages_option_runs_a_subset_and_checks_dependencies(fakes, tmp_path):
    manifest = write_manifest(tmp_path)
    with pytest.raises(RunError, match=r"ppo needs sft completed first"):
        fakes.run(manifest, stages=["ppo"])
    code, out = fakes.run(manifest, {}, stages=["sft", "reward"])
    assert code == 0, out
    assert fakes.prepared == [["sft", "reward"]]
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["stages"]["ppo"] == {
        **summary["stages"]["ppo"],
        "state": "not run",
        "note": "not in --stages",
    }
    code, out = fakes.run(manifest, {}, stages=["ppo"])  # its dependencies are done now
    assert code == 0, out
    started = [e["stage"] for e in fakes.events() if e["event"] == "start"]
    assert sorted(started[:2]) == ["reward", "sft"] and started[2:] == ["ppo"]


def test_the_runner_itself_needs_no_torch():
    code = (
        "import sys, rlhf.cli, rlhf.runner.runner, rlhf.stages.finished; "
        "assert 'torch' not in sys.modules, 'the runner imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------------------ progress


def test_progress_lines_from_metrics_and_the_progress_bar(tmp_path):
    stage_dir = tmp_path / "sft"
    stage_dir.mkdir()
    rows = [
        {"step": 10, "split": "train", "loss": 2.5, "lr": 1e-3},
        {"step": 10, "split": "eval", "perplexity": 7.25},
        {"step": 20, "split": "train", "loss": 1.25, "lr": 1e-3},
    ]
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')
    (stage_dir / "stage.log").write_text(
        "sft:  10%|#   | 22/200 [00:10<01:20]\rsft:  12%|#   | 24/200 [00:11<01:19]"
    )
    prog = read_progress(stage_dir, stage_dir / "stage.log")
    assert (prog.step, prog.total, prog.train, prog.eval) == (24, 200, {"loss": 1.25}, {"perplexity": 7.25})
    line = stage_line("sft", "running", prog, 65)
    assert line.split() == [
        "sft",
        "running",
        "step",
        "24/200",
        "loss",
        "1.25",
        "eval/perplexity",
        "7.25",
        "1m05s",
    ]
    assert read_progress(tmp_path / "none", tmp_path / "none.log").step is None
    # every stage kind's bar counts (its description is the stage's name), nothing else does
    for stage in ("dpo", "grpo"):
        (stage_dir / "stage.log").write_text(f"{stage}:  50%|#   | 5/10 [00:10<00:10]\rWriting: 100%| 1/1 [")
        assert read_progress(stage_dir, stage_dir / "stage.log").total == 10, stage


def test_display_redraws_on_a_terminal_and_prints_changes_otherwise():
    plain = io.StringIO()
    display = Display(plain, tty=False, plain_every=3600)
    display.update({"sft": ("running", "sft running 1s")})
    display.update({"sft": ("running", "sft running 3s")})  # same state, too soon: not printed
    display.update({"sft": ("done", "sft done")})
    assert plain.getvalue() == "sft running 1s\nsft done\n"
    term = io.StringIO()
    display = Display(term, tty=True)
    display.update({"sft": ("running", "a"), "reward": ("running", "b")})
    display.message("note")
    display.update({"sft": ("running", "c"), "reward": ("done", "d")})
    assert term.getvalue() == "a\nb\n\x1b[2F\x1b[Jnote\nc\nd\n"


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_rejects_invalid_manifests_naming_the_field(tmp_path, capsys):
    manifest = write_manifest(tmp_path, sft={"nodes": 0, "trainerOptions": {"optim.bogus": 1}})
    assert main(["run", str(manifest)]) == 2
    run_err = capsys.readouterr().err
    assert "spec.stages.sft.nodes" in run_err and "Traceback" not in run_err
    assert main(["validate", str(manifest)]) == 2
    assert capsys.readouterr().err == run_err, "rlhf run must report exactly what rlhf validate reports"

    data = yaml.safe_load(write_manifest(tmp_path).read_text())
    data["spec"]["storage"] = {"pvc": {"claimName": "rlhf"}}
    pvc = tmp_path / "pvc.yaml"
    pvc.write_text(yaml.safe_dump(data))
    assert main(["run", str(pvc)]) == 2
    assert "spec.storage: rlhf run keeps the run in a local directory" in capsys.readouterr().err
    assert main(["run", str(pvc), "--stages", "sft,bogus"]) == 2
    assert "--stages: unknown stage 'bogus'" in capsys.readouterr().err
    options = {"optim.bogus": 1}
    data["spec"]["stages"]["reward"]["trainerOptions"] = options
    pvc.write_text(yaml.safe_dump(data))
    assert main(["run", str(pvc), "--storage", str(tmp_path / "x")]) == 2
    assert "spec.stages.reward.trainerOptions: optim.bogus" in capsys.readouterr().err
