"""The typed RLHFRun spec: loading, errors, and the stage configs it hands to the trainer."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf.api import (
    PVC_MOUNT_PATH,
    LoraSpec,
    RLHFRun,
    SpecError,
    StageSpec,
    load_manifest,
    read_manifest,
    stage_config,
    validate,
)
from rlhf.api.base import _config_field, trainer_key
from rlhf.config import STAGES, load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def manifest(**spec: Any) -> dict[str, Any]:
    """A minimal valid manifest on a PVC, with ``spec`` keys replaced."""
    base = {
        "accelerator": "nvidia",
        "models": {"actor": "facebook/opt-1.3b", "reward": "facebook/opt-350m"},
        "data": {"datasets": [{"path": "Dahoas/rm-static"}], "split": "2,4,4"},
        "storage": {"pvc": {"claimName": "rlhf", "subPath": "runs/a"}},
    }
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFRun",
        "metadata": {"name": "a"},
        "spec": base | spec,
    }


def with_options(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    return manifest(stages={stage: {"trainerOptions": options}})


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_manifest(data)
    return e.value.problems


def test_import_needs_no_torch():
    code = (
        "import sys, rlhf.api, rlhf.api.crd; rlhf.api.load_manifest('examples/quickstart.yaml'); "
        "rlhf.api.crd.render(); assert 'torch' not in sys.modules, 'rlhf.api imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_stage_configs_load_in_the_trainer(tmp_path, path):
    run = load_manifest(path)
    for stage in run.spec.stage_order:
        config_file = tmp_path / f"{stage}.yaml"
        config_file.write_text(yaml.safe_dump(stage_config(run, stage)))  # what the ConfigMap holds
        cfg = load(STAGES[stage], config_file)
        assert cfg.checkpoint.output_dir.endswith(f"/{stage}")
        assert cfg.data_cache_dir.endswith("/data_cache")
    other = next(s for s in STAGES if s not in run.spec.pipeline)
    with pytest.raises(SpecError, match=f"spec.pipeline: the run has no {other} stage"):
        stage_config(run, other)


def test_storage_layout_and_models():
    run = load_manifest(manifest(models={"actor": "a/actor", "reward": "a/rm", "tokenizer": "a/tok"}))
    sft, reward, ppo = (stage_config(run, s) for s in run.spec.pipeline)
    assert [c["checkpoint"]["output_dir"] for c in (sft, reward, ppo)] == [
        f"{PVC_MOUNT_PATH}/sft",
        f"{PVC_MOUNT_PATH}/reward",
        f"{PVC_MOUNT_PATH}/ppo",
    ]
    assert {c["data"]["cache_dir"] for c in (sft, reward, ppo)} == {f"{PVC_MOUNT_PATH}/data_cache"}
    # Hub ids load from the copies `rlhf prepare` made on the storage (rlhf.api.hub).
    hub = f"{PVC_MOUNT_PATH}/hub/models"
    assert sft["model"].items() >= {"name_or_path": f"{hub}/a--actor", "tokenizer": f"{hub}/a--tok"}.items()
    assert reward["model"].items() >= {"name_or_path": f"{hub}/a--rm", "tokenizer": f"{hub}/a--tok"}.items()
    assert ppo["actor"]["name_or_path"] == f"{PVC_MOUNT_PATH}/sft/model"
    assert ppo["critic"]["name_or_path"] == f"{PVC_MOUNT_PATH}/reward/model"
    local = load_manifest(manifest(storage={"localDir": "runs/x/"}))
    assert stage_config(local, "sft")["checkpoint"]["output_dir"] == "runs/x/sft"


def test_data_and_seed_are_shared_by_every_stage():
    run = load_manifest(
        manifest(
            seed=7,
            data={
                "datasets": [{"path": "d1"}, {"path": "./local", "format": "hh"}],
                "sftOnlyDatasets": [{"path": "s.jsonl"}],
                "split": "6,2,2",
                "evalFraction": 0.1,
            },
        )
    )
    for stage in run.spec.stage_order:
        config = stage_config(run, stage)
        assert config["seed"] == 7
        # A Hub dataset is read from its prepared copy, with the format it resolves to; paths as given.
        assert config["data"]["paths"] == [
            {"path": f"{PVC_MOUNT_PATH}/hub/datasets/d1", "format": "generic"},
            {"path": "./local", "format": "hh"},
        ]
        assert (config["data"]["split"], config["data"]["eval_fraction"]) == ("6,2,2", 0.1)
        assert ("sft_only_paths" in config["data"]) == (stage == "sft")
    assert stage_config(run, "sft")["data"]["sft_only_paths"] == [{"path": "s.jsonl", "format": "auto"}]
    assert run.spec.data.shares == (6.0, 2.0, 2.0)


def _dig(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def test_every_stage_field_maps_onto_its_trainer_key():
    stage = {
        "zeroStage": 3,
        "dtype": "fp32",
        "offload": True,
        "gradientCheckpointing": True,
        "perDeviceTrainBatchSize": 4,
        "learningRate": 2.5e-4,
        "epochs": 5,
        "lora": {
            "dim": 16,
            "alpha": 32.0,
            "dropout": 0.1,
            "targetModules": ["q_proj", "v_proj"],
            "learningRate": 1.0e-3,
            "onlyOptimizeLora": True,
        },
    }
    run = load_manifest(manifest(stages={"reward": stage, "ppo": stage}))
    reward, ppo = stage_config(run, "reward"), stage_config(run, "ppo")
    checked = 0
    for model, values in ((StageSpec, stage), (LoraSpec, stage["lora"])):
        for info in model.model_fields.values():
            key = trainer_key(info)
            if key is None:
                continue
            value = values[info.alias]
            assert _dig(reward, key) == value, key
            ppo_key = key.replace("model.", "actor.", 1)  # PPO's model section is its actor
            assert _dig(ppo, ppo_key) == value, ppo_key
            checked += 1
    assert checked == 13  # 7 stage fields, 6 LoRA fields
    assert "model" not in ppo


def test_spec_fields_reuse_the_trainer_defaults_and_bounds():
    for model in (StageSpec, LoraSpec):
        for info in model.model_fields.values():
            key = trainer_key(info)
            if key is None:
                continue
            source = _config_field(key)
            if key != "lora.target_modules":  # the spec leaves it out to mean 'all-linear'
                assert info.default == source.default, key
            assert {type(m) for m in source.metadata} <= {type(m) for m in info.metadata}, key
    stage = load_manifest(manifest()).spec.stages.sft
    assert (stage.learning_rate, stage.zero_stage, stage.dtype, stage.retries) == (1e-5, 0, "bf16", 2)


def test_trainer_options_reach_the_config():
    options = {
        "optim.warmup_ratio": 0.1,
        "deepspeed.overrides": {"a": {"b": 1}},
        "lora.target_modules": "all-linear",
    }
    run = load_manifest(with_options("sft", options))
    config = stage_config(run, "sft")
    assert config["optim"]["warmup_ratio"] == 0.1
    assert config["deepspeed"]["overrides"] == {"a": {"b": 1}}
    config["deepspeed"]["overrides"]["a"]["b"] = 2  # a copy: the run is untouched
    assert run.spec.stages.sft.trainer_options["deepspeed.overrides"] == {"a": {"b": 1}}


@pytest.mark.parametrize(
    "stage, options, expected",
    [
        (
            "sft",
            {"optim.learnig_rate": 1},
            "spec.stages.sft.trainerOptions: optim.learnig_rate: unknown key "
            "(did you mean 'optim.learning_rate'?)",
        ),
        (
            "reward",
            {"optim.weight_decay": "heavy"},
            "spec.stages.reward.trainerOptions: optim.weight_decay: Input should be a valid number",
        ),
        (
            "sft",
            {"model.name_or_path": "x"},
            "spec.stages.sft.trainerOptions: model.name_or_path: set by spec.models.actor; set it there",
        ),
        (
            "reward",
            {"checkpoint.output_dir": "/x"},
            "spec.stages.reward.trainerOptions: checkpoint.output_dir: set by spec.storage",
        ),
        (
            "sft",
            {"data": {"max_seq_len": 64}},
            "spec.stages.sft.trainerOptions: data: would replace data.paths",
        ),
        ("sft", {"seed.x": 1}, "spec.stages.sft.trainerOptions: seed.x: set by spec.seed"),
        (
            "sft",
            {"logging.log_interval": 1, "logging.log_interval.x": 1},
            "spec.stages.sft.trainerOptions: logging.log_interval.x: logging.log_interval is not a section",
        ),
        ("ppo", {"optim.bogus": 1}, "spec.stages.ppo.trainerOptions: optim.bogus: unknown key"),
        ("ppo", {"ppo_epochs": 2}, "spec.stages.ppo.trainerOptions: ppo_epochs: unknown key"),
    ],
)
def test_trainer_option_errors_name_the_manifest_field(stage, options, expected):
    problems = errors_of(with_options(stage, options))
    assert any(p.startswith(expected) for p in problems), problems


def test_ppo_options_are_checked_against_the_shared_sections():
    run = load_manifest(
        with_options(
            "ppo", {"optim.warmup_steps": 100, "actor.dropout": 0.0, "critic.num_padding_at_beginning": 1}
        )
    )
    config = stage_config(run, "ppo")
    assert (config["optim"]["warmup_steps"], config["critic"]["num_padding_at_beginning"]) == (100, 1)
    problems = errors_of(manifest(data={"datasets": [{"path": "d"}], "split": "1,1,0"}))
    assert problems == [
        "spec.data: PPO needs spec.data.datasets with a positive PPO share in spec.data.split"
    ]


def test_semantic_checks_can_be_deferred():
    data = with_options("sft", {"optim.nope": 1})
    run = load_manifest(data, semantic=False)
    with pytest.raises(SpecError, match="optim.nope: unknown key"):
        validate(run)
    with pytest.raises(SpecError, match="optim.nope"):
        stage_config(run, "sft")
    stage_config(run, "reward")  # other stages are fine
    with pytest.raises(KeyError):
        stage_config(run, "nope")


def test_all_problems_are_reported_at_once():
    data = manifest(accelerator="tpu", stages={"sft": {"nodes": 0, "learningRate": -1.0}})
    data["spec"]["bogus"] = 1
    assert errors_of(data) == [
        "spec.accelerator: Input should be 'nvidia', 'habana' or 'cpu' (got 'tpu')",
        "spec.stages.sft.nodes: Input should be greater than or equal to 1 (got 0)",
        "spec.stages.sft.learningRate: Input should be greater than 0 (got -1.0)",
        "spec.bogus: unknown field",
    ]


def test_metadata_rules():
    assert any("DNS-1035" in p for p in errors_of(manifest() | {"metadata": {"name": "-a"}}))
    assert errors_of(manifest() | {"metadata": {}}) == ["metadata.name: Field required"]
    live = manifest()
    live["metadata"] |= {
        "namespace": "team-a",
        "uid": "u-1",
        "generation": 3,
        "resourceVersion": "12",
        "creationTimestamp": "2024-05-01T10:00:00Z",
        "finalizers": ["rlhf.dev/cleanup"],
    }
    run = load_manifest(live)  # objects read back from the API server carry more metadata
    assert (run.metadata.namespace, run.metadata.generation) == ("team-a", 3)
    assert run.to_manifest()["metadata"]["resourceVersion"] == "12"


def test_quantities_and_tolerations():
    run = load_manifest(
        manifest(
            stages={"sft": {"resources": {"cpu": 8, "memory": "64Gi"}}},
            scheduling={
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
            },
        )
    )
    assert (run.spec.stages.sft.resources.cpu, run.spec.stages.sft.resources.memory) == ("8", "64Gi")
    assert run.spec.scheduling.tolerations[0].effect == "NoSchedule"
    problems = errors_of(manifest(scheduling={"tolerations": [{"effect": "Sometimes"}], "queueName": "A"}))
    assert [p.split(":")[0] for p in problems] == [
        "spec.scheduling.tolerations[0].effect",
        "spec.scheduling.queueName",
    ]
    assert errors_of(manifest(stages={"sft": {"resources": {"cpu": True}}})) == [
        "spec.stages.sft.resources.cpu: expected a Kubernetes quantity such as 8, '500m' or '64Gi'"
    ]


def test_storage_rules():
    assert errors_of(manifest(storage={"pvc": {"claimName": "x", "subPath": "a/../b"}})) == [
        "spec.storage.pvc.subPath: subPath must not contain '..'"
    ]
    assert errors_of(manifest(storage={"pvc": {"claimName": "x", "subPath": "/abs"}}))[0].startswith(
        "spec.storage.pvc.subPath: String should match pattern"
    )


def test_status_round_trip():
    data = manifest()
    data["status"] = {
        "observedGeneration": 2,
        "phase": "Running",
        "stage": "reward",
        "startTime": "2024-05-01T10:00:00Z",
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "reason": "StageRunning",
                "message": "reward",
                "lastTransitionTime": "2024-05-01T11:00:00Z",
                "observedGeneration": 2,
            }
        ],
        "stages": [
            {
                "name": "sft",
                "jobName": "a-sft",
                "state": "Succeeded",
                "retries": 1,
                "startTime": "2024-05-01T10:00:00Z",
                "completionTime": "2024-05-01T11:00:00Z",
                "metrics": {"eval/perplexity": 3.5},
            },
            {"name": "reward", "jobName": "a-reward", "state": "Running"},
        ],
    }
    run = load_manifest(data)
    assert run.status.stages[0].completion_time.hour == 11
    assert RLHFRun.model_validate(run.to_manifest()) == run
    bad = copy.deepcopy(data)
    bad["status"]["conditions"][0]["status"] = "Yes"
    assert errors_of(bad)[0].startswith(
        "status.conditions[0].status: Input should be 'True', 'False' or 'Unknown'"
    )


def test_manifest_files_are_read_as_kubectl_reads_them(tmp_path):
    text = yaml.safe_dump(manifest(stages={"sft": {"learningRate": 1.0}}))
    path = tmp_path / "run.yaml"
    path.write_text(text.replace("learningRate: 1.0", "learningRate: 5e-5"))
    assert load_manifest(path).spec.stages.sft.learning_rate == 5e-5  # YAML 1.1 would read a string
    path.write_text(text + "---\n" + text)
    with pytest.raises(SpecError, match="expected one YAML document, found 2"):
        read_manifest(path)
    path.write_text("- a\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        read_manifest(path)
    with pytest.raises(SpecError, match="cannot read"):
        read_manifest(tmp_path / "missing.yaml")
    path.write_text("spec: {stages: {sft: {nodes: 0}}}\n")
    with pytest.raises(SpecError, match=f"invalid RLHFRun {path}"):
        load_manifest(path)


BOMB = """apiVersion: rlhf.dev/v1alpha1
kind: RLHFRun
metadata: {name: bomb}
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
spec: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize("command", [["-m", "rlhf", "validate"], ["-m", "rlhf_operator.cli", "render"]])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, command):
    """A few hundred bytes expanding to 9^9 list items: refused at once with one line, where the
    typed spec (or any walk over the parsed data) would have to visit each of them."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    proc = subprocess.run([sys.executable, *command, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "expands to more than" in proc.stderr and "aliases" in proc.stderr, proc.stderr


def test_ordinary_anchors_and_aliases_still_load(tmp_path):
    from rlhf.api import read_manifest

    path = tmp_path / "run.yaml"
    data = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    data["spec"]["stages"]["ppo"] = data["spec"]["stages"]["reward"]  # one object: dumped as &id001 / *id001
    text = yaml.safe_dump(data)
    path.write_text(text)
    assert "*id001" in text
    loaded = read_manifest(path)
    assert loaded["spec"]["stages"]["ppo"] == loaded["spec"]["stages"]["reward"]


def test_stage_outcomes_are_one_type_for_every_reader():
    """What the trainer writes, the entrypoint compacts and the operator / rlhf run read back."""
    import json as _json

    from rlhf.api.outcome import StageFailure, StageSummary, finite_metrics, parse_outcome

    summary = StageSummary(
        stage="reward",
        global_step=3,
        metrics={"eval/accuracy": 0.75, "note": "x"},
        model_dir="/r/model",
        train_seconds=1.5,
    )
    data = summary.to_json()
    assert data["train_seconds"] == 1.5 and "skipped" not in data and "truncated" not in data
    back = parse_outcome(_json.dumps(data))
    assert isinstance(back, StageSummary) and back.numeric_metrics == {"eval/accuracy": 0.75}
    failed = parse_outcome('{"status": "failed", "reason": "CUDA out of memory", "exit_code": 1}')
    assert isinstance(failed, StageFailure) and failed.reason == "CUDA out of memory"
    died = parse_outcome("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    assert isinstance(died, StageFailure) and died.reason == "RuntimeError: boom"
    assert parse_outcome('{"status": "weird"}') is None and parse_outcome("") is None
    assert finite_metrics({"a": 1, "b": float("inf"), "c": True}) == {"a": 1.0}


# ---------------------------------------------------------------- pipelines (the stage graph)


def pipeline_run(pipeline: list[str], **stages: dict) -> dict:
    data = manifest()
    data["spec"]["pipeline"] = pipeline
    data["spec"].setdefault("stages", {}).update(stages)
    return data


@pytest.mark.parametrize(
    "pipeline, waves",
    [
        (["sft", "reward", "ppo"], [["sft", "reward"], ["ppo"]]),
        (["dpo", "sft"], [["sft"], ["dpo"]]),
        (["sft", "reward", "grpo"], [["sft", "reward"], ["grpo"]]),
    ],
)
def test_pipelines_run_in_waves_of_their_stage_graph(pipeline, waves):
    from rlhf.api import graph

    run = load_manifest(
        pipeline_run(pipeline, grpo={"trainerOptions": {"rewards.functions": ["rlhf.data.synthetic:reward"]}})
    )
    assert graph.waves(run.spec.stage_order, run.spec.pipeline) == waves


def test_each_stage_starts_from_the_stages_it_reads():
    root = "/mnt/rlhf"
    data = pipeline_run(["sft", "dpo"])
    data["spec"]["storage"] = {"pvc": {"claimName": "c"}}
    dpo = stage_config(load_manifest(data), "dpo")
    assert (
        dpo["model"]["name_or_path"] == f"{root}/sft/model"
        and dpo["checkpoint"]["output_dir"] == f"{root}/dpo"
    )
    functions = {"trainerOptions": {"rewards.functions": ["rlhf.data.synthetic:reward"]}}
    data = pipeline_run(["sft", "grpo"], grpo=functions)
    data["spec"]["storage"] = {"pvc": {"claimName": "c"}}
    grpo = stage_config(load_manifest(data), "grpo")
    assert grpo["actor"]["name_or_path"] == f"{root}/sft/model" and "reward_model" not in grpo
    data["spec"]["pipeline"] = ["sft", "reward", "grpo"]  # a trained reward model joins the functions
    grpo = stage_config(load_manifest(data), "grpo")
    assert grpo["reward_model"]["name_or_path"] == f"{root}/reward/model"


def test_a_pipeline_that_cannot_run_is_refused_naming_spec_pipeline():
    for pipeline, words in (
        (["ppo"], "add sft to spec.pipeline"),
        (["sft", "ppo"], "add reward to spec.pipeline"),
        (["dpo"], "policy from the sft stage's model"),
    ):
        problems = errors_of(pipeline_run(pipeline))
        assert any(p.startswith("spec.pipeline:") and words in p for p in problems), problems
    # GRPO needs a reward source: the reward stage's model, or reward functions
    problems = errors_of(pipeline_run(["sft", "grpo"]))
    assert any(p.startswith("spec.stages.grpo") and "no reward source" in p for p in problems), problems


def test_a_run_without_the_reward_stage_needs_no_reward_model():
    for pipeline in (["sft", "dpo"], ["sft", "grpo"]):
        data = pipeline_run(
            pipeline, grpo={"trainerOptions": {"rewards.functions": ["rlhf.data.synthetic:reward"]}}
        )
        data["spec"]["models"].pop("reward")
        run = load_manifest(data)
        assert run.spec.models.reward is None and run.spec.stage_order == pipeline


def test_every_stage_kind_has_its_config_and_its_trainer():
    """A stage kind is one entry in the graph, one config class and one module with train()."""
    import importlib

    from rlhf.api import graph
    from rlhf.config import STAGES

    assert list(STAGES) == list(graph.KINDS)
    for name, cls in STAGES.items():
        assert cls.name == name and cls.phase == graph.kind(name).phase, name
        assert callable(importlib.import_module(f"rlhf.stages.{name}").train), name
