"""Build the real Kubernetes components the cluster tier runs, from their published Go modules.

Everything comes from the Go module proxy and is built once per version into ``.tools/k8s/``
(ignored by git); a stamp file records what was built, so a rerun costs nothing:

* ``kube-apiserver``, ``kube-controller-manager`` and ``kube-scheduler`` from ``k8s.io/kubernetes``.
  That module's ``go.mod`` points every ``k8s.io/*`` staging module at ``./staging/...``, which a
  module download does not carry, so we build through a small wrapper module whose ``replace``
  lines pin each staging module to the published ``v0.<minor>.<patch>`` of the same release.
* the Kubeflow MPI operator (``github.com/kubeflow/mpi-operator/cmd/mpi-operator``) and its MPIJob
  CRD, read from the same module;
* kwok (``sigs.k8s.io/kwok/cmd/kwok``), which plays the kubelet of fake nodes.

* etcd (``go.etcd.io/etcd/server/v3``, through a wrapper ``main`` calling its ``etcdmain``).

Go: always the machine's own toolchain (``GOTOOLCHAIN=local``), never one a module's
``toolchain`` line asks to download: Go 1.27 turns on a JSON experiment that breaks
kube-apiserver's OpenAPI output. A module whose ``go`` line is newer than the local Go fails with a
clear message instead.

``python tests/cluster/k8s_components.py [VERSION ...]`` builds ahead of time (``make cluster-tools``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "k8s"

#: Kubernetes releases the cluster tier runs against: the oldest the README claims and the newest
#: the module proxy served when this was written. The first is the default for most tests.
KUBERNETES_VERSIONS = ("1.37.2", "1.34.4")
MPI_OPERATOR_VERSION = "v0.8.2"
KWOK_VERSION = "v0.8.0"
ETCD_VERSION = "v3.6.16"
#: Where the MPIJob CRD lives inside the mpi-operator module.
MPIJOB_CRD_PATH = "manifests/base/kubeflow.org_mpijobs.yaml"


class BuildError(RuntimeError):
    """A component could not be built; the message has the command and its output."""


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env.setdefault("GOFLAGS", "-mod=mod")
    env["CGO_ENABLED"] = "0"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 3600) -> str:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BuildError(
            f"`{' '.join(cmd)}` in {cwd} failed (exit {proc.returncode}) after "
            f"{time.monotonic() - started:.0f}s:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def _proxy() -> str:
    proxy = subprocess.run(["go", "env", "GOPROXY"], capture_output=True, text=True, check=True).stdout
    for entry in re.split(r"[,|]", proxy.strip()):
        if entry.startswith("http"):
            return entry.rstrip("/")
    return "https://proxy.golang.org"


def _fetch_go_mod(module: str, version: str) -> str:
    url = f"{_proxy()}/{module}/@v/{version}.mod"
    try:
        with urllib.request.urlopen(url, timeout=120) as rsp:
            return rsp.read().decode()
    except OSError as e:
        raise BuildError(f"cannot fetch {url}: {e}") from e


def local_go_version() -> tuple[int, ...]:
    text = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, env=_go_env(), check=True
    ).stdout.strip()
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _check_go_line(go_mod: str, what: str) -> str:
    match = re.search(r"^go (\S+)", go_mod, re.M)
    if not match:
        raise BuildError(f"{what}: go.mod has no go line")
    wanted = tuple(int(x) for x in re.findall(r"\d+", match.group(1))[:3])
    if wanted > local_go_version():
        raise BuildError(
            f"{what} needs Go {match.group(1)}; this machine has "
            f"{'.'.join(map(str, local_go_version()))} (GOTOOLCHAIN=local on purpose)"
        )
    return match.group(1)


@dataclass(frozen=True)
class Built:
    """Paths of one built component set."""

    folder: Path

    def __truediv__(self, name: str) -> Path:
        return self.folder / name


def _stamped(folder: Path, key: str, binaries: tuple[str, ...]) -> bool:
    stamp = folder / ".built"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == key
        and all(os.access(folder / b, os.X_OK) for b in binaries)
    )


def _build_module(
    folder: Path,
    key: str,
    go_mod: str,
    main_imports: list[str],
    packages: list[str],
    binaries: tuple[str, ...],
    ldflags: str = "",
    main_go: str | None = None,
) -> Built:
    """Build ``packages`` of a wrapper module (``go_mod``) into ``folder``, atomically. The wrapper's
    own ``main.go`` imports ``main_imports`` (so that ``go mod tidy`` keeps them), or is ``main_go``."""
    if _stamped(folder, key, binaries):
        return Built(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=folder.name + ".", dir=folder.parent) as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text(go_mod)
        lines = "\n".join(f'import _ "{imp}"' for imp in main_imports)
        (work / "main.go").write_text(main_go or f"package main\n\n{lines}\n\nfunc main() {{}}\n")
        _run(["go", "mod", "tidy"], work)
        out = work / "bin"
        out.mkdir()
        _run(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w {ldflags}".strip(),
                "-o",
                str(out) + "/",
                *packages,
            ],
            work,
        )
        for name in binaries:
            if not (out / name).is_file():
                raise BuildError(f"go build made no {name} in {out}")
        (out / ".built").write_text(key + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    return Built(folder)


KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def kubernetes(version: str) -> Built:
    """kube-apiserver, kube-controller-manager and kube-scheduler of Kubernetes ``version``."""
    folder = TOOLS / f"kubernetes-v{version}"
    if _stamped(folder, version, KUBE_BINARIES):
        return Built(folder)
    major, minor, patch = version.split(".")
    upstream = _fetch_go_mod("k8s.io/kubernetes", f"v{version}")
    go_line = _check_go_line(upstream, f"k8s.io/kubernetes v{version}")
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", upstream, re.M)
    if not staging:
        raise BuildError(f"k8s.io/kubernetes v{version}: no staging replace lines in its go.mod")
    replaces = "\n".join(f"\t{m} => {m} v0.{minor}.{patch}" for m in staging)
    go_mod = (
        f"module rlhf-operator.test/kubernetes\n\ngo {go_line}\n\n"
        f"require k8s.io/kubernetes v{version}\n\nreplace (\n{replaces}\n)\n"
    )
    version_vars = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        version_vars += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    cmds = [f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES]
    return _build_module(
        folder, version, go_mod, [f"{c}/app" for c in cmds], cmds, KUBE_BINARIES, " ".join(version_vars)
    )


def _single(module: str, version: str, package: str, binary: str) -> Built:
    folder = TOOLS / f"{binary}-{version}"
    if _stamped(folder, version, (binary,)):
        return Built(folder)
    go_line = _check_go_line(_fetch_go_mod(module, version), f"{module} {version}")
    go_mod = f"module rlhf-operator.test/{binary}\n\ngo {go_line}\n\nrequire {module} {version}\n"
    # Import a library package of the module so that `go mod tidy` keeps the requirement.
    return _build_module(folder, version, go_mod, [_importable(module, package)], [package], (binary,))


def _importable(module: str, package: str) -> str:
    return {
        "github.com/kubeflow/mpi-operator": "github.com/kubeflow/mpi-operator/cmd/mpi-operator/app",
        "sigs.k8s.io/kwok": "sigs.k8s.io/kwok/pkg/kwok/cmd",
    }[module]


def mpi_operator() -> Built:
    """The Kubeflow MPI operator binary."""
    return _single(
        "github.com/kubeflow/mpi-operator",
        MPI_OPERATOR_VERSION,
        "github.com/kubeflow/mpi-operator/cmd/mpi-operator",
        "mpi-operator",
    )


def mpijob_crd() -> Path:
    """The MPIJob CRD shipped in the mpi-operator module (downloaded into the module cache)."""
    path = _module_dir("github.com/kubeflow/mpi-operator", MPI_OPERATOR_VERSION) / MPIJOB_CRD_PATH
    if not path.is_file():
        raise BuildError(f"mpi-operator {MPI_OPERATOR_VERSION} has no {MPIJOB_CRD_PATH}")
    return path


def kwok() -> Built:
    """The kwok controller binary."""
    return _single("sigs.k8s.io/kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok", "kwok")


#: kwok's own stage files we run with: its default node stages and the pod stages that make a
#: scheduled pod Running/Ready and finish a deletion. Its "pod-complete" stage (which ends every
#: Job's pod with exit 0 at once) is left out on purpose: the tests decide how each pod ends
#: (tests/cluster/k8s_cluster.py, PodScript).
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def _module_dir(module: str, version: str) -> Path:
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], TOOLS if TOOLS.is_dir() else ROOT)
    return Path(json.loads(out)["Dir"])


def kwok_stages() -> str:
    """The kwok configuration (its Stage documents) the cluster tier runs kwok with."""
    folder = _module_dir("sigs.k8s.io/kwok", KWOK_VERSION)
    docs = []
    for rel in KWOK_STAGE_FILES:
        path = folder / rel
        if not path.is_file():
            raise BuildError(f"kwok {KWOK_VERSION} has no {rel}")
        docs.append(path.read_text().strip())
    return "\n---\n".join(docs) + "\n"


def etcd() -> Path:
    """etcd, built from ``go.etcd.io/etcd/server/v3`` (its ``etcdmain``, as etcd's own main does).

    Not Debian's etcd-server: that is 3.4, which Kubernetes 1.34+ no longer supports, and which
    cannot serve the watch progress requests of client-go's streaming lists (on by default since
    1.35): every informer's watch fails and falls back to relisting, so kwok and the controllers see
    changes tens of seconds late."""
    folder = TOOLS / f"etcd-{ETCD_VERSION}"
    if _stamped(folder, ETCD_VERSION, ("etcd",)):
        return folder / "etcd"
    module = "go.etcd.io/etcd/server/v3"
    go_line = _check_go_line(_fetch_go_mod(module, ETCD_VERSION), f"{module} {ETCD_VERSION}")
    go_mod = f"module etcd\n\ngo {go_line}\n\nrequire {module} {ETCD_VERSION}\n"
    main_go = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    return _build_module(folder, ETCD_VERSION, go_mod, [], ["."], ("etcd",), main_go=main_go) / "etcd"


def main(argv: list[str]) -> int:
    versions = argv or list(KUBERNETES_VERSIONS)
    for step, build in [
        *((f"kubernetes {v}", lambda v=v: kubernetes(v)) for v in versions),
        ("mpi-operator", mpi_operator),
        ("kwok", kwok),
        ("etcd", etcd),
    ]:
        started = time.monotonic()
        built = build()
        print(f"{step}: {getattr(built, 'folder', built)} ({time.monotonic() - started:.0f}s)", flush=True)
    print(f"MPIJob CRD: {mpijob_crd()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
