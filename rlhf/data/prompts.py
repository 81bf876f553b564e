"""Prompt files (``rlhf prompt-eval``, PPO's ``evaluation.prompts``): one prompt per JSONL record
or text line, as DeepSpeed-Chat text or chat messages."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.data.chat import as_conversation, conversation
from rlhf.data.formats import format_prompt
from rlhf.data.render import Prompt, transcript


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a JSONL file of {prompt: ...} (full "Human: ... Assistant:" text, or a list of
    {role, content} messages) or a text file of questions, one per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out: list[Prompt] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix not in (".jsonl", ".json"):
            out.append(format_prompt(line))
            continue
        try:
            value = json.loads(line)["prompt"]
            out.append(value if isinstance(value, str) else conversation(value, "prompt"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{n}: expected a JSON object with 'prompt', a string or a list of "
                f"{{role, content}} messages ({e})"
            ) from None
    return out


def prompt_text(prompt: Prompt) -> str:
    """A prompt as DeepSpeed-Chat's text, for display and the synthetic task's checker."""
    return prompt if isinstance(prompt, str) else transcript(as_conversation(prompt))
