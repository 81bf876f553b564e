"""`rlhf prepare`: Hub ids vs paths, downloads into the run's storage (atomic, idempotent), data caches."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import pytest
import yaml

from rlhf.api import PVC_MOUNT_PATH, load_manifest, stage_config
from rlhf.api.hub import (
    dataset_location,
    is_hub_id,
    model_location,
    prepared_dataset_dir,
    prepared_model_dir,
)
from rlhf.cli import main
from rlhf.config import STAGES, DataSource, build
from rlhf.data.sources import load_source
from rlhf.prepare import PrepareError, hub_needs
from rlhf.prepare.downloads import (
    MARKER,
    NEVER,
    PICKLES,
    TOKENIZER_FILES,
    ensure_dataset,
    ensure_model,
    model_patterns,
    read_marker,
)
from rlhf.runner.manifest import load_run
from rlhf.stages.data import prepare_stage_data

# ------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "value",
    [
        "gpt2",
        "facebook/opt-1.3b",
        "bigscience/bloom-560m",
        "meta-llama/Llama-2-7b-hf",
        "Dahoas/rm-static",
        "yitingxie/rlhf-reward-datasets",
        "EleutherAI/gpt-j-6B",
        "a",
        "org_1/name_2",
        "Qwen/Qwen2.5-0.5B",
    ],
)
def test_hub_ids(value):
    assert is_hub_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "/data/opt",
        "./models/actor",
        "../m",
        "~/m",
        "~",
        ".",
        "..",
        "runs/quickstart/models/actor",
        "data/pairs.jsonl",
        "pairs.json",
        "org/data.parquet",
        "org/name.git",
        "local/jsonfile",
        "local/jsonfile:/data",
        "org--name",
        "org/na..me",
        "-org/name",
        "org/name-",
        "org/",
        "/name",
        "a b",
        "org/name:rev",
        "x" * 97,
        "",
    ],
)
def test_paths(value):
    assert not is_hub_id(value)


def test_hub_ids_map_to_prepared_copies_and_paths_stay():
    assert prepared_model_dir("/mnt/rlhf", "facebook/opt-1.3b") == "/mnt/rlhf/hub/models/facebook--opt-1.3b"
    assert prepared_model_dir("runs/x", "gpt2") == "runs/x/hub/models/gpt2"
    assert prepared_dataset_dir("/", "Dahoas/rm-static") == "/hub/datasets/Dahoas--rm-static"
    assert model_location("runs/x", "./models/actor") == "./models/actor"
    assert model_location("runs/x", "org/m") == "runs/x/hub/models/org--m"
    # The format a Hub dataset resolves to is written out; an explicit one is kept; paths untouched.
    assert dataset_location("r", {"path": "Dahoas/rm-static", "format": "auto"}) == {
        "path": "r/hub/datasets/Dahoas--rm-static",
        "format": "hh",
    }
    assert dataset_location("r", {"path": "someone/prefs", "format": "auto"})["format"] == "generic"
    assert dataset_location("r", {"path": "Dahoas/rm-static", "format": "generic"})["format"] == "generic"
    assert dataset_location("r", {"path": "d/pairs.jsonl", "format": "auto"}) == {
        "path": "d/pairs.jsonl",
        "format": "auto",
    }


def manifest(**spec: Any) -> dict[str, Any]:
    base = {
        "accelerator": "cpu",
        "models": {"actor": "facebook/opt-125m", "reward": "./models/rm", "tokenizer": "org/tok"},
        "data": {
            "datasets": [{"path": "Dahoas/rm-static"}, {"path": "data/pairs.jsonl"}],
            "sftOnlyDatasets": [{"path": "org/sft-data", "format": "generic"}],
            "split": "2,4,4",
        },
        "storage": {"pvc": {"claimName": "rlhf"}},
    }
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFRun",
        "metadata": {"name": "p"},
        "spec": base | spec,
    }


def test_stage_configs_point_at_the_prepared_copies():
    run = load_manifest(manifest())
    sft, reward, ppo = (stage_config(run, s) for s in ("sft", "reward", "ppo"))
    root = PVC_MOUNT_PATH
    assert sft["model"]["name_or_path"] == f"{root}/hub/models/facebook--opt-125m"
    assert sft["model"]["tokenizer"] == reward["model"]["tokenizer"] == f"{root}/hub/models/org--tok"
    assert reward["model"]["name_or_path"] == "./models/rm"
    for config in (sft, reward, ppo):
        assert config["data"]["paths"] == [
            {"path": f"{root}/hub/datasets/Dahoas--rm-static", "format": "hh"},
            {"path": "data/pairs.jsonl", "format": "auto"},
        ]
    assert sft["data"]["sft_only_paths"] == [
        {"path": f"{root}/hub/datasets/org--sft-data", "format": "generic"}
    ]
    # PPO starts from the stage outputs, never from the Hub.
    assert ppo["actor"]["name_or_path"] == f"{root}/sft/model"


# -------------------------------------------------------------------------------------- what to fetch


def test_hub_needs_lists_each_repository_once():
    run = load_manifest(manifest(models={"actor": "org/a", "reward": "org/a", "tokenizer": "org/tok"}))
    needs = hub_needs(run)
    assert needs.models == {"org/a": "model", "org/tok": "tokenizer"}
    assert needs.datasets == {"Dahoas/rm-static": "hh", "org/sft-data": "generic"}
    same = load_manifest(manifest(models={"actor": "org/a", "reward": "./rm", "tokenizer": "org/a"}))
    assert hub_needs(same).models == {"org/a": "model"}


def test_download_patterns():
    assert (
        model_patterns(["model.safetensors", "pytorch_model.bin"], "model")["ignore_patterns"]
        == NEVER + PICKLES
    )
    assert model_patterns(["pytorch_model.bin", "tf_model.h5"], "model") == {"ignore_patterns": NEVER}
    assert model_patterns([], "tokenizer")["allow_patterns"] == TOKENIZER_FILES


# ------------------------------------------------------------------------------ downloads (Hub mocked)


class FakeHub:
    """huggingface_hub's list_repo_files/snapshot_download, copying local directories instead."""

    def __init__(self, monkeypatch, repos: dict[str, Path]):
        self.repos, self.calls, self.fail_after_first_file = repos, [], False
        monkeypatch.setattr(huggingface_hub, "list_repo_files", self.list_repo_files)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def list_repo_files(self, repo_id, token=None):
        return sorted(p.name for p in self.repos[repo_id].iterdir())

    def snapshot_download(self, repo_id, *, local_dir, token=None, allow_patterns=None, ignore_patterns=None):
        self.calls.append((repo_id, allow_patterns, token))
        target = Path(local_dir)
        (target / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        for f in sorted(self.repos[repo_id].iterdir()):
            if allow_patterns and not any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                continue
            shutil.copy(f, target / f.name)
            if self.fail_after_first_file:
                raise ConnectionError("connection reset")
        return str(target)


def test_model_copies_are_atomic_and_idempotent(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (repo / name).write_text(name)
    hub = FakeHub(monkeypatch, {"org/m": repo})
    monkeypatch.setenv("HF_TOKEN", "secret")
    root = tmp_path / "storage"
    final = root / "hub" / "models" / "org--m"

    hub.fail_after_first_file = True
    with pytest.raises(PrepareError, match=r"model org/m: download failed \(ConnectionError"):
        ensure_model(root, "org/m", "model")
    assert not final.exists(), "a half-finished download must not look finished"

    hub.fail_after_first_file = False
    copy = ensure_model(root, "org/m", "model")
    assert copy.fetched and copy.path == final and hub.calls[-1][2] == "secret"
    assert sorted(p.name for p in final.iterdir()) == [
        MARKER,
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert read_marker(final)["kind"] == "model"
    n = len(hub.calls)
    assert not ensure_model(root, "org/m", "model").fetched
    assert not ensure_model(root, "org/m", "tokenizer").fetched  # a whole copy serves as a tokenizer
    assert len(hub.calls) == n

    hub.repos["org/m2"] = repo
    tok = ensure_model(root, "org/m2", "tokenizer")
    assert tok.fetched and not (tok.path / "model.safetensors").exists()
    assert ensure_model(root, "org/m2", "model").fetched, "a tokenizer-only copy does not serve as a model"
    assert (tok.path / "model.safetensors").exists()


def _hub_dataset(pairs: Path):
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:-20]), "test": datasets.Dataset.from_list(rows[-20:])}
    )


