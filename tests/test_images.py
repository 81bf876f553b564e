"""Static checks of the Dockerfiles and .dockerignore (no base image can be pulled here).

Pinned bases, non-root users, exec-form entrypoints that exist, no secrets, a build context
without the venv/runs/caches, an operator image without torch, and the contracts the operator
relies on (uid 1000, /home/mpiuser, sshd on 2222) - plus the constraints merge the trainer
images run at build time.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from rlhf_entrypoint import build_constraints
from rlhf_entrypoint.sshd import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("Dockerfile.cuda", "Dockerfile.gaudi")
ALL = (*TRAINERS, "Dockerfile.operator")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
SECRET_VALUE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\bAKIA[0-9A-Z]{16}\b|\bghp_[A-Za-z0-9]{36}\b|-----BEGIN [A-Z ]*PRIVATE KEY"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str, stage: Stage | None = None) -> str:
        return _expand(text, {**self.global_args, **(stage.args if stage else {})}, self.path.name)


def _expand(text: str, values: dict[str, str], where: str) -> str:
    """``${NAME}``/``$NAME`` replaced by the ARG defaults in ``values``."""

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"{where}: ${name} has no default"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def _arg(text: str) -> tuple[str, str | None]:
    name, sep, default = text.partition("=")
    return name.strip(), (default.strip().strip('"') if sep else None)


def parse(path: Path) -> Dockerfile:
    """Instructions (continuations joined, comments dropped), global ARGs, and stages."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            logical.append(current.strip())
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may come before FROM, got {keyword}"
            name, default = _arg(args)
            global_args[name] = default or ""
        else:
            stages[-1].instructions.append((keyword, args))
            if keyword == "ARG":
                name, default = _arg(args)
                stage = stages[-1]
                stage.args[name] = (
                    global_args.get(name, "")
                    if default is None
                    else _expand(default, {**global_args, **stage.args}, path.name)
                )
    return Dockerfile(path, global_args, stages)


@pytest.fixture(scope="module", params=ALL)
def dockerfile(request) -> Dockerfile:
    return parse(ROOT / request.param)


def pins(text: str) -> dict[str, str]:
    return {build_constraints.normalize(k): v for k, (_, v) in build_constraints.parse_pins(text).items()}


# ---------------------------------------------------------------- every image


def test_base_images_are_pinned(dockerfile):
    stage_names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        image = dockerfile.expand(stage.base)
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{dockerfile.path.name}: {image} has no tag"
        if tag == "latest":
            # Habana tags only `latest`; the release is the path's version directory.
            assert re.search(r"/\d+\.\d+\.\d+/", repo), f"{dockerfile.path.name}: {image} floats (:latest)"
        else:
            assert re.search(r"\d+\.\d+", tag), (
                f"{dockerfile.path.name}: {image}: tag {tag!r} names no version"
            )


def test_runs_as_a_non_root_user(dockerfile):
    users = dockerfile.final.all("USER")
    assert users, f"{dockerfile.path.name}: the final stage never leaves root"
    user = dockerfile.expand(users[-1], dockerfile.final).split(":")[0]
    assert user not in ("root", "0") and int(user) == 1000
    last_user = max(i for i, (kw, _) in enumerate(dockerfile.final.instructions) if kw == "USER")
    later_runs = [args for kw, args in dockerfile.final.instructions[last_user:] if kw == "RUN"]
    assert not any("apt-get" in r or "pip install" in r for r in later_runs), "installs after dropping root"


def test_entrypoint_is_exec_form_and_a_declared_script(dockerfile):
    (entrypoint,) = dockerfile.final.all("ENTRYPOINT")
    argv = json.loads(entrypoint)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts
    expected = "rlhf-operator" if dockerfile.path.name == "Dockerfile.operator" else "rlhf-entrypoint"
    assert argv == [expected]
    cmd = json.loads(dockerfile.final.all("CMD")[-1])
    assert cmd == (
        ["run", "--config", "/etc/rlhf-operator/config.yaml"] if expected == "rlhf-operator" else ["sshd"]
    )


