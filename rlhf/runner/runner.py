"""``rlhf run MANIFEST``: the manifest's stages on this machine, with the stage entrypoint of the cluster.

1. The manifest is checked as admission checks it (:func:`rlhf.runner.manifest.load_run`).
2. Stages that already completed with the same config are skipped; ``rlhf prepare`` fills the
   storage (Hub copies, data caches) for the others.
3. The stages run in the waves of :func:`rlhf.runner.plan.make_plan` (SFT and RM side by side when
   they fit, PPO after both), each as ``rlhf train STAGE --config <root>/<stage>.config.yaml`` in
   its own process group, logging to ``<root>/<stage>/stage.log``; progress is shown live.
4. A failing stage stops the others and the run (exit 1, with its log tail and exit reason);
   SIGINT/SIGTERM stop every stage (SIGINT, SIGTERM, SIGKILL) and exit 130. A rerun resumes an
   interrupted stage from its checkpoint (the trainer does that).
5. The final table, ``<root>/run_summary.json`` and ``<root>/status.yaml``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rlhf.api import config_text, stage_configs
from rlhf.config import STAGES, build
from rlhf.runner import launch, manifest, plan, procs, progress, report
from rlhf.runner.inputs import RunInputs, gguf_only_folders
from rlhf.runner.report import DONE, FAILED, NOT_RUN, PENDING, RUNNING, SKIPPED, STOPPED, StageResult

StageCommand = Callable[[plan.StagePlan, Path], list[str]]
PrepareCommand = Callable[[list[str]], list[str]]
INTERRUPTED = 130


class RunError(Exception):
    """The run cannot start as asked (e.g. --stages without its dependencies); exit status 2."""


@dataclass
class RunOptions:
    """How to run. The callables are seams for tests (fake stage commands), defaulting to the real ones."""

    stages: list[str] | None = None  # --stages (None: every stage the trainer has)
    sequential: bool = False
    storage: str | None = None  # --storage DIR
    grace: float = 20.0  # seconds between SIGINT, SIGTERM and SIGKILL when stopping stages
    refresh: float = 2.0  # seconds between progress updates
    plain_every: float = 30.0  # seconds between progress lines when not on a terminal
    tail_lines: int = 30
    machine: plan.Machine | None = None  # default: detected
    stage_command: StageCommand = launch.train_command
    prepare_command: PrepareCommand | None = None  # default: `python -m rlhf prepare MANIFEST ...`
    available: Collection[str] = field(default_factory=lambda: tuple(STAGES))  # stages the trainer has
    finished: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = (
        None  # default: finished_summary
    )
    out: TextIO = sys.stdout


def finished_stage(stage: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of ``stage`` if it already completed with exactly ``config``, else None."""
    if stage not in STAGES:
        return None
    from rlhf.stages.finished import finished_summary

    return finished_summary(build(STAGES[stage], config, f"stage {stage}"))


