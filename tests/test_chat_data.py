"""Chat data: the tokenizer's own BOS in every sample, chat templates (one renderer), and datasets in
the messages form (UltraFeedback, TRL's conversational form, hh-rlhf raw transcripts, SFT messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config.parts import DataSource
from rlhf.data.chat import parse_transcript
from rlhf.data.formats import format_conversation
from rlhf.data.render import Renderer
from rlhf.data.sources import DataError, Record, load_source
from rlhf.data.tokenize import Encoder, answer_rows, bos_prefix, keep_last, tokenize_records
from rlhf.models.tiny_tokenizers import STYLES, family_tokenizer

TEXTS = [
    "Human: what is the capital of France?\n\nAssistant: Paris is the capital. Cheers!",
    "Human: tell me a joke\n\nAssistant: I am not funny, sorry.",
] * 20


@pytest.fixture(scope="module")
def toks():
    return {family: family_tokenizer(family, TEXTS, vocab_size=300) for family in STYLES}


def rec(prompt, chosen=" Paris.", rejected=" Oslo."):
    return Record(prompt, chosen, rejected)


RAW = rec("Human: What is the capital of France?\n\nAssistant:")
CHAT = Record((("user", "What is the capital of France?"),), "Paris.", "Oslo.")


@pytest.mark.parametrize(
    "family, adds_bos",
    [
        ("opt", True),
        ("llama", True),
        ("mistral", True),
        ("gemma", True),
        ("gpt2", False),
        ("bloom", False),
        ("gpt-neox", False),
        ("qwen2", False),
    ],
)
def test_bos_prefix_is_the_tokenizers_own_default(toks, family, adds_bos):
    tok = toks[family]
    assert bos_prefix(tok) == ([tok.bos_token_id] if adds_bos else [])


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2"])
def test_samples_are_what_the_tokenizer_gives_for_the_text(toks, family):
    """Raw text: every phase's ids equal ``tokenizer(prompt + answer)`` plus the eot, BOS included
    exactly when the tokenizer adds one (OPT's is its eos ``</s>``)."""
    tok = toks[family]
    eot = tok.eos_token_id
    full = tok(RAW.prompt + RAW.chosen)["input_ids"] + [eot]
    prompt = tok(RAW.prompt)["input_ids"]
    sft, _ = tokenize_records([RAW], tok, 0, max_seq_len=256, eot_id=eot, chat_format="raw")
    assert sft == {"input_ids": [full], "prompt_len": [len(prompt)]}
    rm, _ = tokenize_records([RAW], tok, 1, max_seq_len=256, eot_id=eot, chat_format="raw")
    assert rm["chosen_ids"] == [full]
    assert rm["rejected_ids"] == [tok(RAW.prompt + RAW.rejected)["input_ids"] + [eot]]
    ppo, _ = tokenize_records([RAW], tok, 2, max_seq_len=256, max_prompt_len=64, chat_format="raw")
    assert ppo["prompt_ids"] == [prompt]
    # rw-eval and PPO's reward model with its own tokenizer re-tokenize text the same way
    assert answer_rows(tok, [RAW.prompt], [RAW.chosen], [eot]) == [full]
    if family == "gpt2":
        assert full[0] != tok.bos_token_id
    else:
        assert full[0] == tok.bos_token_id and full[1] != tok.bos_token_id


def test_ppo_prompts_cut_from_the_left_keep_the_bos(toks):
    tok = toks["llama"]
    long = rec("Human: " + "tell me a joke " * 20 + "\n\nAssistant:")
    cols, _ = tokenize_records([long], tok, 2, max_seq_len=256, max_prompt_len=8, chat_format="raw")
    whole = tok(long.prompt)["input_ids"]
    assert cols["prompt_ids"] == [[tok.bos_token_id, *whole[-7:]]]
    assert keep_last([1, 5, 6], 8, [1]) == [1, 5, 6] and keep_last([1, 5, 6, 7], 2, [1]) == [1, 7]
    assert keep_last([5, 6, 7], 2, [1]) == [6, 7]  # a prompt without the prefix gets none
    assert keep_last([1, 5, 6, 7], 1, [1]) == [7]  # no room for anything but the last token


def test_chatml_template_prompt_and_answer(toks):
    """Qwen2's ChatML: the prompt is the template with its generation prompt; the answer is the
    assistant turn up to ``<|im_end|>`` — the eos, so it ends the answer exactly once."""
    tok = toks["qwen2"]
    eot = tok.eos_token_id
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok(
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )["input_ids"]
    cols, _ = tokenize_records([RAW, CHAT], tok, 0, max_seq_len=256, eot_id=eot)  # auto: the template
    for ids, n in zip(cols["input_ids"], cols["prompt_len"], strict=True):
        assert ids[:n] == prompt
        assert tok.decode(ids[n:]) == "Paris.<|im_end|>"
    assert cols["input_ids"][0] == cols["input_ids"][1]  # a transcript prompt is rendered like its turns


def test_a_template_that_writes_the_bos_gets_it_once_and_eos_inside_prompts_stays(toks):
    """Llama-2-chat writes ``{{ bos_token }}`` itself and ends each answer with ``</s><s>``: the pad
    (= eos) id occurs inside a multi-turn prompt, and every sample still starts with one BOS."""
    tok = toks["llama"]
    eot = tok.eos_token_id
    turns = (("user", "Hi"), ("assistant", "Hello."), ("user", "Name a fruit."))
    cols, _ = tokenize_records([Record(turns, "Apple.", "Iron.")], tok, 1, max_seq_len=256, eot_id=eot)
    chosen = cols["chosen_ids"][0]
    assert chosen[0] == tok.bos_token_id and chosen[1] != tok.bos_token_id
    assert chosen.count(eot) == 2 and chosen[-1] == eot  # one in the prompt, one ending the answer
    assert tok.decode(chosen).endswith("[INST] Name a fruit. [/INST] Apple. </s>")


def test_an_end_of_turn_that_is_not_the_eos_is_followed_by_it(toks):
    tok = toks["gemma"]
    cols, _ = tokenize_records([CHAT], tok, 0, max_seq_len=256, eot_id=tok.eos_token_id)
    ids, n = cols["input_ids"][0], cols["prompt_len"][0]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[n:])[-2:] == ["<end_of_turn>", "<eos>"]
    off, _ = tokenize_records([CHAT], tok, 0, max_seq_len=256, eot_id=None)  # data.add_eot_token: false
    assert tok.convert_ids_to_tokens(off["input_ids"][0])[-1] == "<end_of_turn>"