def test_dataset_copies_keep_their_format_and_load_in_the_trainer(tiny, tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, token=None, cache_dir=None):
        calls.append((name, cache_dir))
        return _hub_dataset(tiny.data / "pairs.jsonl")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    root = tmp_path / "storage"
    copy = ensure_dataset(root, "Dahoas/rm-static", "hh")
    assert copy.fetched and copy.path == root / "hub" / "datasets" / "Dahoas--rm-static"
    assert read_marker(copy.path)["format"] == "hh" and read_marker(copy.path)["splits"]["test"] == 20
    assert not (root / "hub" / ".partial" / "cache").exists() or not any(
        (root / "hub" / ".partial" / "cache").iterdir()
    )
    assert not ensure_dataset(root, "Dahoas/rm-static", "hh").fetched and len(calls) == 1
    # what the stage config says (rlhf.api.hub) is what the trainer reads
    source = DataSource(**dataset_location(str(root), {"path": "Dahoas/rm-static", "format": "auto"}))
    loaded = load_source(source, require_rejected=True)
    assert loaded.source.kind == "disk" and loaded.source.format == "hh"
    assert len(loaded.train) == 380 and len(loaded.eval) == 20


# ------------------------------------------------------------------- `rlhf prepare`, offline, tiny setup


def test_prepare_fills_the_storage_once_and_the_stages_find_it(tiny, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, {"tiny-org/actor": tiny.actor})
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda name, token=None, cache_dir=None: _hub_dataset(tiny.data / "pairs.jsonl"),
    )
    path = tmp_path / "run.yaml"
    spec = {
        "accelerator": "cpu",
        "models": {"actor": "tiny-org/actor", "reward": str(tiny.reward)},
        "data": {
            "datasets": [{"path": "tiny-org/pairs"}],
            "sftOnlyDatasets": [{"path": str(tiny.data / "sft.jsonl")}],
            "split": "2,4,4",
        },
        "storage": {"pvc": {"claimName": "rlhf"}},
        "stages": {s: {"trainerOptions": {"data.max_seq_len": 64}} for s in ("sft", "reward", "ppo")},
    }
    spec["stages"]["ppo"]["trainerOptions"].update(
        {"generation.max_prompt_len": 32, "generation.max_answer_len": 32}
    )
    path.write_text(
        yaml.safe_dump(
            {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFRun", "metadata": {"name": "t"}, "spec": spec}
        )
    )
    root = tmp_path / "storage"
    assert main(["prepare", str(path), "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    assert "model tiny-org/actor: downloaded in" in out and "dataset tiny-org/pairs: downloaded in" in out
    assert (
        "sft data: train: built" in out
        and "reward data: train: built" in out
        and "ppo data: prompts: built" in out
    )
    assert (root / "hub" / "models" / "tiny-org--actor" / "config.json").is_file()

    assert main(["prepare", str(path), "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(nothing to do)" in out and "already prepared" in out and len(hub.calls) == 1

    # The stages' own data requests, with the configs the operator hands them, hit the same caches.
    run = load_run(path, str(root))
    for stage in ("sft", "reward"):
        cfg = build(STAGES[stage], stage_config(run, stage))
        assert all(d.stats["reused"] for d in prepare_stage_data(cfg).values()), stage
