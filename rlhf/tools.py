"""Using trained models: chat with an actor, score answers with a reward model (DeepSpeed-Chat's
rw_eval), and compare a baseline with a finetuned actor side by side (its prompt_eval).

Prompts and answers are rendered and tokenized exactly as in training (:class:`rlhf.data.tokenize.Encoder`,
one renderer): with the chat format the model was trained with — ``data.chat_format`` of the
stage's ``config.yaml`` next to its ``model/`` directory, else ``auto`` (the chat template when the
tokenizer has one) — and the tokenizer's own BOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlhf.data.chat import Conversation
from rlhf.data.formats import format_answer
from rlhf.data.prompts import prompt_text
from rlhf.data.render import Prompt
from rlhf.data.sources import Record
from rlhf.data.tokenize import Encoder, keep_last
from rlhf.generation import Sampling, generate

Turns = list[tuple[str, str | None]]


def _architectures(model_dir: str | Path) -> list[str]:
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: not a saved model (no config.json); point --model at a stage's model/ directory"
        )
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_dir}/config.json cannot be read ({e})") from None
    return list(config.get("architectures") or [])


def _is_reward_model(architectures: list[str]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def trained_chat_format(model_dir: str | Path) -> str:
    """``data.chat_format`` the model was trained with (the stage's ``config.yaml`` beside ``model/``),
    else auto."""
    import yaml

    path = Path(model_dir).parent / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        saved = None
    value = ((saved or {}).get("data") or {}).get("chat_format") if isinstance(saved, dict) else None
    return value if value in ("auto", "template", "raw") else "auto"


def load_actor(model_dir: str | Path, device: str = "cpu"):
    """(model, tokenizer) of a causal LM saved by a stage (or any HF causal LM); a reward model is refused."""
    from rlhf.config import ModelConfig
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    archs = _architectures(model_dir)
    if _is_reward_model(archs):
        raise ValueError(
            f"{model_dir}: a reward model ({', '.join(archs)}), which scores answers but cannot write "
            "them; use a causal LM, e.g. the sft/ or ppo/ model/ directory (rw-eval scores with this one)"
        )
    model_cfg = ModelConfig(name_or_path=str(model_dir))
    tokenizer = load_tokenizer(model_cfg)
    return load_causal_lm(model_cfg, tokenizer).to(device).eval(), tokenizer


def load_scorer(model_dir: str | Path):
    """(reward model, tokenizer) saved by the reward stage; a causal LM is refused (its head would be
    random)."""
    from rlhf.config import RewardModelConfig
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import load_reward_model

    archs = _architectures(model_dir)
    if not _is_reward_model(archs):
        raise ValueError(
            f"{model_dir}: not a reward model ({', '.join(archs) or 'no architectures'}); its score head "
            "would be random — use the reward stage's model/ directory"
        )
    cfg = RewardModelConfig(name_or_path=str(model_dir), dropout=0.0)
    tokenizer = load_tokenizer(cfg)
    return load_reward_model(cfg, tokenizer).eval(), tokenizer


def context_limit(model) -> int | None:
    """How many tokens the model can attend to (prompt and answer together); None: no fixed limit."""
    from rlhf.models.checks import position_limit

    return position_limit(getattr(model, "config", None))


def fit_prompt(
    ids: list[int], max_new_tokens: int, limit: int | None, prefix: Sequence[int]
) -> tuple[list[int], int]:
    """(prompt ids, new tokens) within ``limit`` positions: at most ``limit - 1`` new tokens, and the
    prompt's last tokens (its BOS kept) in the room left."""
    if limit is None:
        return ids, max_new_tokens
    new = max(1, min(max_new_tokens, limit - 1))
    return keep_last(ids, limit - new, prefix), new


def complete(model, tokenizer, prompt: Prompt, sampling: Sampling, chat_format: str = "auto") -> str:
    """The model's answer to ``prompt`` (text, e.g. ending with ``Assistant:``, or a conversation), up to
    its end-of-text; prompt and new tokens together fit the model's positions."""
    enc = Encoder(tokenizer, chat_format)
    ids, new = fit_prompt(enc.prompts([prompt])[0], sampling.max_new_tokens, context_limit(model), enc.prefix)
    if new != sampling.max_new_tokens:
        sampling = replace(sampling, max_new_tokens=new)
    gen = generate(
        model, [ids], eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, sampling=sampling
    )
    return tokenizer.decode(gen.answers[0], skip_special_tokens=True).strip()


def as_turns(turns: Turns) -> Conversation:
    """(question, answer) pairs, the last answer None, as a conversation."""
    out: list[tuple[str, str]] = []
    for question, answer in turns:
        out.append(("user", question))
        if answer is not None:
            out.append(("assistant", answer))
    return tuple(out)


def reply(model, tokenizer, turns: Turns, sampling: Sampling, chat_format: str = "auto") -> str:
    """The model's answer to the last question of ``turns`` (earlier turns are the conversation so far;
    the oldest are left out when the conversation no longer fits the model)."""
    limit = context_limit(model)
    if limit is not None:
        enc = Encoder(tokenizer, chat_format)
        while len(turns) > 1 and len(enc.prompts([as_turns(turns)])[0]) + sampling.max_new_tokens > limit:
            turns = turns[1:]
    return complete(model, tokenizer, as_turns(turns), sampling, chat_format)


def chat(
    model,
    tokenizer,
    sampling: Sampling,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    chat_format: str = "auto",
) -> None:
    """Interactive multi-turn loop: ``clear`` starts over, ``quit`` (or end of input) leaves."""
    from rlhf.terminal import printable

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
        answer = reply(model, tokenizer, [*turns, (question, None)], sampling, chat_format)
        write(f"Assistant: {printable(answer)}")
        turns.append((question, answer))


@torch.no_grad()
def score_rows(model, tokenizer, rows: list[list[int]]) -> list[float]:
    """Reward-model score of each token row, read at its last token (by the attention mask)."""
    from rlhf.batching import pad_rows

    ids, mask = pad_rows(rows, tokenizer.pad_token_id, max(map(len, rows)))
    values = model(ids, attention_mask=mask)
    return [float(s) for s in model.scores(values, mask)]


def score_texts(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    answers: Sequence[str],
    add_eot: bool = True,
    chat_format: str = "auto",
) -> list[float]:
    """Reward-model score of each (prompt, answer), tokenized as in training (answer + end-of-text).
    Answers are plain text: after a text prompt they follow it after one space, as in DeepSpeed-Chat's
    data."""
    enc = Encoder(tokenizer, chat_format)
    eot = [tokenizer.eos_token_id if add_eot else None] * len(answers)
    answers = [
        a.strip() if isinstance(p, tuple) or enc.renderer.template else format_answer(a)
        for p, a in zip(prompts, answers, strict=True)
    ]
    return score_rows(model, tokenizer, enc.rows(list(prompts), answers, eot))


def rw_eval(
    model, tokenizer, records: Sequence[Record], batch: int = 16, chat_format: str = "auto"
) -> dict[str, float]:
    """Accuracy (chosen scored above rejected) and mean scores over preference records, tokenized
    exactly as the reward stage tokenized its pairs (pairs identical after tokenizing are left out)."""
    from rlhf.data.tokenize import eot_token_id, tokenize_records

    limit = context_limit(model) or 1 << 30
    cols, dropped = tokenize_records(
        records,
        tokenizer,
        1,
        max_seq_len=limit,
        chat_format=chat_format,
        eot_id=eot_token_id(tokenizer, True, None),
    )
    chosen, rejected = [], []
    for i in range(0, len(cols["chosen_ids"]), batch):
        chosen += score_rows(model, tokenizer, cols["chosen_ids"][i : i + batch])
        rejected += score_rows(model, tokenizer, cols["rejected_ids"][i : i + batch])
    n = len(chosen)
    return {
        "pairs": n,
        "identical_pairs": dropped["identical"],
        "accuracy": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(n, 1),
        "chosen_score": sum(chosen) / max(n, 1),
        "rejected_score": sum(rejected) / max(n, 1),
    }


def prompt_eval(
    models: dict[str, tuple[Any, Any]],
    prompts: list[Prompt],
    sampling: Sampling,
    checker: str = "none",
    chat_formats: dict[str, str] | None = None,
) -> tuple[list[dict[str, str]], dict[str, dict[str, float]]]:
    """Every model's answer to every prompt (rows), and per model its answer statistics."""
    from rlhf.text_metrics import diversity_stats

    formats = chat_formats or {}
    answers = {
        name: [complete(model, tok, p, sampling, formats.get(name, "auto")) for p in prompts]
        for name, (model, tok) in models.items()
    }
    texts = [prompt_text(p) for p in prompts]
    rows = [{"prompt": t, **{name: answers[name][i] for name in models}} for i, t in enumerate(texts)]
    stats = {}
    for name, ans in answers.items():
        stats[name] = diversity_stats(ans)
        if checker == "synthetic":
            from rlhf.data.synthetic import answer_stats

            full = answer_stats(texts, [" " + a for a in ans])
            stats[name].update(property_rate=full["property_rate"], content_rate=full["content_rate"])
    return rows, stats
