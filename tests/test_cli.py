"""The `rlhf` command line: one parser, overrides anywhere, user errors as one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from rlhf.cli import main


def test_config_prints_resolved_yaml(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {name_or_path: m}\ncheckpoint: {output_dir: o}\ndata: {paths: [a.jsonl]}\n")
    assert main(["config", "reward", "--config", str(f), "lora.dim=4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lora"]["dim"] == 4
    assert printed["model"]["num_padding_at_beginning"] is None  # deprecated, ignored
    assert printed["optim"]["lr_scheduler"] == "cosine"
    # overrides may also come before the options
    assert main(["config", "reward", "lora.dim=2", "-c", str(f)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lora"]["dim"] == 2


def test_bad_key_is_one_clear_line_and_exit_2(capsys):
    code = main(
        ["config", "sft", "model.name_or_path=m", "checkpoint.output_dir=o", "data.paths=[a]", "optim.lr=1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "optim.lr: unknown key" in err and "Traceback" not in err


def test_console_script_runs_without_torch_for_config():
    code = (
        "import sys, runpy; sys.argv=['rlhf','config','sft','model.name_or_path=m','checkpoint.output_dir=o',"
        "'data.sft_only_paths=[a]']; import rlhf.cli as c; rc=c.main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_bad_record_stops_training_naming_file_and_record(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"prompt": "Human: hi\n\nAssistant:", "chosen": " hello"})] * 3
    lines.append(json.dumps({"prompt": "Human: hi\n\nAssistant:", "chosen": 7}))
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    args = ["train", "sft", *tiny.sft_overrides(out, f"data.sft_only_paths=[{bad}]")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "record 3" in err and "chosen" in err
    assert (out / "keep.txt").read_text() == "earlier work"


def test_unknown_argument_is_rejected(capsys):
    try:
        main(["synth-data", "--out", "x", "stray"])
    except SystemExit as e:
        assert e.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_validate_prints_stage_configs(capsys):
    from pathlib import Path

    manifest = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    from rlhf.api import config_text, load_manifest, stage_config
    from rlhf.config import STAGES, build

    assert main(["validate", str(manifest), "--stage", "sft"]) == 0
    captured = capsys.readouterr()
    # exactly the stage's config file (what its ConfigMap and rlhf run's <stage>.config.yaml hold)
    assert captured.out == config_text(stage_config(load_manifest(manifest), "sft"))
    cfg = build(STAGES["sft"], yaml.safe_load(captured.out))  # and the trainer reads it as it is
    assert cfg.checkpoint.output_dir.endswith("sft")
    assert "valid RLHFRun 'quickstart'" in captured.err
    assert main(["validate", str(manifest)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["stage"] for d in docs] == ["sft", "reward", "ppo"]


def test_validate_rejects_invalid_manifest_naming_the_field(tmp_path, capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("optim.warmup_ratio: 0.05", "optim.warmup_ratoi: 0.05", 1))
    assert main(["validate", str(bad)]) == 2
    assert "spec.stages.sft.trainerOptions" in capsys.readouterr().err
