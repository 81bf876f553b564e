"""Conversations as data: message lists (``[{role, content}, ...]``) and ``Human:/Assistant:`` transcripts.

A :data:`Conversation` is a tuple of ``(role, content)`` pairs, roles ``system``, ``user`` and
``assistant`` — the form chat templates render. It comes from a dataset's message lists
(:func:`conversation`, UltraFeedback's ``chosen``/``rejected``, a ``messages`` column) or from
DeepSpeed-Chat's text form (:func:`parse_transcript`, ``"Human: ... Assistant: ..."``).
:func:`split_last_answer` cuts a whole conversation into the conversation so far and its last answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Conversation = tuple[tuple[str, str], ...]
ROLES = ("system", "user", "assistant")
#: Transcript speakers -> roles (hh-rlhf also writes "H:"/"A:" in a few records; those stay text).
_SPEAKERS = {"Human": "user", "Assistant": "assistant"}
_MARKER = re.compile(r"(?:^|(?<=\s))(Human|Assistant):")


class ChatError(ValueError):
    """A malformed conversation; the message names what is wrong (the caller names the record)."""


def conversation(value: Any, name: str) -> Conversation:
    """A message list as a :data:`Conversation`: each item a ``{role, content}`` mapping with a known
    role and string content (``name`` is the field, for messages)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ChatError(f"{name}: expected a list of {{role, content}} messages, got {type(value).__name__}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ChatError(
                f"{name}[{i}]: expected a {{role, content}} mapping, got {type(message).__name__}"
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatError(f"{name}[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ChatError(f"{name}[{i}].content: expected a string, got {type(content).__name__}")
        out.append((role, content))
    if not out:
        raise ChatError(f"{name}: empty message list")
    return tuple(out)


def parse_transcript(text: str) -> Conversation | None:
    """The turns of a ``Human: ... Assistant: ...`` transcript, or None when ``text`` has no ``Human:`` turn.

    Text before the first marker becomes a system message; a final empty ``Assistant:`` (where an
    answer is to follow) is dropped, so a prompt's conversation ends with the user's turn.
    """
    marks = list(_MARKER.finditer(text))
    if not any(m.group(1) == "Human" for m in marks):
        return None
    turns: list[tuple[str, str]] = []
    head = text[: marks[0].start()].strip()
    if head:
        turns.append(("system", head))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end() : following.start() if following else len(text)].strip()
        turns.append((_SPEAKERS[mark.group(1)], content))
    if turns[-1] == ("assistant", ""):
        turns.pop()
    return tuple(turns)


def as_conversation(prompt: str | Conversation) -> Conversation:
    """A prompt as a conversation: itself, its transcript's turns, or the whole text as one user turn."""
    if isinstance(prompt, tuple):
        return prompt
    return parse_transcript(prompt) or (("user", prompt.strip()),)


def split_last_answer(turns: Conversation, name: str) -> tuple[Conversation, str]:
    """(the conversation before the last turn, the last turn's content), which must be the assistant's."""
    if turns[-1][0] != "assistant":
        raise ChatError(f"{name}: the last message must be the assistant's answer, got role {turns[-1][0]!r}")
    if len(turns) < 2:
        raise ChatError(f"{name}: no prompt before the answer")
    return turns[:-1], turns[-1][1]


def messages(turns: Conversation) -> list[dict[str, str]]:
    """The ``[{role, content}]`` list ``apply_chat_template`` takes."""
    return [{"role": role, "content": content} for role, content in turns]
