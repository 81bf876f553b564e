"""One status for one run: the operator's reconcile and `rlhf run`'s status writer, fed the same
sequence of step events, write the same conditions (types, statuses, reasons), phase, current
steps and stages list (rlhf.api.conditions is the rule both use)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_reconcile import T0, body, launcher, observed, step

from rlhf.runner.report import DONE, FAILED, RUNNING, STOPPED, StageResult, StatusWriter

#: Step states in rlhf run's words -> what the operator observes for them.
#: (state of prepare, {stage: state}) per event; "failed" is a stage's last attempt failing.
SUCCESS = [
    ("running", {}),
    ("done", {"sft": "running", "reward": "running"}),
    ("done", {"sft": "done", "reward": "running"}),
    ("done", {"sft": "done", "reward": "done", "ppo": "running"}),
    ("done", {"sft": "done", "reward": "done", "ppo": "done"}),
]
FAILURE = [
    ("running", {}),
    ("done", {"sft": "running", "reward": "running"}),
    ("done", {"sft": "running", "reward": "failed"}),
]
METRICS = {
    "sft": {"eval/perplexity": 3.5},
    "reward": {"eval/accuracy": 0.75},
    "ppo": {"eval/reward_mean": 1.5},
}


def operator_statuses(events: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    data = body()
    data["spec"]["stages"]["reward"]["retries"] = 0
    out = []
    for i, (prepare, stages) in enumerate(events):
        conds = {"prepare": ["Complete"] if prepare == "done" else []}
        conds |= {
            s: {"running": ["Created", "Running"], "done": ["Succeeded"], "failed": ["Failed"]}[st]
            for s, st in stages.items()
        }
        objects = observed(data, conds)
        if prepare == "running":
            objects[("Job", "demo-prepare")]["status"] = {"active": 1, "ready": 1}
        pods = {
            s: launcher({"status": "completed", "metrics": METRICS[s]})
            for s, st in stages.items()
            if st == "done"
        }
        pods |= {
            s: launcher({"status": "failed", "reason": "bad data"})
            for s, st in stages.items()
            if st == "failed"
        }
        _, data = step(data, objects, pods, now=T0 + timedelta(minutes=i))
        out.append(data["status"])
    return out


def runner_statuses(events: list[tuple[str, dict[str, str]]], tmp: Path) -> list[dict[str, Any]]:
    writer = StatusWriter(tmp / "status.yaml", T0)
    results = {s: StageResult(s) for s in ("sft", "reward", "ppo")}
    out = []
    for prepare, stages in events:
        failure = None
        for s, st in stages.items():
            r = results[s]
            r.state = {"running": RUNNING, "done": DONE, "failed": FAILED}[st]
            r.started_at = r.started_at or T0
            if st == "done":
                r.summary = {"status": "completed", "metrics": METRICS[s]}
            if st == "failed":
                r.note, failure = "bad data", "stage failed"
                for other in results.values():
                    if other.state == RUNNING:
                        other.state, other.note = STOPPED, f"{s} failed"
        phase = (
            "Failed"
            if failure
            else ("Succeeded" if all(r.state == DONE for r in results.values()) else "Running")
        )
        writer.write(
            list(results.values()), phase, failure, prepare=(RUNNING if prepare == "running" else DONE, "")
        )
        out.append(yaml.safe_load((tmp / "status.yaml").read_text()))
    return out


def shape(status: dict[str, Any]) -> dict[str, Any]:
    """What both must agree on (messages and times may differ: the operator names its jobs)."""
    return {
        "phase": status["phase"],
        "stage": status.get("stage"),
        "conditions": {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]},
        "stages": [
            (s["name"], s["state"], s.get("retries", 0), s.get("metrics") or {})
            for s in status.get("stages", [])
        ],
    }


@pytest.mark.parametrize("events", [SUCCESS, FAILURE], ids=["success", "failure"])
def test_the_operator_and_rlhf_run_write_the_same_status(events, tmp_path):
    ours = [shape(s) for s in operator_statuses(events)]
    local = [shape(s) for s in runner_statuses(events, tmp_path)]
    for i, (a, b) in enumerate(zip(ours, local, strict=True)):
        assert a == b, f"after event {i} {events[i]}:\noperator {a}\nrlhf run {b}"