def test_raw_rendering_of_conversations_is_deepspeed_chats_text(toks):
    tok = toks["gpt2"]
    r = Renderer(tok, "auto")
    assert r.mode == "raw"
    turns = (("user", "Hi"), ("assistant", "Hello."), ("user", "Name a fruit."))
    assert r.prompt(turns) == format_conversation([("Hi", "Hello."), ("Name a fruit.", None)])
    assert r.answer(turns, "Apple.") == " Apple."
    assert r.prompt(RAW.prompt) == RAW.prompt and r.answer(RAW.prompt, " x") == " x"  # text: verbatim
    assert parse_transcript(r.prompt(turns)) == turns


def test_chat_format_choice(toks):
    assert Renderer(toks["qwen2"], "raw").mode == "raw"
    assert Renderer(toks["qwen2"], "auto").mode == "template"
    with pytest.raises(
        DataError, match="data.chat_format is 'template' but the tokenizer .* has no chat template"
    ):
        Renderer(toks["opt"], "template")


def test_transcripts_parse_into_turns():
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:"
    assert parse_transcript(text) == (("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a fruit."))
    assert parse_transcript("Be brief.\n\nHuman: Hi\n\nAssistant:") == (
        ("system", "Be brief."),
        ("user", "Hi"),
    )
    assert parse_transcript("no speakers here") is None


def test_a_conversation_the_template_cannot_render_is_named(tmp_path):
    tok = family_tokenizer("qwen2", TEXTS, vocab_size=300)
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    records = [Record((("user", "Hi"),), "Hello.", where="pairs.jsonl: record 7")]
    with pytest.raises(
        DataError, match=r"pairs.jsonl: record 7: the chat template cannot render .*alternate"
    ):
        tokenize_records(records, tok, 0, max_seq_len=64, eot_id=tok.eos_token_id)


def test_encoder_rows_match_the_reward_stage(toks):
    tok = toks["qwen2"]
    enc = Encoder(tok)
    cols, _ = tokenize_records([CHAT], tok, 1, max_seq_len=256, eot_id=tok.eos_token_id)
    eot = [tok.eos_token_id] * 2
    assert enc.rows([CHAT.prompt] * 2, [CHAT.chosen, CHAT.rejected], eot) == [
        cols["chosen_ids"][0],
        cols["rejected_ids"][0],
    ]


# ------------------------------------------------------------------------------------- messages form


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, require_rejected: bool = True, **kw):
    return load_source(DataSource(path=str(path)), require_rejected=require_rejected, **kw).train


def msg(role, content):
    return {"role": role, "content": content}


