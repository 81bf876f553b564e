"""Every shipped example's trainer settings, executed at toy scale through `rlhf run`.

Each ``examples/*.yaml`` runs with its models swapped for nano models of the same family (one
tokenizer per run, with the family's conventions), its datasets for small local files in the same
formats (named like the Hub datasets, so ``format: auto`` reads them as it reads those), on this
machine's CPU with one process per stage. Every trainer setting is kept — batch sizes, gradient
accumulation, LoRA, ZeRO stage and offload, gradient checkpointing, learning rates and schedules,
lengths, whitening — except: a few optimizer steps (SFT, RM) and one PPO iteration, four evaluation
prompts, bf16 where an example trains in fp16 (DeepSpeed has no fp16 on CPU), and no ZeRO offload
(on CPU there is no device memory to offload from). Checked: every
stage completes, its losses and metrics are finite, and the final models load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.api.hub import is_hub_id
from rlhf.data.synthetic import corpus_texts, generate, read_jsonl
from rlhf.models import tiny as tiny_models

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
#: The model family of each example's actor and reward model (a new example must be listed).
FAMILY = {
    "gaudi-bloom.yaml": "bloom",
    "gaudi-llama2-7b.yaml": "llama",
    "llama2-7b-lora-2x8.yaml": "llama",
    "multi-tenant-kueue.yaml": "opt",
    "opt-1.3b-single-node.yaml": "opt",
    "quickstart.yaml": "opt",  # runs/quickstart/models: `rlhf tiny-models` builds OPT
    "quickstart-dpo.yaml": "opt",
    "quickstart-grpo.yaml": "opt",
    "qwen2-7b-grpo.yaml": "qwen2",
    "smollm2-135m-local.yaml": "llama",  # SmolLM2 is a Llama
}
#: Toy scale: what changes per stage (everything else is the example's).
TOY = {
    "sft": {"optim.max_steps": 2, "logging.log_interval": 1},
    "reward": {"optim.max_steps": 2, "logging.log_interval": 1},
    "ppo": {"ppo.max_iterations": 1, "evaluation.max_prompts": 4, "logging.log_interval": 1},
    "dpo": {"optim.max_steps": 2, "evaluation.max_prompts": 4, "logging.log_interval": 1},
    "grpo": {"grpo.max_iterations": 1, "evaluation.max_prompts": 4, "logging.log_interval": 1},
}
#: The metrics each stage's training rows carry (its losses), beyond being finite.
LOSSES = {
    "sft": ("loss",),
    "reward": ("loss",),
    "ppo": ("actor_loss", "critic_loss"),
    "dpo": ("loss",),
    "grpo": ("loss", "kl"),
}


def test_every_example_has_a_family():
    assert sorted(FAMILY) == [p.name for p in EXAMPLES], "add the new example's model family to FAMILY"


def _pipeline(manifest: dict) -> list[str]:
    return manifest["spec"].get("pipeline", ["sft", "reward", "ppo"])


def _question(prompt: str) -> str:
    return prompt.split("Human:", 1)[1].split("\n\nAssistant:", 1)[0].strip()


def write_dataset(path: Path, kind: str, seed: int) -> Path:
    """Synthetic pairs in the record format of Hub dataset ``kind`` (its short name), or generic."""
    pairs = read_jsonl(
        generate(path.parent / f".src-{path.stem}", seed=seed, n_sft=10, n_pairs=160, n_heldout=8)["pairs"]
    )
    rows = []
    for r in pairs:
        q, chosen, rejected = _question(r["prompt"]), r["chosen"].strip(), r["rejected"].strip()
        if kind in ("rm-static", "full-hh-rlhf"):  # hh: the transcript form, verbatim
            rows.append(
                {
                    "prompt": f"\n\nHuman: {q}\n\nAssistant:",
                    "chosen": f" {chosen}",
                    "rejected": f" {rejected}",
                }
            )
        elif kind == "synthetic-instruct-gptj-pairwise":  # bare question and answers
            rows.append({"prompt": q, "chosen": chosen, "rejected": rejected})
        elif kind == "rlhf-reward-datasets":  # yitingxie: answers after the last "Assistant:"
            rows.append(
                {
                    "prompt": f"\n\nHuman: {q}\n\n",
                    "chosen": f"Assistant: {chosen}",
                    "rejected": f"Assistant: {rejected}",
                }
            )
        else:
            rows.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family -> (actor dir, reward dir): nano models sharing one tokenizer of the family's conventions."""
    root = tmp_path_factory.mktemp("example-models")
    texts = list(
        corpus_texts(generate(root / "corpus", seed=0, n_sft=300, n_pairs=300, n_heldout=1)["sft"].parent)
    )
    out = {}
    for family in sorted(set(FAMILY.values())):
        # 2048 positions: the examples' lengths fit (qwen2-7b-grpo trains on 1024 tokens)
        actor = tiny_models.build_family(
            root / family / "actor", family, texts, vocab_size=400, seed=0, max_positions=2048
        )
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(actor)
        nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"} | {
            "max_positions": 2048
        }
        reward = tiny_models.build_tiny(root / family / "reward", family, tokenizer=tok, seed=1, **nano)
        out[family] = (actor, reward)
    return out