def test_no_secrets(dockerfile):
    for stage in dockerfile.stages:
        for keyword, args in stage.instructions:
            if keyword in ("ENV", "ARG"):
                names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args)
                secret = [n for n in names if SECRET_NAME.search(n)]
                assert not secret, f"{dockerfile.path.name}: {keyword} {secret} looks like a secret"
            if keyword in ("COPY", "ADD"):
                sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
                assert not [
                    s for s in sources if re.search(r"\.ssh|id_rsa|\.pem$|\.key$|\.env$|netrc|credentials", s)
                ]
    assert not SECRET_VALUE.search((ROOT / dockerfile.path.name).read_text())


def test_apt_installs_are_lean(dockerfile):
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run


def _ignored(patterns: list[str], path: str) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(
            fnmatch("/".join(parts[:i]), pattern) or fnmatch(parts[i - 1], pattern.removeprefix("**/"))
            for i in range(1, len(parts) + 1)
        )
        if hit:
            ignored = not negate
    return ignored


def dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        "runs",
        ".cache",
        ".git",
        ".tools",
        "tests",
        "rlhf/__pycache__/x.pyc",
        "rlhf_operator.egg-info",
    ],
)
def test_dockerignore_keeps_local_state_out(path):
    assert _ignored(dockerignore(), path), f"{path} would be sent to the docker build"


def test_copied_sources_exist_and_are_in_the_context(dockerfile):
    patterns = dockerignore()
    for stage in dockerfile.stages:
        for args in stage.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.path.name}: COPY {source}: no such path"
                assert not _ignored(patterns, source), (
                    f"{dockerfile.path.name}: COPY {source} is dockerignored"
                )


# ---------------------------------------------------------------- trainer images


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_image_contract_with_the_operator(name):
    from rlhf_operator import names

    df = parse(ROOT / name)
    text = (ROOT / name).read_text()
    user = dockerfile_user(df)
    assert user == str(names.USER_ID)
    assert names.SSH_AUTH_MOUNT_PATH == "/home/mpiuser/.ssh" and "--home-dir /home/mpiuser" in text
    assert "ENV HOME=/home/mpiuser" in " ".join(f"{k} {a}" for k, a in df.final.instructions)
    # the launcher's ssh client and the workers' sshd agree on the port
    assert DEFAULT_PORT == 2222
    assert "Port 2222" in text and f"EXPOSE {DEFAULT_PORT}" in text
    assert re.search(r"apt-get install[^&]*openssh-server[^&]*openssh-client", text)
    # our package with the training extra, under constraints merged with the image's torch
    assert re.search(r'pip install -c \S*image-constraints\.txt "\.\[train\]"', text)
    assert "build_constraints.py constraints.txt" in text


def dockerfile_user(df: Dockerfile) -> str:
    return df.expand(df.final.all("USER")[-1], df.final).split(":")[0]


def test_cuda_base_carries_the_pinned_torch():
    df = parse(ROOT / "Dockerfile.cuda")
    ours = pins((ROOT / "constraints.txt").read_text())
    assert df.global_args["TORCH_VERSION"] == ours["torch"]
    assert df.expand(df.stages[0].base).startswith(f"pytorch/pytorch:{ours['torch']}-cuda")
    assert df.stages[0].base.endswith("-devel"), "DeepSpeed's ops need nvcc at build time"
    for op in ("DS_BUILD_CPU_ADAM", "DS_BUILD_UTILS", "DS_BUILD_FUSED_ADAM"):
        assert op in df.final.args
    assert "--no-build-isolation" in (ROOT / "Dockerfile.cuda").read_text()


def test_gaudi_uses_habana_pytorch_and_deepspeed_fork():
    df = parse(ROOT / "Dockerfile.gaudi")
    base = df.expand(df.stages[0].base)
    assert re.fullmatch(
        r"vault\.habana\.ai/gaudi-docker/\d+\.\d+\.\d+/ubuntu\d+\.\d+/habanalabs/"
        r"pytorch-installer-\d+\.\d+\.\d+:latest",
        base,
    )
    run = " ".join(df.final.all("RUN"))
    fork = re.search(r"git\+https://github\.com/HabanaAI/DeepSpeed\.git@(\S+?)\"", run)
    assert fork and df.expand(fork.group(1), df.final) == df.global_args["SYNAPSE_VERSION"]
    assert "--base-wins --drop deepspeed" in run