class Runner:
    """One ``rlhf run``: see the module doc."""

    _active: dict[str, procs.StageProcess]  # the step processes running now (execute sets it up)
    _prepared: tuple[str, str] | None  # the prepare step's (state, note) once started

    def __init__(self, manifest_path: str | Path, options: RunOptions | None = None):
        self.manifest = str(manifest_path)
        self.opts = options or RunOptions()
        self.display = progress.Display(self.opts.out, plain_every=self.opts.plain_every)
        self.signals: list[int] = []
        self.started = report.now()

    # ---- set-up ---------------------------------------------------------------------------------
    def _load(self) -> None:
        opts = self.opts
        self.run = manifest.load_run(self.manifest, opts.storage, local=True)
        self.root = manifest.root_of(self.run)
        self.configs = stage_configs(self.run)
        self.accelerator = self.run.spec.accelerator
        finished = opts.finished or finished_stage
        self.done: dict[str, dict[str, Any]] = {}
        self.stages = self.run.spec.stage_order
        for stage in self.stages:
            summary = finished(stage, self.configs[stage]) if stage in opts.available else None
            if summary is not None:
                self.done[stage] = summary
        try:
            selection = plan.select_stages(
                self.stages, opts.stages, opts.available, self.done, str(self.root)
            )
        except plan.PlanError as e:
            raise RunError(str(e)) from None
        self.results = {s: StageResult(s) for s in self.stages}
        for stage in self.stages:
            r = self.results[stage]
            r.log, r.config = str(self.root / stage / "stage.log"), str(self.root / f"{stage}.config.yaml")
            if stage in selection.others:
                r.state, r.note = selection.others[stage]
                r.summary = self.done.get(stage, {})
        self.todo = list(selection.todo)
        models = self.run.spec.models
        inputs = RunInputs(
            self.root, list(self.stages), gguf_only_folders([models.actor, models.reward, models.tokenizer])
        )
        problems = [
            line
            for stage in self.todo
            for line in inputs.problems(stage, build(STAGES[stage], self.configs[stage], f"stage {stage}"))
        ]
        if problems:
            raise RunError(
                "inputs missing or unusable, so no stage was started:\n"
                + "\n".join(f"  {line}" for line in problems)
            )
        machine = opts.machine or launch.detect_machine(self.accelerator)
        self.plan = plan.make_plan(
            plan.shapes_of(self.run),
            self.accelerator,
            machine,
            self.todo,
            self.stages,
            sequential=opts.sequential,
        )

    def _plan_json(self) -> dict[str, Any]:
        return {
            "note": self.plan.note,
            "waves": [
                [
                    {
                        "stage": p.stage,
                        "processes": p.processes,
                        "threads": p.threads,
                        "devices": list(p.devices),
                    }
                    for p in wave
                ]
                for wave in self.plan.waves
            ],
        }

    # ---- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    # ---- running --------------------------------------------------------------------------------
    def _lines(self, running: dict[str, procs.StageProcess]) -> dict[str, tuple[str, str]]:
        lines = {}
        for stage in self.plan.stages:
            r = self.results[stage]
            if stage in running and r.state == RUNNING:
                p = running[stage]
                prog = progress.read_progress(self.root / stage, Path(r.log or ""))
                lines[stage] = (r.state, progress.stage_line(stage, r.state, prog, p.elapsed))
            else:
                lines[stage] = (r.state, progress.stage_line(stage, r.state, note=r.note))
        return lines

    def _status(self, phase: str, failure: str | None = None) -> None:
        self.status.write([self.results[s] for s in self.stages], phase, failure, self._prepared)

    def _watch(self, group: dict[str, procs.StageProcess], show: bool = True) -> tuple[str, str] | None:
        """Wait for every process of ``group``; (name, reason) of the first failure, or None.
        Raises KeyboardInterrupt on SIGINT/SIGTERM."""
        last_draw = 0.0
        while True:
            if self.signals:
                raise KeyboardInterrupt
            for name, p in group.items():
                code = p.poll()
                if code is not None and code != 0:
                    return name, procs.exit_reason(code)
            if all(p.poll() == 0 for p in group.values()):
                return None
            if show and time.monotonic() - last_draw >= self.opts.refresh:
                self.display.update(self._lines(group))
                last_draw = time.monotonic()
            time.sleep(0.1)

    def _stop(self, group: dict[str, procs.StageProcess]) -> None:
        procs.stop_all(
            list(group.values()),
            self.opts.grace,
            hurry=lambda: len(self.signals) > 1,
            echo=self.display.message,
        )

    def _fail(self, what: str, reason: str, log: Path) -> None:
        self.display.message(f"\n{what} failed: {reason}. Last lines of {log}:")
        for line in procs.log_tail(log, self.opts.tail_lines):
            self.display.message(f"  | {line}")

    def _prepare(self) -> tuple[str, str] | None:
        """Run ``rlhf prepare`` for the stages to run; (name, reason) on failure."""
        if self.opts.prepare_command is not None:
            argv = self.opts.prepare_command(self.todo)
        else:
            argv = [sys.executable, "-m", "rlhf", "prepare", self.manifest, "--stages", ",".join(self.todo)]
            if self.opts.storage is not None:
                argv += ["--storage", self.opts.storage]
        log = self.root / "prepare.log"
        env = launch.stage_env(plan.StagePlan("prepare", 1, self.plan.waves[0][0].threads), self.accelerator)
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(key, None)  # prepare is the one step that may reach the Hub
        p = procs.StageProcess("prepare", argv, env=env, cwd=None, log_path=log)
        self.display.message(f"prepare: Hub copies and data caches (log: {log})")
        p.start()
        self._active = {"prepare": p}
        self._prepared = (RUNNING, "")
        self._status("Running")
        failure = self._watch({"prepare": p}, show=False)
        if failure is None:
            self._prepared = (DONE, "")
            self.display.message(f"prepare: done in {progress.duration(p.elapsed)}")
        else:
            self._prepared = (FAILED, f"rlhf prepare failed: {failure[1]}")
        return failure

    def _start(self, stage_plan: plan.StagePlan) -> procs.StageProcess:
        stage = stage_plan.stage
        r = self.results[stage]
        config_file = Path(r.config or "")
        argv = self.opts.stage_command(stage_plan, config_file)
        p = procs.StageProcess(
            stage,
            argv,
            env=launch.stage_env(stage_plan, self.accelerator),
            cwd=None,
            log_path=Path(r.log or ""),
        )
        self._started_wall[stage] = time.time()
        p.start()
        r.state, r.started_at = RUNNING, report.now()
        devices = f", devices {','.join(stage_plan.devices)}" if stage_plan.devices else ""
        self.display.message(
            f"{stage}: started, {stage_plan.processes} process(es) x {stage_plan.threads} "
            f"thread(s){devices} (log: {r.log})"
        )
        return p

    def _summary_of_this_run(self, stage: str) -> dict[str, Any]:
        """The stage's ``summary.json`` if this run's process wrote it (not a stale one), else {}."""
        path = self.root / stage / "summary.json"
        try:
            if path.stat().st_mtime < self._started_wall.get(stage, float("inf")):
                return {}
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return summary if isinstance(summary, dict) else {}

    def _finish_stage(self, stage: str, p: procs.StageProcess, stopped: bool = False) -> None:
        """Record how ``stage`` ended. ``stopped``: the runner stopped it (another stage failed, or a
        signal): if it had already completed its work (written a completed summary), it counts as done."""
        if p.alive():  # the leader exited but left processes behind in its group
            procs.stop_all([p], min(self.opts.grace, 2.0))
        r = self.results[stage]
        r.exit_code, r.seconds, r.finished_at = p.returncode, p.elapsed, report.now()
        r.summary = {}
        if p.returncode == 0:
            r.summary = self._read_summary(stage)
        elif stopped:
            r.summary = self._summary_of_this_run(stage)
        completed = p.returncode == 0 or r.summary.get("status") == "completed"
        if not completed:
            r.summary = {}
        if not r.summary:  # stopped or failed: how far it got
            prog = progress.read_progress(self.root / stage, Path(r.log or ""))
            r.reached = (prog.step, prog.total)
        if completed:
            r.state = DONE
            if r.summary.get("skipped"):
                r.note = "already completed"
            elif p.returncode != 0:
                r.note = f"completed; stopped while exiting ({procs.exit_reason(p.returncode or 0)})"

    def _read_summary(self, stage: str) -> dict[str, Any]:
        try:
            summary = json.loads((self.root / stage / "summary.json").read_text())
        except (OSError, ValueError):
            return {}
        return summary if isinstance(summary, dict) else {}

    def _waves(self) -> tuple[int, str | None]:
        """Run the plan's waves; (exit code, reason)."""
        for wave in self.plan.waves:
            group = {sp.stage: self._start(sp) for sp in wave}
            self._active = group
            self._status("Running")
            failure = self._watch(group)
            if failure is not None:
                name, reason = failure
                self._stop(group)
                for stage, p in group.items():
                    self._finish_stage(stage, p, stopped=stage != name)
                    if stage != name and self.results[stage].state != DONE:
                        self.results[stage].state, self.results[stage].note = STOPPED, f"{name} failed"
                r = self.results[name]
                r.state, r.note = FAILED, reason
                self.display.update(self._lines({}))
                self._fail(f"stage {name}", reason, Path(r.log or ""))
                return 1, f"stage {name} failed: {reason}"
            for stage, p in group.items():
                self._finish_stage(stage, p)
            self.display.update(self._lines({}))
        return 0, None

    def execute(self) -> int:
        """Run; the exit status (0 done, 1 a step failed, 130 interrupted)."""
        self._load()
        self.root.mkdir(parents=True, exist_ok=True)
        self.status = report.StatusWriter(self.root / "status.yaml", self.started)
        self._active = {}
        self._started_wall: dict[str, float] = {}
        self._prepared = None
        for stage in self.todo:
            (self.root / f"{stage}.config.yaml").write_text(config_text(self.configs[stage]))
        self.display.message(
            f"rlhf run {self.run.metadata.name}: storage {self.root}; {self.plan.note or 'nothing to run'}"
        )
        for r in self.results.values():
            if r.state in (SKIPPED, NOT_RUN):
                self.display.message(progress.stage_line(r.stage, r.state, note=r.note))
        previous = self._install_signals()
        code, reason = 0, None
        try:
            self._status("Running")
            if self.todo:
                failure = self._prepare()
                if failure is not None:
                    self._fail("prepare", failure[1], self.root / "prepare.log")
                    for stage in self.todo:
                        self.results[stage].state, self.results[stage].note = NOT_RUN, "prepare failed"
                    code, reason = 1, f"prepare failed: {failure[1]}"
                else:
                    code, reason = self._waves()
        except KeyboardInterrupt:
            sig = signal.Signals(self.signals[0]).name if self.signals else "SIGINT"
            self.display.message(
                f"\n{sig}: stopping {', '.join(self._active) or 'nothing'} "
                "(checkpoints are kept; rerun to resume)"
            )
            self._stop(self._active)
            for stage, p in self._active.items():
                if stage in self.results:
                    self._finish_stage(stage, p, stopped=True)
                    if self.results[stage].state != DONE:
                        self.results[stage].state, self.results[stage].note = STOPPED, f"stopped by {sig}"
            code, reason = INTERRUPTED, f"interrupted by {sig}"
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._report(code, reason)
        return code

    def _report(self, code: int, reason: str | None) -> None:
        results = [self.results[s] for s in self.stages]
        for r in results:
            if r.state == PENDING:
                r.state, r.note = NOT_RUN, "run stopped before it"
        outcome = {0: "succeeded", INTERRUPTED: "interrupted"}.get(code, "failed")
        self._status("Succeeded" if code == 0 else "Failed", reason or outcome)
        report.write_summary(
            self.root / "run_summary.json",
            run=self.run.metadata.name,
            manifest=self.manifest,
            root=self.root,
            status=outcome,
            reason=reason,
            exit_code=code,
            started=self.started,
            plan=self._plan_json(),
            results=results,
        )
        self.display.close()
        self.display.message("\n" + report.table(results))
        self.display.message(
            f"\nrun {outcome}"
            + (f": {reason}" if reason else "")
            + f"; summary: {self.root / 'run_summary.json'}, status: {self.root / 'status.yaml'}"
        )


def run_manifest(manifest_path: str | Path, options: RunOptions | None = None) -> int:
    """``rlhf run``: run ``manifest_path`` here; the exit status."""
    return Runner(manifest_path, options).execute()
