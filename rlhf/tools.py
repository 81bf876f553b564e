"""Using trained models: chat with an actor, score answers with a reward model (DeepSpeed-Chat's
rw_eval), and compare a baseline with a finetuned actor side by side (its prompt_eval)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from rlhf.data.formats import format_conversation, format_prompt
from rlhf.generation import Sampling, generate

Turns = list[tuple[str, str | None]]


def load_actor(model_dir: str | Path, device: str = "cpu"):
    """(model, tokenizer) of a causal LM saved by a stage (or any HF causal LM)."""
    from rlhf.config import ModelConfig
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    _check_dir(model_dir)
    model_cfg = ModelConfig(name_or_path=str(model_dir))
    tokenizer = load_tokenizer(model_cfg)
    return load_causal_lm(model_cfg, tokenizer).to(device).eval(), tokenizer


def load_scorer(model_dir: str | Path, num_padding_at_beginning: int | None = None):
    """(reward model, tokenizer) saved by the reward stage."""
    from transformers import AutoConfig

    from rlhf.config import RewardModelConfig
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import load_reward_model

    _check_dir(model_dir)
    saved = getattr(AutoConfig.from_pretrained(model_dir), "num_padding_at_beginning", 0)
    pad_begin = saved if num_padding_at_beginning is None else num_padding_at_beginning
    cfg = RewardModelConfig(name_or_path=str(model_dir), num_padding_at_beginning=pad_begin, dropout=0.0)
    tokenizer = load_tokenizer(cfg)
    return load_reward_model(cfg, tokenizer).eval(), tokenizer


def _check_dir(model_dir: str | Path) -> None:
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a saved model (no config.json); point --model at a stage's model/ directory")


def complete(model, tokenizer, text: str, sampling: Sampling, max_prompt_tokens: int = 1024) -> str:
    """The model's continuation of ``text`` (a prompt ending with ``Assistant:``), up to end-of-text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    gen = generate(model, [ids], eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, sampling=sampling)
    return tokenizer.decode(gen.answers[0], skip_special_tokens=True).strip()


def reply(model, tokenizer, turns: Turns, sampling: Sampling) -> str:
    """The model's answer to the last question of ``turns`` (earlier turns are the conversation so far)."""
    return complete(model, tokenizer, format_conversation(turns), sampling)


def chat(model, tokenizer, sampling: Sampling, read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> None:
    """Interactive multi-turn loop: ``clear`` starts over, ``quit`` (or end of input) leaves."""
    turns: Turns = []
    write("Chat with the model. 'clear' starts a new conversation, 'quit' leaves.")
    while True:
        try:
            question = read("Human: ").strip()
        except EOFError:
            return
        if question in ("quit", "exit"):
            return
        if question == "clear":
            turns = []
            continue
        if not question:
            continue
        answer = reply(model, tokenizer, [*turns, (question, None)], sampling)
        write(f"Assistant: {answer}")
        turns.append((question, answer))


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], answers: list[str], add_eot: bool = True) -> list[float]:
    """Reward-model score of each (prompt, answer), tokenized as in training (answer + end-of-text)."""
    from rlhf.data.formats import format_answer
    from rlhf.data.tokenize import answer_rows
    from rlhf.stages.base import pad_rows

    eot = [tokenizer.eos_token_id if add_eot else None] * len(answers)
    rows = answer_rows(tokenizer, prompts, [format_answer(a) for a in answers], eot)
    ids, mask = pad_rows(rows, tokenizer.pad_token_id, max(map(len, rows)))
    values = model(ids, attention_mask=mask)
    return [float(s) for s in model.scores(values, mask)]


def rw_eval(model, tokenizer, pairs: Iterable[dict[str, Any]], batch: int = 16) -> dict[str, float]:
    """Accuracy (chosen scored above rejected) and mean scores over records with prompt/chosen/rejected."""
    pairs = list(pairs)
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch):
        part = pairs[i : i + batch]
        prompts = [p["prompt"] for p in part]
        chosen += score_texts(model, tokenizer, prompts, [p["chosen"] for p in part])
        rejected += score_texts(model, tokenizer, prompts, [p["rejected"] for p in part])
    n = len(pairs)
    return {"pairs": n, "accuracy": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(n, 1),
            "chosen_score": sum(chosen) / max(n, 1), "rejected_score": sum(rejected) / max(n, 1)}


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSONL file of {prompt: ...} (full "Human: ... Assistant:" text) or a text file of
    questions, one per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                out.append(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON object with 'prompt' ({e})") from None
        else:
            out.append(format_prompt(line))
    return out


def prompt_eval(models: dict[str, tuple[Any, Any]], prompts: list[str], sampling: Sampling,
                checker: str = "none") -> tuple[list[dict[str, str]], dict[str, dict[str, float]]]:
    """Every model's answer to every prompt (rows), and per model its answer statistics."""
    from rlhf.text_metrics import distinct_n, mean_words

    answers = {name: [complete(model, tok, p, sampling) for p in prompts] for name, (model, tok) in models.items()}
    rows = [{"prompt": p, **{name: answers[name][i] for name in models}} for i, p in enumerate(prompts)]
    stats = {}
    for name, ans in answers.items():
        stats[name] = {"distinct_2": distinct_n(ans), "mean_words": mean_words(ans)}
        if checker == "synthetic":
            from rlhf.data.synthetic import answer_stats

            full = answer_stats(prompts, [" " + a for a in ans])
            stats[name].update(property_rate=full["property_rate"], content_rate=full["content_rate"])
    return rows, stats
