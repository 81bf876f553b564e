"""DeepSpeed-Chat's raw text chat format (``data.chat_format: raw``; a chat template renders the
other way, see :mod:`rlhf.data.render`).

A prompt ends with ``Assistant:``; an answer starts with a space, so ``prompt + answer`` reads
naturally and the tokenizer sees the same boundary at training and at generation time.
"""

from __future__ import annotations

HUMAN = "Human:"
ASSISTANT = "Assistant:"
TURN_SEP = "\n\n"


def format_prompt(question: str) -> str:
    """A single-turn prompt for ``question``."""
    return f"{HUMAN} {question.strip()}{TURN_SEP}{ASSISTANT}"


def format_answer(answer: str) -> str:
    """An answer as it follows a prompt (leading space, no trailing whitespace)."""
    return " " + answer.strip()


def format_conversation(turns: list[tuple[str, str | None]]) -> str:
    """Multi-turn text: every (question, answer) pair; the last answer may be None (to be generated)."""
    parts = []
    for question, answer in turns:
        parts.append(format_prompt(question))
        if answer is not None:
            parts.append(format_answer(answer) + TURN_SEP)
    return "".join(parts)
