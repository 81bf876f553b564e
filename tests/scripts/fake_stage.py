"""A fast stand-in for `rlhf train STAGE --config FILE`, for the runner tests.

Behaviour per stage from the JSON in env FAKE_STAGES ({"sft": {"seconds": 1, "exit": 0,
"ignore_sigint": false, "child": false, "linger": 0}}; linger: seconds between writing the summary
and exiting); events (start/end/interrupted, with pid, pgid and
OMP_NUM_THREADS) are appended as JSON lines to the file named by env FAKE_EVENTS. On success it
leaves what the trainer leaves: model/, config.yaml (the resolved config), metrics.jsonl, summary.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def event(kind: str, stage: str, **extra) -> None:
    row = {
        "event": kind,
        "stage": stage,
        "t": time.time(),
        "pid": os.getpid(),
        "pgid": os.getpgrp(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "rank": os.environ.get("RANK"),
        **extra,
    }
    with open(os.environ["FAKE_EVENTS"], "a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> int:
    stage, config_file = sys.argv[1], Path(sys.argv[sys.argv.index("--config") + 1])
    how = json.loads(os.environ.get("FAKE_STAGES", "{}")).get(stage, {})
    out = Path(yaml.safe_load(config_file.read_text())["checkpoint"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(["sleep", "300"]) if how.get("child") else None
    event("start", stage, child=child.pid if child else None)

    def interrupted(signum, _frame):
        event("interrupted", stage, signal=signum)
        sys.exit(130)

    signal.signal(signal.SIGINT, signal.SIG_IGN if how.get("ignore_sigint") else interrupted)
    steps = int(how.get("steps", 4))
    deadline = time.time() + float(how.get("seconds", 0.5))
    step = 0
    print(f"{stage}:   0%|          | 0/{steps} [00:00<?, ?it/s]", file=sys.stderr, flush=True)
    while time.time() < deadline:
        time.sleep(0.05)
        if step < steps:
            step += 1
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "split": "train", "loss": 1.0 / step}) + "\n")
    code = int(how.get("exit", 0))
    if code:
        for i in range(50):
            print(f"log line {i}", flush=True)
        event("end", stage, code=code)
        return code
    from rlhf.config import STAGES, dump, load

    (out / "model").mkdir(exist_ok=True)
    (out / "config.yaml").write_text(dump(load(STAGES[stage], config_file)))
    summary = {
        "stage": stage,
        "status": "completed",
        "global_step": steps,
        "total_steps": steps,
        "metrics": {"eval/loss": 0.5, "eval/accuracy": 0.75},
        "model_dir": str(out / "model"),
    }
    (out / "summary.json").write_text(json.dumps(summary))
    time.sleep(float(how.get("linger", 0)))  # tearing down after the summary, as a trainer's ranks do
    event("end", stage, code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
