"""Pip constraints for installing our package into a vendor image (Dockerfile.cuda, Dockerfile.gaudi).

A vendor image (PyTorch's CUDA image, Habana's PyTorch installer image) already holds torch and
its stack. Installing with our ``constraints.txt`` as is could swap that torch for a PyPI build.
This script merges the two sets of versions:

* packages named with ``--keep`` (default: torch and its CUDA companions) are pinned to the
  versions installed in the image, local labels included (``torch==2.6.0+hpu...``);
* ``--base-wins``: every package installed in the image is pinned to its installed version (the
  Habana stack is built against its own numpy, protobuf, ...); ours apply to the rest;
* ``--drop NAME`` removes our pin of NAME (Habana's DeepSpeed fork replaces deepspeed).

Usage (stdlib only, runs before anything is installed)::

    python -m pip list --format=freeze > /tmp/installed.txt
    python build_constraints.py constraints.txt /tmp/installed.txt [--base-wins] [--drop NAME] > /tmp/c.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

#: The torch stack of a CUDA image: never reinstalled by our constraints.
DEFAULT_KEEP = ("torch", "torchvision", "torchaudio", "triton", "nvidia-*")

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, tuple[str, str]]:
    """``name==version`` lines -> {normalized name: (name as written, version)}; other lines are ignored."""
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = (match.group(1), match.group(2))
    return pins


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        pattern = normalize(pattern.rstrip("*")) + ("*" if pattern.endswith("*") else "")
        if (pattern.endswith("*") and name.startswith(pattern[:-1])) or name == pattern:
            return True
    return False


def merge(
    ours: str,
    installed: str,
    *,
    keep: tuple[str, ...] = DEFAULT_KEEP,
    base_wins: bool = False,
    drop: tuple[str, ...] = (),
) -> str:
    """The merged constraints file (sorted, one ``name==version`` per line)."""
    our_pins = parse_pins(ours)
    base_pins = parse_pins(installed)
    dropped = {normalize(name) for name in drop}
    merged: dict[str, tuple[str, str]] = {}
    for key, pin in our_pins.items():
        if key not in dropped:
            merged[key] = pin
    for key, pin in base_pins.items():
        if base_wins or _matches(key, keep):
            merged[key] = pin
    return "".join(f"{name}=={version}\n" for _, (name, version) in sorted(merged.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("constraints", type=Path, help="our constraints.txt")
    parser.add_argument("installed", type=Path, help="`pip list --format=freeze` of the image")
    parser.add_argument(
        "--keep", action="append", help="packages (glob suffix *) the image owns; default torch stack"
    )
    parser.add_argument(
        "--base-wins", action="store_true", help="pin every installed package to its installed version"
    )
    parser.add_argument("--drop", action="append", default=[], help="drop our pin of this package")
    args = parser.parse_args(argv)
    keep = tuple(args.keep) if args.keep else DEFAULT_KEEP
    sys.stdout.write(
        merge(
            args.constraints.read_text(),
            args.installed.read_text(),
            keep=keep,
            base_wins=args.base_wins,
            drop=tuple(args.drop),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
