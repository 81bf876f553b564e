"""`rlhf chat`, `rw-eval` and `prompt-eval`: the model's limit, the right kind of model, safe output,
and the same rendering as training (chat template or raw text, the tokenizer's BOS)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf import tools
from rlhf.cli import main
from rlhf.data.prompts import read_prompts
from rlhf.data.synthetic import corpus_texts
from rlhf.data.tokenize import Encoder
from rlhf.generation import Sampling
from rlhf.models import tiny as tiny_models
from rlhf.terminal import printable


@pytest.fixture(scope="module")
def short_actor(tiny, tmp_path_factory):
    """A nano OPT actor with only 24 positions."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.actor)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    return tiny_models.build_tiny(
        tmp_path_factory.mktemp("short") / "actor", tokenizer=tok, **{**nano, "max_positions": 24}
    )


@pytest.fixture(scope="module")
def chat_pair(tiny, tmp_path_factory):
    """A ChatML causal LM whose pad is its eos ``<|im_end|>`` (as SmolLM2's), and a reward model of the
    same tokenizer."""
    from transformers import AutoTokenizer

    from rlhf.models.tiny_tokenizers import family_tokenizer

    root = tmp_path_factory.mktemp("chatml")
    tok = family_tokenizer("qwen2", corpus_texts(tiny.data), vocab_size=400)
    tok.pad_token = tok.eos_token
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    actor = tiny_models.build_tiny(root / "actor", "qwen2", tokenizer=tok, **nano)
    rm = AutoModelForSequenceClassification.from_pretrained(actor, num_labels=1)
    rm.save_pretrained(root / "reward")
    AutoTokenizer.from_pretrained(actor).save_pretrained(root / "reward")
    return actor, root / "reward"


def test_printable_escapes_terminal_controls_only():
    text = "red \x1b[31mX\x1b[0m\rbell\x07 \u202eevil\u202c é 😀\n\tok\x9b"
    out = printable(text)
    assert out == "red \\x1b[31mX\\x1b[0m\\rbell\\x07 \\u202eevil\\u202c é 😀\n\tok\\x9b"
    assert printable("plain\nanswer") == "plain\nanswer"


def test_fit_prompt_keeps_the_bos_and_the_last_tokens():
    assert tools.fit_prompt([1, 2, 3], 5, None, [1]) == ([1, 2, 3], 5)
    ids, new = tools.fit_prompt(list(range(1, 31)), 64, 24, [1])
    assert new == 23 and ids == [30]
    ids, new = tools.fit_prompt(list(range(1, 31)), 10, 24, [1])
    assert new == 10 and ids == [1, *range(18, 31)] and len(ids) + new == 24


def test_chat_clamps_prompt_and_new_tokens_to_the_models_positions(short_actor):
    model, tok = tools.load_actor(short_actor)
    long_question = "Say cat twice. " * 20  # far more than 24 positions
    answer = tools.reply(model, tok, [("Hi", "Hello."), (long_question, None)], Sampling(max_new_tokens=64))
    assert isinstance(answer, str)
    assert tools.context_limit(model) == 24


def test_chat_refuses_a_reward_model_and_rw_eval_a_causal_lm(tiny, chat_pair, capsys):
    _, reward = chat_pair
    assert main(["chat", "--model", str(reward), "--prompt", "Hi"]) == 2
    assert "a reward model (Qwen2ForSequenceClassification)" in capsys.readouterr().err
    assert main(["rw-eval", "--model", str(tiny.actor), "--prompt", "Hi", "--answer", "Yo"]) == 2
    assert "not a reward model (OPTForCausalLM)" in capsys.readouterr().err


def test_chat_escapes_control_characters_in_prompts_and_answers(tiny, capsys):
    assert (
        main(["chat", "--model", str(tiny.actor), "--prompt", "Hi\x1b[2J there", "--max-new-tokens", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "\x1b" not in out and "Hi\\x1b[2J there" in out


def test_tools_render_with_the_chat_template_and_read_scores_at_the_answer_end(chat_pair):
    """ChatML with eos ``<|im_end|>`` inside every prompt: the score is the value at the answer's last
    token, so different answers to one prompt get different scores (read inside the prompt, at its
    first ``<|im_end|>``, they would all be the same)."""
    actor, reward = chat_pair
    model, tok = tools.load_scorer(reward)
    prompt = tools.as_turns([("Name a fruit.", None)])
    enc = Encoder(tok)
    assert enc.renderer.template
    rows = enc.rows([prompt] * 2, ["Apple.", "Iron."], [tok.eos_token_id] * 2)
    assert tok.pad_token_id == tok.eos_token_id
    assert rows[0].count(tok.eos_token_id) == 2  # the user turn's <|im_end|> and the answer's
    a, b = tools.score_texts(model, tok, [prompt] * 2, ["Apple.", "Iron."])
    assert a != pytest.approx(b, abs=1e-6)
    with torch.no_grad():
        ids = torch.tensor([rows[0]])
        values = model(ids, attention_mask=torch.ones_like(ids))
    assert a == pytest.approx(float(values[0, -1]), abs=1e-5)


def test_rw_eval_reads_pairs_in_any_data_shape(chat_pair, tmp_path, capsys):
    _, reward = chat_pair
    msg = [{"role": "user", "content": "Name a fruit."}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {
                "chosen": [*msg, {"role": "assistant", "content": "Apple."}],
                "rejected": [*msg, {"role": "assistant", "content": "Iron."}],
            }
        )
        + "\n"
        + json.dumps(
            {"prompt": "Human: Name a color.\n\nAssistant:", "chosen": " Red.", "rejected": " Oslo."}
        )
        + "\n"
    )
    assert main(["rw-eval", "--model", str(reward), "--pairs", str(pairs)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 2 and 0.0 <= result["accuracy"] <= 1.0


def test_the_chat_format_a_model_was_trained_with(tmp_path):
    (tmp_path / "model").mkdir()
    assert tools.trained_chat_format(tmp_path / "model") == "auto"
    (tmp_path / "config.yaml").write_text("data:\n  chat_format: raw\n")
    assert tools.trained_chat_format(tmp_path / "model") == "raw"


def test_prompt_eval_renders_each_model_as_trained(chat_pair, tmp_path):
    actor, _ = chat_pair
    model, tok = tools.load_actor(actor)
    prompts = [tools.as_turns([("Name a fruit.", None)]), "Human: Name a color.\n\nAssistant:"]
    rows, stats = tools.prompt_eval(
        {"a": (model, tok), "b": (model, tok)},
        prompts,
        Sampling(max_new_tokens=3),
        chat_formats={"a": "template", "b": "raw"},
    )
    assert [r["prompt"] for r in rows] == [
        "Human: Name a fruit.\n\nAssistant:",
        "Human: Name a color.\n\nAssistant:",
    ]
    assert set(stats) == {"a", "b"}
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": [{"role": "user", "content": "Hi"}]})
        + "\n"
        + json.dumps({"prompt": "Human: Yo\n\nAssistant:"})
        + "\n"
    )
    assert read_prompts(tmp_path / "p.jsonl") == [(("user", "Hi"),), "Human: Yo\n\nAssistant:"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": [{"role": "bot", "content": "Hi"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: expected a JSON object with 'prompt'"):
        read_prompts(tmp_path / "bad.jsonl")