def toy_manifest(path: Path, work: Path, models: tuple[Path, Path]) -> dict:
    """The example at toy scale on this machine (see the module docstring)."""
    manifest = yaml.safe_load(path.read_text())
    spec = manifest["spec"]
    spec["accelerator"] = "cpu"
    had_reward = "reward" in spec["models"]
    spec["models"] = {"actor": str(models[0])}
    if had_reward:
        spec["models"]["reward"] = str(models[1])
    data_dir = work / "data"
    data_dir.mkdir()
    for key in ("datasets", "sftOnlyDatasets"):
        for i, source in enumerate(spec["data"].get(key, [])):
            name = source["path"].split("/")[-1] if is_hub_id(source["path"]) else f"{key}-{i}"
            source["path"] = str(
                write_dataset(data_dir / f"{name.removesuffix('.jsonl')}.jsonl", name, seed=i)
            )
    heldout = generate(work / "heldout", seed=7, n_sft=1, n_pairs=1, n_heldout=8)["heldout"]
    for stage in _pipeline(manifest):
        options = TOY[stage]
        s = spec["stages"].setdefault(stage, {})
        s.update(nodes=1, devicesPerNode=1, resources={"cpu": 1})
        if s.get("dtype") == "fp16":
            s["dtype"] = "bf16"
        s.pop("offload", None)  # ZeRO offload moves state from device memory, which a CPU run has none of
        trainer = s.setdefault("trainerOptions", {})
        trainer.update(options)
        if "evaluation.prompts" in trainer:
            trainer["evaluation.prompts"] = str(heldout)
    return manifest


def _finite(values: dict) -> list[str]:
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_settings_run_at_toy_scale(example, families, tmp_path):
    manifest = toy_manifest(example, tmp_path, families[FAMILY[example.name]])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    done = subprocess.run(
        [sys.executable, "-m", "rlhf", "run", "run.yaml", "--storage", str(tmp_path / "out")],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    logs = "\n".join(
        f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "out").glob("*/stage.log"))
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{logs}"
    for stage in _pipeline(manifest):
        summary = json.loads((tmp_path / "out" / stage / "summary.json").read_text())
        assert summary["status"] == "completed", (stage, summary)
        assert not _finite(summary["metrics"]), (stage, summary["metrics"])
        rows = [
            json.loads(line) for line in (tmp_path / "out" / stage / "metrics.jsonl").read_text().splitlines()
        ]
        train = [r for r in rows if r["split"] == "train"]
        assert train and all(not _finite(r) for r in train), (stage, train)
        assert any(all(k in r for k in LOSSES[stage]) for r in train), (stage, train)
        assert (tmp_path / "out" / stage / "model" / "config.json").is_file()
