"""``rlhf-operator``: ``render`` a run's children without a cluster, or ``run`` the operator."""

from __future__ import annotations

import argparse
import sys

import yaml

from rlhf.api import SpecError, read_manifest


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config files in ConfigMaps) as literal blocks, for review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(docs: list[dict]) -> str:
    """The documents as one YAML stream, as ``render`` prints them."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _render(args: argparse.Namespace) -> int:
    from rlhf_operator import render
    from rlhf_operator.admission import admit
    from rlhf_operator.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        manifest = read_manifest(args.manifest)
        admitted = admit(manifest, config, source=args.manifest)
    except (SpecError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uid = (manifest.get("metadata") or {}).get("uid")
    docs = render.children(admitted, config, uid=uid)
    sys.stdout.write(dump_yaml(docs))
    return 0


def _run(args: argparse.Namespace) -> int:
    from rlhf_operator.config import ConfigError, load_config
    from rlhf_operator.main import run_operator

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_operator(
        config, liveness=args.liveness, metrics_port=args.metrics_port, metrics_address=args.metrics_address
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-operator", description="The Kubernetes operator of RLHFRun (rlhf.dev/v1alpha1)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="print the children the operator would create for a manifest (YAML)")
    p.add_argument("manifest", help="an RLHFRun manifest (YAML)")
    p.add_argument("--config", help="operator configuration (default: env RLHF_OPERATOR_CONFIG)")
    p.set_defaults(func=_render)
    p = sub.add_parser("run", help="run the operator (Kopf, standalone)")
    p.add_argument("--config", help="operator configuration (default: env RLHF_OPERATOR_CONFIG)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address /metrics listens on")
    p.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
