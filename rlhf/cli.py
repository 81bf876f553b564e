"""The `rlhf` command: one parser for every subcommand; stage options live in the typed configs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf import tools_cli
from rlhf.config import STAGES, ConfigError, dump, load
from rlhf.errors import UserError
from rlhf.runner import commands as run_commands


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=sorted(STAGES), help="which stage")
    p.add_argument("--config", "-c", type=Path, help="YAML file with the stage config")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.learning_rate=1e-4"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", description="RLHF training: SFT -> reward model -> PPO on DeepSpeed"
    )
    # `deepspeed --module rlhf.cli` passes --local_rank; we read LOCAL_RANK from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage (resumes from its latest checkpoint)")
    _add_config_args(p)

    p = sub.add_parser("config", help="validate a stage config and print it with every default filled in")
    _add_config_args(p)

    p = sub.add_parser(
        "validate", help="check an RLHFRun manifest as the cluster would; print each stage's trainer config"
    )
    p.add_argument("manifest", type=Path)
    p.add_argument("--stage", choices=list(STAGES), help="print only this stage's config")
    p.add_argument(
        "--operator-config",
        type=Path,
        metavar="FILE",
        help="also apply the cluster's pool policy from this operator configuration, as admission does",
    )
    p.add_argument(
        "--namespace",
        "-n",
        help="with --operator-config: the run's namespace (default: its metadata.namespace, else default)",
    )

    p = sub.add_parser("synth-data", help="write our synthetic preference dataset (JSONL)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-sft", type=int, default=2000)
    p.add_argument("--n-pairs", type=int, default=2000)
    p.add_argument("--n-heldout", type=int, default=200)

    p = sub.add_parser("tiny-models", help="build a tiny tokenizer + actor and reward models offline")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--data", type=Path, required=True, help="directory written by `rlhf synth-data` (tokenizer corpus)"
    )
    p.add_argument("--seed", type=int, default=0)
    run_commands.add_parsers(sub)  # prepare, run
    tools_cli.add_parsers(sub)  # chat, rw-eval, prompt-eval
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load(STAGES[args.stage], args.config, args.overrides)
    from rlhf.stages.dispatch import run_stage

    summary = run_stage(cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump(load(STAGES[args.stage], args.config, args.overrides)), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from rlhf.api import config_text, load_manifest, stage_config, stage_configs

    run = load_manifest(args.manifest)
    where = ""
    if args.namespace and not args.operator_config:
        raise UserError("--namespace goes with --operator-config (pools are open to namespaces)")
    if args.operator_config:
        from rlhf.api.pools import DEFAULT_NAMESPACE, load_policy

        namespace = args.namespace or run.metadata.namespace or DEFAULT_NAMESPACE
        if run.metadata.namespace and namespace != run.metadata.namespace:
            raise UserError(
                f"--namespace {namespace} does not match the manifest's metadata.namespace "
                f"{run.metadata.namespace}"
            )
        pool = load_policy(args.operator_config).admit(run, namespace, str(args.manifest))
        where = f" on pool {pool.name!r} in namespace {namespace!r}"
    if (
        args.stage
    ):  # the stage's config file itself, byte for byte its ConfigMap: `rlhf train --config` reads it
        print(config_text(stage_config(run, args.stage)), end="")
    else:
        docs = [{"stage": stage, "config": config} for stage, config in stage_configs(run).items()]
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    print(f"{args.manifest}: valid RLHFRun {run.metadata.name!r}{where}", file=sys.stderr)
    return 0


def cmd_synth_data(args: argparse.Namespace) -> int:
    from rlhf.data.synthetic import generate

    paths = generate(
        args.out, seed=args.seed, n_sft=args.n_sft, n_pairs=args.n_pairs, n_heldout=args.n_heldout
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models.tiny import build_tiny_assets

    paths = build_tiny_assets(args.out, corpus_texts(args.data), seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "config": cmd_config,
    "validate": cmd_validate,
    "synth-data": cmd_synth_data,
    "tiny-models": cmd_tiny_models,
}
COMMANDS.update(run_commands.COMMANDS)  # prepare, run
COMMANDS.update(tools_cli.COMMANDS)  # chat, rw-eval, prompt-eval


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (argparse cannot interleave them with subcommands).
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from rlhf.data.sources import DataError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
