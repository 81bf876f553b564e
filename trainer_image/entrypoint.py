"""``rlhf-entrypoint``: the trainer image's entrypoint (MPIJob launcher, ranks, workers).

* ``launch --config CFG [--termination-log F] -- mpirun ...``: the launcher (:mod:`.launch`).
* ``stage STAGE --config CFG [KEY=VALUE...]``: one rank, started by mpirun: OpenMPI's
  environment mapped to torch.distributed's (:mod:`.env`), then ``rlhf train STAGE``.
* ``sshd [--port 2222]``: a worker (:mod:`.sshd`).

``launch`` and ``sshd`` never import torch; ``stage`` hands over to the trainer by exec.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rlhf_entrypoint import sshd as sshd_mod
from rlhf_entrypoint.env import EnvError, stage_env

from rlhf.api.graph import STAGE_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-entrypoint", description="Entrypoint of the rlhf-operator trainer images"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "launch", help="MPIJob launcher: run the mpirun command after `--`, write the termination message"
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        required=True,
        help="the stage config (its checkpoint.output_dir holds summary.json)",
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        default=Path("/dev/termination-log"),
        help="where the termination message goes (default /dev/termination-log)",
    )
    p.add_argument(
        "--hostfile",
        type=Path,
        help="MPI hostfile (default $RLHF_HOSTFILE, $OMPI_MCA_orte_default_hostfile or /etc/mpi/hostfile)",
    )
    p.add_argument(
        "--wait-hosts",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wait this long for every host of the hostfile to resolve (0: do not wait)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- mpirun ...")

    p = sub.add_parser("stage", help="one rank: map the MPI environment, then `rlhf train STAGE`")
    p.add_argument("stage", choices=STAGE_NAMES)
    p.add_argument("--config", "-c", type=Path, required=True)
    p.add_argument(
        "--dry-run", action="store_true", help="print the variables it would set and the command, then exit"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    p = sub.add_parser("sshd", help="MPIJob worker: run sshd in the foreground as this (non-root) user")
    p.add_argument("--port", type=int, default=sshd_mod.DEFAULT_PORT)
    return parser


def cmd_launch(args: argparse.Namespace) -> int:
    from rlhf_entrypoint.launch import LaunchError, launch

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        return launch(
            args.config, cmd, args.termination_log, hostfile=args.hostfile, wait_hosts=args.wait_hosts
        )
    except LaunchError as e:
        print(f"rlhf-entrypoint: {e}", file=sys.stderr)
        return 2


def cmd_stage(args: argparse.Namespace) -> int:
    try:
        added = stage_env(os.environ)
    except EnvError as e:
        print(f"rlhf-entrypoint: {e}", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "rlhf", "train", args.stage, "--config", str(args.config), *args.overrides]
    if args.dry_run:
        print(json.dumps({"env": added, "argv": argv}, indent=2, sort_keys=True))
        return 0
    env = {**os.environ, **added}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def cmd_sshd(args: argparse.Namespace) -> int:
    try:
        return sshd_mod.main(args.port)
    except (OSError, FileNotFoundError) as e:
        print(f"rlhf-entrypoint sshd: {e}", file=sys.stderr)
        return 1


COMMANDS = {"launch": cmd_launch, "stage": cmd_stage, "sshd": cmd_sshd}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "stage" or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "launch" and not [a for a in args.cmd if a != "--"]:
        parser.error("launch: give the command to run after `--`")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
