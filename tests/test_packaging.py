"""The distribution ships every package directory, under the import names pyproject.toml maps."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_listed():
    cfg = _setuptools()
    dirs = {name: ROOT / path for name, path in cfg["package-dir"].items()}
    dirs.setdefault("rlhf", ROOT / "rlhf")
    found = set()
    for top, base in dirs.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([top, *rel.parts]))
    assert found == set(cfg["packages"]), "pyproject.toml [tool.setuptools] packages is out of date"


def test_no_package_shadows_the_standard_library():
    for name in _setuptools()["packages"]:
        assert name.split(".")[0] not in sys.stdlib_module_names, name


def test_mapped_packages_import_under_their_names():
    for name in _setuptools()["package-dir"]:
        module = importlib.import_module(name)
        assert Path(module.__file__).parent.name in ("rlhf_operator", "trainer_image")


def test_repository_root_on_sys_path_shadows_nothing():
    """`PYTHONPATH=.` (or running from the checkout) must not hide stdlib modules such as `operator`."""
    code = "import operator, sys; operator.eq(1, 1); assert 'site-packages' not in operator.__file__"
    for name in _setuptools()["package-dir"]:
        assert name.split(".")[0] not in sys.stdlib_module_names
    assert not (ROOT / "operator" / "__init__.py").exists()
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True
    )
