"""The ``rlhf prepare`` and ``rlhf run`` subcommands (hooked into :mod:`rlhf.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGES_HELP = "comma-separated subset of the run's stages (spec.pipeline; default: all)"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and ``run`` to the ``rlhf`` parser's subcommands."""
    p = sub.add_parser(
        "prepare", help="fill a run's storage: download Hub models/datasets, build the data caches"
    )
    p.add_argument("manifest", type=Path, help="RLHFRun manifest (on a cluster: /etc/rlhf/run.yaml)")
    p.add_argument("--storage", metavar="DIR", help="use DIR as the storage root instead of spec.storage")
    p.add_argument("--stages", help=f"build the data caches of these stages only: {STAGES_HELP}")

    p = sub.add_parser("run", help="run an RLHFRun manifest on this machine (SFT and RM, then PPO)")
    p.add_argument("manifest", type=Path, help="RLHFRun manifest, e.g. examples/quickstart.yaml")
    p.add_argument(
        "--storage",
        metavar="DIR",
        help="keep the run in DIR instead of spec.storage.localDir "
        "(required for a manifest that stores on a PVC)",
    )
    p.add_argument(
        "--stages",
        help=f"run only these stages: {STAGES_HELP}; the ones they need must have completed already",
    )
    p.add_argument("--sequential", action="store_true", help="never run SFT and RM side by side")
    p.add_argument(
        "--grace",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="when stopping stages: wait this long after SIGINT, then SIGTERM, then SIGKILL",
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from rlhf.prepare import PrepareError, prepare
    from rlhf.runner.manifest import load_run, parse_stages

    run = load_run(args.manifest, args.storage)
    stages = parse_stages(args.stages)
    try:
        prepared = prepare(run, stages, echo=lambda line: print(line, flush=True))
    except (PrepareError, OSError) as e:  # a failed download, an unwritable storage root
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.manifest}: storage prepared" + ("" if prepared.did_work else " (nothing to do)"), flush=True
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rlhf.runner.manifest import parse_stages
    from rlhf.runner.plan import PlanError
    from rlhf.runner.runner import RunError, RunOptions, run_manifest

    options = RunOptions(
        stages=parse_stages(args.stages), sequential=args.sequential, storage=args.storage, grace=args.grace
    )
    try:
        return run_manifest(args.manifest, options)
    except (RunError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


COMMANDS = {"prepare": cmd_prepare, "run": cmd_run}
