"""Tiny byte-level BPE tokenizers with each model family's conventions, trained offline.

What a family's real tokenizer does and the trainer must get right is copied here: which special
tokens it has, whether it has a pad token (Llama, Mistral, GPT-2 and GPT-NeoX do not: the trainer
pads with the eos), whether it puts a BOS before every text (Llama, Mistral, Gemma and OPT do; OPT's
BOS is its eos ``</s>``), and for the instruction-tuned families a chat template (Llama-2-chat's
``[INST]`` with ``{{ bos_token }}`` and the eos inside the conversation, Qwen2's ChatML whose eos is
``<|im_end|>``, Gemma's ``<start_of_turn>`` whose end-of-turn marker is not its eos).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

LLAMA2_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token + bos_token }}{% endif %}{% endfor %}"
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Style:
    """A family's tokenizer conventions. ``specials`` take the first ids, in order."""

    specials: tuple[str, ...]
    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    add_bos: bool = False
    chat_template: str | None = None


STYLES: dict[str, Style] = {
    "opt": Style(
        ("<s>", "<pad>", "</s>", "<unk>"), eos="</s>", bos="</s>", pad="<pad>", unk="<unk>", add_bos=True
    ),
    "bloom": Style(("<unk>", "<s>", "</s>", "<pad>"), eos="</s>", bos="<s>", pad="<pad>", unk="<unk>"),
    "gpt-neox": Style(("<|endoftext|>",), eos="<|endoftext|>", bos="<|endoftext|>", unk="<|endoftext|>"),
    "gpt2": Style(("<|endoftext|>",), eos="<|endoftext|>", bos="<|endoftext|>", unk="<|endoftext|>"),
    "llama": Style(
        ("<unk>", "<s>", "</s>"), eos="</s>", bos="<s>", unk="<unk>", add_bos=True, chat_template=LLAMA2_CHAT
    ),
    "mistral": Style(("<unk>", "<s>", "</s>"), eos="</s>", bos="<s>", unk="<unk>", add_bos=True),
    "qwen2": Style(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=CHATML,
    ),
    "gemma": Style(
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        eos="<eos>",
        bos="<bos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        chat_template=GEMMA_CHAT,
    ),
}


def family_tokenizer(family: str, texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` with ``family``'s conventions (:data:`STYLES`),
    right-padded; lossless on any text."""
    if family not in STYLES:
        raise ValueError(f"unknown model family {family!r}; expected one of {tuple(STYLES)}")
    style = STYLES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(style.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if style.add_bos:
        assert style.bos is not None
        bos = (style.bos, tok.token_to_id(style.bos))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{style.bos} $A", pair=f"{style.bos} $A {style.bos} $B", special_tokens=[bos]
        )
    named = {"bos_token": style.bos, "eos_token": style.eos, "pad_token": style.pad, "unk_token": style.unk}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        padding_side="right",
        chat_template=style.chat_template,
        **{k: v for k, v in named.items() if v is not None},
    )
