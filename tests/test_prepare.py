"""`rlhf prepare`: Hub ids vs paths, downloads into the run's storage (atomic, idempotent), data caches."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf.spec import PVC_MOUNT_PATH, load_manifest, stage_config
from rlhf.spec.hub import dataset_location, is_hub_id, model_location, prepared_dataset_dir, prepared_model_dir

# ------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("value", [
    "gpt2", "facebook/opt-1.3b", "bigscience/bloom-560m", "meta-llama/Llama-2-7b-hf", "Dahoas/rm-static",
    "yitingxie/rlhf-reward-datasets", "EleutherAI/gpt-j-6B", "a", "org_1/name_2", "Qwen/Qwen2.5-0.5B",
])
def test_hub_ids(value):
    assert is_hub_id(value)


@pytest.mark.parametrize("value", [
    "/data/opt", "./models/actor", "../m", "~/m", "~", ".", "..", "runs/quickstart/models/actor",
    "data/pairs.jsonl", "pairs.json", "org/data.parquet", "org/name.git", "local/jsonfile",
    "local/jsonfile:/data", "org--name", "org/na..me", "-org/name", "org/name-", "org/", "/name",
    "a b", "org/name:rev", "x" * 97, "",
])
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
        "path": "r/hub/datasets/Dahoas--rm-static", "format": "hh"}
    assert dataset_location("r", {"path": "someone/prefs", "format": "auto"})["format"] == "generic"
    assert dataset_location("r", {"path": "Dahoas/rm-static", "format": "generic"})["format"] == "generic"
    assert dataset_location("r", {"path": "d/pairs.jsonl", "format": "auto"}) == {
        "path": "d/pairs.jsonl", "format": "auto"}


def manifest(**spec: Any) -> dict[str, Any]:
    base = {
        "accelerator": "cpu",
        "models": {"actor": "facebook/opt-125m", "reward": "./models/rm", "tokenizer": "org/tok"},
        "data": {"datasets": [{"path": "Dahoas/rm-static"}, {"path": "data/pairs.jsonl"}],
                 "sftOnlyDatasets": [{"path": "org/sft-data", "format": "generic"}], "split": "2,4,4"},
        "storage": {"pvc": {"claimName": "rlhf"}},
    }
    return {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFRun", "metadata": {"name": "p"},
            "spec": base | spec}


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
            {"path": "data/pairs.jsonl", "format": "auto"}]
    assert sft["data"]["sft_only_paths"] == [{"path": f"{root}/hub/datasets/org--sft-data", "format": "generic"}]
    # PPO starts from the stage outputs, never from the Hub.
    assert ppo["actor"]["name_or_path"] == f"{root}/sft/model"