# ---------------------------------------------------------------- operator image


def _closure(project: str, extras: set[str], seen: set[str] | None = None) -> set[str]:
    """Names of every installed distribution ``project[extras]`` needs (markers evaluated)."""
    seen = set() if seen is None else seen
    key = build_constraints.normalize(project)
    if key in seen:
        return seen
    seen.add(key)
    try:
        dist = distribution(project)
    except PackageNotFoundError:
        return seen
    env = {
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "sys_platform": sys.platform,
    }
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not any(
            req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
        ):
            continue
        _closure(req.name, set(req.extras), seen)
    return seen


def test_operator_image_installs_no_torch():
    df = parse(ROOT / "Dockerfile.operator")
    commands = [c.strip() for s in df.stages for r in s.all("RUN") for c in re.split(r";|&&", r)]
    installs = [c for c in commands if "pip install" in c]
    assert installs == ['/opt/venv/bin/pip install -c constraints.txt ".[operator]"']
    closure = _closure("rlhf-operator", {"operator"})
    assert "kopf" in closure and "kubernetes" in closure
    heavy = {"torch", "deepspeed", "transformers", "datasets", "peft", "accelerate"} & closure
    assert not heavy, f"the operator extra pulls in {heavy}"
    assert "torch" in _closure("rlhf-operator", {"train"}, set())  # the check can fail


def test_operator_image_is_slim_and_multi_stage():
    df = parse(ROOT / "Dockerfile.operator")
    assert len(df.stages) == 2 and "-slim-" in df.expand(df.final.base)
    assert df.final.all("COPY") == ["--from=build /opt/venv /opt/venv"]
    assert {"8080", "9090"} <= set(" ".join(df.final.all("EXPOSE")).split())


# ---------------------------------------------------------------- constraints merge (run at image build time)

OURS = (
    "torch==2.13.0\nnumpy==2.4.6\ndeepspeed==0.19.8\nPyYAML==6.0.3\n# comment\n"
    "kopf==1.45.2 ; python_version>'3'\n"
)
IMAGE = "torch==2.13.0+cu128\nnvidia-nccl-cu12==2.27.3\nnumpy==1.26.4\npyyaml==6.0.1\nsetuptools==70.0.0\n"


def test_merge_keeps_the_image_torch_stack_and_our_other_pins():
    merged = pins(build_constraints.merge(OURS, IMAGE))
    assert merged == {
        "torch": "2.13.0+cu128",
        "nvidia-nccl-cu12": "2.27.3",
        "numpy": "2.4.6",
        "deepspeed": "0.19.8",
        "pyyaml": "6.0.3",
        "kopf": "1.45.2",
    }


def test_merge_base_wins_for_habana():
    habana = "torch==2.6.0+hpu.synapse.v1.21.0\ndeepspeed==0.16.1+hpu.synapse.v1.21.0\nnumpy==1.26.4\n"
    merged = pins(build_constraints.merge(OURS, habana, base_wins=True, drop=("deepspeed",)))
    assert (
        merged["torch"] == "2.6.0+hpu.synapse.v1.21.0" and merged["deepspeed"] == "0.16.1+hpu.synapse.v1.21.0"
    )
    assert merged["numpy"] == "1.26.4" and merged["pyyaml"] == "6.0.3"


def test_merge_cli(tmp_path, capsys):
    (tmp_path / "c.txt").write_text(OURS)
    (tmp_path / "i.txt").write_text(IMAGE)
    assert (
        build_constraints.main([str(tmp_path / "c.txt"), str(tmp_path / "i.txt"), "--drop", "deepspeed"]) == 0
    )
    out = capsys.readouterr().out
    assert "torch==2.13.0+cu128\n" in out and "deepspeed" not in out
