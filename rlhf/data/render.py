"""Prompts and answers as text, the one way every part of the trainer renders them.

Data preparation, PPO evaluation, ``rlhf chat``, ``prompt-eval`` and ``rw-eval`` all go through a
:class:`Renderer`, so a model is asked questions exactly as it was trained.

* **raw** (DeepSpeed-Chat): ``Human: q\\n\\nAssistant:`` then `` answer`` (:mod:`rlhf.data.formats`).
  A prompt that is already text is used verbatim; a conversation is written as a transcript.
* **template**: the tokenizer's chat template (``apply_chat_template``). The prompt is the
  conversation with the generation prompt (``<|im_start|>assistant\\n``); the answer is what the
  template adds for the assistant's turn after that, end-of-turn marker included. A text prompt in
  the transcript form is parsed into its turns first; other text becomes one user turn.

``data.chat_format: auto`` picks template when the tokenizer has a chat template, else raw.
"""

from __future__ import annotations

from typing import Any

from rlhf.data.chat import Conversation, as_conversation, messages
from rlhf.data.formats import ASSISTANT, HUMAN, TURN_SEP, format_answer
from rlhf.data.sources import DataError

Prompt = str | Conversation  # text (DeepSpeed-Chat's form) or the conversation so far


def resolve_chat_format(tokenizer: Any, chat_format: str) -> str:
    """``template`` or ``raw`` for ``data.chat_format`` (auto: template when the tokenizer has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_format == "auto":
        return "template" if has_template else "raw"
    if chat_format == "template" and not has_template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"data.chat_format is 'template' but the tokenizer {name} has no chat template; "
            "use 'raw' (Human:/Assistant: text) or a tokenizer with a chat_template"
        )
    if chat_format not in ("template", "raw"):
        raise ValueError(f"chat_format must be auto, template or raw, got {chat_format!r}")
    return chat_format


def transcript(turns: Conversation) -> str:
    """A conversation in DeepSpeed-Chat's text form, ending with ``Assistant:`` (its answer to follow)."""
    parts = []
    for role, content in turns:
        if role == "system":
            parts.append(content.strip() + TURN_SEP)
        elif role == "user":
            parts.append(f"{HUMAN} {content.strip()}{TURN_SEP}{ASSISTANT}")
        else:
            parts.append(format_answer(content) + TURN_SEP)
    return "".join(parts)


class Renderer:
    """Text of prompts and answers for one tokenizer and ``data.chat_format``."""

    def __init__(self, tokenizer: Any, chat_format: str = "auto"):
        self.tokenizer = tokenizer
        self.mode = resolve_chat_format(tokenizer, chat_format)

    @property
    def template(self) -> bool:
        return self.mode == "template"

    def _apply(self, turns: Conversation, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages(turns), tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # jinja errors (e.g. roles must alternate) and template bugs alike
            raise DataError(
                f"the chat template cannot render this conversation ({type(e).__name__}: {e})"
            ) from None

    def prompt(self, prompt: Prompt) -> str:
        """The text the model reads before answering."""
        if not self.template:
            return prompt if isinstance(prompt, str) else transcript(prompt)
        return self._apply(as_conversation(prompt), generation_prompt=True)

    def answer(self, prompt: Prompt, answer: str) -> str:
        """The text of ``answer`` as it follows :meth:`prompt` (raw: verbatim after a text prompt, else
        with its leading space; template: the assistant turn's rendering, end-of-turn marker included)."""
        if not self.template:
            return answer if isinstance(prompt, str) else format_answer(answer)
        turns = as_conversation(prompt)
        before = self._apply(turns, generation_prompt=True)
        whole = self._apply((*turns, ("assistant", answer.strip())), generation_prompt=False)
        if not whole.startswith(before):
            raise DataError(
                "the chat template renders the conversation differently once the answer is added "
                "(the prompt is not a prefix of prompt + answer); use data.chat_format: raw"
            )
        return whole[len(before) :]

    def question(self, question: str) -> Conversation:
        """A single question as a prompt."""
        return (("user", question.strip()),)
