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

from rlhf.spec import read_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_render_prints_exactly_the_children(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("images: {nvidia: my/img:1}\npools: {nvidia: {devicesPerNode: 4}}\n")
    assert main(["render", str(ROOT / "examples" / "multi-tenant-kueue.yaml"), "--config", str(config)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    cfg = load_config(config)
    expected = render.children(admit(read_manifest(ROOT / "examples" / "multi-tenant-kueue.yaml"), cfg), cfg)
    assert docs == expected
    assert [d["kind"] for d in docs] == ["ConfigMap"] * 4 + ["Job"] + ["MPIJob"] * 3
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # no uid without a cluster


def test_render_refuses_an_invalid_run_with_the_admission_message(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("pools: {nvidia: {devicesPerNode: 2}}\n")
    path = ROOT / "examples" / "multi-tenant-kueue.yaml"
    assert main(["render", str(path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    with pytest.raises(AdmissionError) as info:
        admit(read_manifest(path), load_config(config), source=str(path))
    assert err.strip() == f"error: {info.value}"
    assert "spec.stages.sft.devicesPerNode: 4 is more than the 2 devices per node" in err


def test_the_operator_imports_no_torch():
    code = ("import sys; from rlhf_operator.cli import main; import rlhf_operator.main; "
            "rc = main(['render', 'examples/gaudi-bloom.yaml']); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'transformers')]; "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "habana.ai/gaudi: 8" in out.stdout


def test_config_defaults_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_OPERATOR_CONFIG", raising=False)
    assert load_config().pools.nvidia.devices_per_node == 8  # no file anywhere: defaults
    path = tmp_path / "c.yaml"
    path.write_text("namespaces: [team-a]\npools: {habana: {devicesPerNode: 4}}\nresyncSeconds: 5\n")
    monkeypatch.setenv("RLHF_OPERATOR_CONFIG", str(path))
    config = load_config()
    assert config.namespaces == ["team-a"] and config.pools.habana.devices_per_node == 4
    assert config.resync_seconds == 5 and config.pools.nvidia.devices_per_node == 8
    path.write_text("pools: {nvidia: {devicesPerNod: 4}}\n")
    with pytest.raises(ConfigError, match="devicesPerNod"):
        load_config(path)
    path.write_text("namespaces: [Team_A]\n")
    with pytest.raises(ConfigError, match=r"namespaces\[0\]"):
        load_config(path)