def test_ultrafeedback_rows_prompt_from_the_conversation(tmp_path):
    row = {
        "prompt": "Name a fruit.",
        "prompt_id": "x",
        "chosen": [msg("user", "Name a fruit."), msg("assistant", "Apple.")],
        "rejected": [msg("user", "Name a fruit."), msg("assistant", "Iron.")],
        "score_chosen": 8.0,
    }
    [r] = load(write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert (r.prompt, r.chosen, r.rejected) == ((("user", "Name a fruit."),), "Apple.", "Iron.")


def test_multi_turn_and_system_messages_are_kept(tmp_path):
    convo = [
        msg("system", "Be brief."),
        msg("user", "Hi"),
        msg("assistant", "Hello."),
        msg("user", "A fruit?"),
    ]
    row = {"chosen": [*convo, msg("assistant", "Apple.")], "rejected": [*convo, msg("assistant", "Iron.")]}
    [r] = load(write_jsonl(tmp_path / "mt.jsonl", [row]))
    assert r.prompt == tuple((m["role"], m["content"]) for m in convo) and r.chosen == "Apple."


def test_trl_conversational_rows_with_a_separate_prompt(tmp_path):
    rows = [
        {
            "prompt": [msg("user", "A fruit?")],
            "chosen": [msg("assistant", "Apple.")],
            "rejected": [msg("assistant", "Iron.")],
        },
        {"prompt": "A color?", "chosen": [msg("assistant", "Red.")], "rejected": [msg("assistant", "Oslo.")]},
    ]
    a, b = load(write_jsonl(tmp_path / "trl.jsonl", rows))
    assert (a.prompt, a.chosen, a.rejected) == ((("user", "A fruit?"),), "Apple.", "Iron.")
    assert (b.prompt, b.chosen) == ((("user", "A color?"),), "Red.")


def test_hh_rlhf_raw_transcripts_without_a_prompt(tmp_path):
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: Apple.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: Iron.",
    }
    [r] = load(write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert r.prompt == (("user", "Hi"), ("assistant", "Hello!"), ("user", "A fruit?"))
    assert (r.chosen, r.rejected) == ("Apple.", "Iron.")


def test_sft_messages_rows(tmp_path):
    rows = [{"messages": [msg("user", "A fruit?"), msg("assistant", "Apple.")]}]
    [r] = load(write_jsonl(tmp_path / "sft.jsonl", rows), require_rejected=False)
    assert (r.prompt, r.chosen, r.rejected) == ((("user", "A fruit?"),), "Apple.", None)


def test_messages_rows_load_from_a_saved_dataset(tmp_path):
    import datasets

    convo = [msg("user", "A fruit?")]
    ds = datasets.Dataset.from_list(
        [
            {
                "chosen": [*convo, msg("assistant", "Apple.")],
                "rejected": [*convo, msg("assistant", "Iron.")],
                "extra": 1,
            }
        ]
    )
    datasets.DatasetDict({"train_prefs": ds, "test_prefs": ds}).save_to_disk(str(tmp_path / "uf"))
    loaded = load_source(DataSource(path=str(tmp_path / "uf")), require_rejected=True)
    assert loaded.train[0].chosen == "Apple." and loaded.eval is not None and len(loaded.eval) == 1


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {
                "chosen": [msg("user", "Hi"), msg("assistant", "A")],
                "rejected": [msg("user", "Ho"), msg("assistant", "B")],
            },
            "record 0 field 'rejected': its conversation before the answer differs from chosen's",
        ),
        (
            {
                "chosen": [msg("user", "Hi"), msg("user", "A")],
                "rejected": [msg("user", "Hi"), msg("assistant", "B")],
            },
            "record 0 field 'chosen': the last message must be the assistant's answer, got role 'user'",
        ),
        (
            {
                "chosen": [msg("user", "Hi"), msg("bot", "A")],
                "rejected": [msg("user", "Hi"), msg("assistant", "B")],
            },
            "record 0 field 'chosen[1].role': expected one of system, user, assistant, got 'bot'",
        ),
        (
            {"chosen": [msg("user", "Hi"), {"role": "assistant", "content": 3}], "rejected": []},
            "record 0 field 'chosen[1].content': expected a string, got int",
        ),
        (
            {"chosen": [msg("assistant", "A")], "rejected": [msg("assistant", "B")]},
            "record 0 field 'prompt': missing",
        ),
        (
            {"chosen": "Apple.", "rejected": "Iron."},
            "record 0 field 'prompt': missing (and 'chosen' is not a 'Human: ... Assistant: ...' transcript)",
        ),
        (
            {
                "chosen": [msg("user", "Hi"), msg("assistant", "  ")],
                "rejected": [msg("user", "Hi"), msg("assistant", "B")],
            },
            "record 0 field 'chosen': empty answer",
        ),
        ({"messages": [msg("user", "Hi"), msg("assistant", "A")]}, "record 0 field 'rejected': missing"),
    ],
)
def test_bad_messages_rows_name_record_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as err:
        load(path)
    assert f"{path}: {expected.replace('record 0', 'record 0 (line 1)')}" in str(err.value)
    with pytest.raises(DataError, match="no usable training records"):
        load(path, on_bad_record="skip")


def test_the_chat_format_and_template_are_part_of_the_cache_key(tmp_path):
    from test_data import make_cfg
    from test_data import write_jsonl as write_rows

    from rlhf.data.cache import prepare_phase_data

    path = write_rows(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": f"Human: q{i}?\n\nAssistant:", "chosen": f" a{i}", "rejected": f" b{i}"}
            for i in range(20)
        ],
    )
    tok = family_tokenizer("qwen2", TEXTS, vocab_size=300)
    keys = {
        fmt: prepare_phase_data(make_cfg(tmp_path, paths=[str(path)], chat_format=fmt), tok, phase=1).stats[
            "cache_key"
        ]
        for fmt in ("raw", "template", "auto")
    }
    assert keys["raw"] != keys["template"] == keys["auto"]
    tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    changed = prepare_phase_data(make_cfg(tmp_path, paths=[str(path)]), tok, phase=1).stats["cache_key"]
    assert changed != keys["template"]
