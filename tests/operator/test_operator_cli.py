"""``rlhf-operator render`` and the operator configuration file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rlhf_operator import render
from rlhf_operator.admission import AdmissionError, admit
from rlhf_operator.cli import main
from rlhf_operator.config import ConfigError, load_config

from rlhf.api import read_manifest
from rlhf.cli import main as rlhf_main

ROOT = Path(__file__).resolve().parents[2]
#: The pool examples/multi-tenant-kueue.yaml names, as a platform team would define it.
TEAM_POOL = (
    "- {name: team-a-gpus, accelerator: nvidia, devicesPerNode: %d, namespaces: [team-a],\n"
    "   nodeSelector: {node.kubernetes.io/pool: team-a-gpu}, allowedPriorityClasses: [ml-batch-low],\n"
    "   tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}\n"
)


def test_render_prints_exactly_the_children(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("images: {nvidia: my/img:1}\npools:\n" + TEAM_POOL % 4)
    assert main(["render", str(ROOT / "examples" / "multi-tenant-kueue.yaml"), "--config", str(config)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    cfg = load_config(config)
    expected = render.children(admit(read_manifest(ROOT / "examples" / "multi-tenant-kueue.yaml"), cfg), cfg)
    assert docs == expected
    assert [d["kind"] for d in docs] == ["ConfigMap"] * 4 + ["NetworkPolicy"] * 3 + ["Job"] + ["MPIJob"] * 3
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # no uid without a cluster


def test_render_refuses_an_invalid_run_with_the_admission_message(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("pools:\n" + TEAM_POOL % 2)
    path = ROOT / "examples" / "multi-tenant-kueue.yaml"
    assert main(["render", str(path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    with pytest.raises(AdmissionError) as info:
        admit(read_manifest(path), load_config(config), source=str(path))
    assert err.strip() == f"error: {info.value}"
    assert (
        'spec.stages.sft.devicesPerNode: 4 is more than the 2 devices per node of pool "team-a-gpus"' in err
    )


def test_render_refuses_gaudi_until_the_platform_team_allows_privileged_pods(capsys):
    """The chart's and the code's default: Gaudi's hostIPC/SYS_NICE are off; the message says what to set."""
    assert main(["render", str(ROOT / "examples" / "gaudi-bloom.yaml")]) == 2
    err = capsys.readouterr().err
    assert 'spec.accelerator: pool "habana" does not allow privileged Gaudi pods' in err
    assert "privileged: true on the pool (Helm value pools[1].privileged)" in err


def test_the_operator_imports_no_torch(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("pools: [{name: gaudi2, accelerator: habana, devicesPerNode: 8, privileged: true}]\n")
    code = (
        "import sys; from rlhf_operator.cli import main; import rlhf_operator.main; "
        f"rc = main(['render', 'examples/gaudi-bloom.yaml', '--config', {str(config)!r}]); "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'transformers')]; "
        "sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "habana.ai/gaudi: 8" in out.stdout


def test_config_defaults_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_OPERATOR_CONFIG", raising=False)
    assert load_config().pool("nvidia").devices_per_node == 8  # no file anywhere: defaults
    path = tmp_path / "c.yaml"
    path.write_text(
        "namespaces: [team-a]\npools: [{name: g, accelerator: habana, devicesPerNode: 4}]\nresyncSeconds: 5\n"
    )
    monkeypatch.setenv("RLHF_OPERATOR_CONFIG", str(path))
    config = load_config()
    assert config.namespaces == ["team-a"] and [(p.name, p.devices_per_node) for p in config.pools] == [
        ("g", 4)
    ]
    assert config.resync_seconds == 5 and config.image("nvidia").startswith("rlhf-trainer-cuda:")
    path.write_text("pools: [{name: g, accelerator: nvidia, devicesPerNod: 4}]\n")
    with pytest.raises(
        ConfigError, match=r"pools\[0\]\.devicesPerNod: unknown field \(did you mean 'devicesPerNode'\?\)"
    ):
        load_config(path)
    path.write_text(
        "namespaces: [team-a]\n"
        "pools: [{name: g, accelerator: cpu, devicesPerNode: 4, namespaces: [team-b]}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"pools\[0\]\.namespaces\[0\]: 'team-b' is not one of the namespaces"
    ):
        load_config(path)
    path.write_text("namespaces: [Team_A]\n")
    with pytest.raises(ConfigError, match=r"namespaces\[0\]"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# `rlhf validate --operator-config` and `rlhf-operator render --config` agree: one policy check.

AGREEMENT_CONFIG = """
namespaces: [team-a, team-b, ml]
images: {nvidia: registry.example.com/ml/trainer-cuda:1.0, habana: registry.example.com/ml/trainer-gaudi:1.0,
         cpu: registry.example.com/ml/trainer-cuda:1.0}
pools:
%s- {name: shared, accelerator: nvidia, devicesPerNode: 8, allowedHubTokenSecrets: [hf-token],
   allowedImages: [registry.example.com/ml/], allowedNodeLabelKeys: [topology.kubernetes.io/zone]}
- {name: gaudi-locked, accelerator: habana, devicesPerNode: 8}
""" % (TEAM_POOL % 4)


def _variants() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        data = read_manifest(path)
        data["metadata"].setdefault("namespace", "ml")
        out.append((path.name, data))
    base = read_manifest(ROOT / "examples" / "opt-1.3b-single-node.yaml")
    base["metadata"]["namespace"] = "team-b"
    changes = {
        "evil-image": {"image": "registry.evil/x:1"},
        "ok-image": {"image": "registry.example.com/ml/custom:2"},
        "other-teams-pool": {"pool": "team-a-gpus"},
        "unknown-pool": {"pool": "nope"},
        "wildcard": {"scheduling": {"tolerations": [{"operator": "Exists"}]}},
        "control-plane": {"scheduling": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
        "zone": {"scheduling": {"nodeSelector": {"topology.kubernetes.io/zone": "z1"}}},
        "priority": {"scheduling": {"priorityClassName": "system-node-critical"}},
        "secret": {"hubTokenSecret": "db-password"},
    }
    for name, change in changes.items():
        data = {**base, "spec": {**base["spec"], **change}}
        out.append((name, data))
    return out


@pytest.mark.parametrize("name, data", _variants(), ids=[n for n, _ in _variants()])
def test_rlhf_validate_and_render_agree_on_the_pool_policy(name, data, tmp_path, capsys):
    config = tmp_path / "operator.yaml"
    config.write_text(AGREEMENT_CONFIG)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(data))
    rendered = main(["render", str(manifest), "--config", str(config)])
    render_err = capsys.readouterr().err
    validated = rlhf_main(["validate", str(manifest), "--operator-config", str(config)])
    validate_err = capsys.readouterr().err
    assert rendered == validated, (render_err, validate_err)
    problems = lambda err: sorted(line.strip() for line in err.splitlines() if line.startswith("  "))  # noqa: E731
    assert problems(render_err) == problems(validate_err)
    expected_ok = {
        "multi-tenant-kueue.yaml",
        "llama2-7b-lora-2x8.yaml",
        "opt-1.3b-single-node.yaml",
        "qwen2-7b-grpo.yaml",
        "ok-image",
        "zone",
    }
    assert (rendered == 0) == (name in expected_ok), render_err
