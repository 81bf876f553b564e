"""Data pipeline: sources and formats, phase split and blending, tokenization and the shared cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf.config.parts import DataSource
from rlhf.config.stages import StageConfig
from rlhf.data import cache as cache_mod
from rlhf.data import sources as sources_mod
from rlhf.data.cache import prepare_phase_data
from rlhf.data.formats import format_answer, format_prompt
from rlhf.data.sources import DataError, Record, load_source, resolve_source
from rlhf.data.split import blend, hold_out, source_parts, split_bounds, split_records
from rlhf.data.tokenize import eot_token_id, tokenize_records

EOS = "<|endoftext|>"


class DataOnly(StageConfig):
    """A stage config with no stage-specific checks; tests pass ``phase=`` explicitly."""

    phase: ClassVar[int] = 0
    name: ClassVar[str] = "test"


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [
        "Human: what is the capital of France?\n\nAssistant: Paris is the capital.",
        "Human: tell me a joke\n\nAssistant: I am not funny, sorry.",
    ] * 20
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token="<pad>", padding_side="right"
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_json(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def pairs(tag: str, n: int) -> list[dict]:
    return [
        {
            "prompt": f"Human: {tag}{i}?\n\nAssistant:",
            "chosen": f" good {tag}{i}",
            "rejected": f" bad {tag}{i}",
        }
        for i in range(n)
    ]


def resolve_source_path(path: Path, fmt: str = "auto"):
    return resolve_source(DataSource(path=str(path), format=fmt))


def make_cfg(tmp_path: Path, **data) -> DataOnly:
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    return DataOnly(checkpoint={"output_dir": str(tmp_path / "out")}, data=data)


# ------------------------------------------------------------------------------------------ sources/formats


def test_hh_format_from_save_to_disk_dir_named_like_hub(tmp_path):
    row = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go away"}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([row] * 3),
            "test": datasets.Dataset.from_list([{**row, "chosen": " hey"}]),
        }
    ).save_to_disk(str(tmp_path / "Dahoas" / "rm-static"))
    data = load_source(resolve_source_path(tmp_path / "Dahoas" / "rm-static"), require_rejected=True)
    assert data.source.format == "hh" and data.source.kind == "disk"
    assert data.train == [Record(row["prompt"], row["chosen"], row["rejected"])] * 3
    assert data.eval == [Record(row["prompt"], " hey", row["rejected"])]


def test_gptj_pairwise_wraps_prompt_and_answers(tmp_path):
    datasets.Dataset.from_list(
        [{"prompt": "Name a fruit", "chosen": "Apple.", "rejected": "Car."}]
    ).save_to_disk(str(tmp_path / "Dahoas" / "synthetic-instruct-gptj-pairwise"))
    data = load_source(
        resolve_source_path(tmp_path / "Dahoas" / "synthetic-instruct-gptj-pairwise"), require_rejected=True
    )
    assert data.source.format == "gptj-pairwise"
    assert data.train == [Record("Human: Name a fruit\n\nAssistant:", " Apple.", " Car.")]
    assert data.train[0].prompt == format_prompt("Name a fruit") and data.train[0].chosen == format_answer(
        "Apple."
    )
    assert data.eval is None  # a bare Dataset ships no eval split


def test_yitingxie_takes_text_after_last_assistant(tmp_path):
    row = {
        "prompt": "\n\nHuman: hi\n\n",
        "chosen": "Assistant: ok\n\nHuman: more\n\nAssistant: sure",
        "rejected": "Assistant: no",
    }
    write_jsonl(tmp_path / "yitingxie" / "rlhf-reward-datasets" / "train.jsonl", [row])
    data = load_source(
        resolve_source_path(tmp_path / "yitingxie" / "rlhf-reward-datasets"), require_rejected=True
    )
    assert data.source.format == "yitingxie"
    assert data.train == [Record("\n\nHuman: hi\n\nAssistant:", " sure", " no")]


def test_generic_verbatim_and_format_override(tmp_path):
    rows = [{"prompt": "P: x", "chosen": "c", "rejected": "r", "extra": 1}]
    path = write_json(tmp_path / "mine.json", rows)
    assert load_source(resolve_source_path(path), require_rejected=True).train == [Record("P: x", "c", "r")]
    forced = load_source(resolve_source_path(path, "gptj-pairwise"), require_rejected=True)
    assert forced.train == [Record("Human: P: x\n\nAssistant:", " c", " r")]


def test_json_dir_with_test_split_and_local_jsonfile(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "d" / "train.jsonl", pairs("t", 2))
    write_jsonl(tmp_path / "d" / "test.jsonl", pairs("e", 1))
    data = load_source(resolve_source_path(tmp_path / "d"), require_rejected=True)
    assert [r.chosen for r in data.train] == [" good t0", " good t1"] and [r.chosen for r in data.eval] == [
        " good e0"
    ]

    write_json(tmp_path / "chat" / "data" / "train.json", pairs("a", 2))
    write_json(tmp_path / "chat" / "data" / "eval.json", pairs("b", 1))
    explicit = load_source(DataSource(path=f"local/jsonfile:{tmp_path / 'chat'}"), require_rejected=True)
    monkeypatch.chdir(tmp_path / "chat")
    implicit = load_source(DataSource(path="local/jsonfile"), require_rejected=True)
    for data in (explicit, implicit):
        assert len(data.train) == 2 and data.eval == [Record(**pairs("b", 1)[0])]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="local/jsonfile"):
        resolve_source(DataSource(path="local/jsonfile"))


def test_hub_dataset_and_unloadable_name(monkeypatch):
    row = {"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"}
    calls = []

    def fake_load(name):
        calls.append(name)
        if name != "Dahoas/full-hh-rlhf":
            raise FileNotFoundError("not in the offline cache")
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list([row]), "test": datasets.Dataset.from_list([row])}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    sources_mod._load_hub.cache_clear()
    data = load_source(DataSource(path="Dahoas/full-hh-rlhf"), require_rejected=True)
    assert data.source.kind == "hub" and data.source.format == "hh"
    assert data.train == [Record(**row)] and data.eval == [Record(**row)]
    fp = sources_mod.fingerprint(data.source)
    assert set(fp) == {"train", "test"} and all(fp.values())
    with pytest.raises(
        DataError,
        match=r"someone/missing: neither a local file/directory nor a loadable dataset"
        r".*not in the offline cache",
    ):
        load_source(DataSource(path="someone/missing"), require_rejected=True)
    for path in ("./nowhere/data.jsonl", "pairs.parquet", "data/train.csv"):  # paths by rlhf.api.hub's rule
        with pytest.raises(DataError, match="no such file"):
            load_source(DataSource(path=path), require_rejected=True)
        assert path not in calls  # local-looking paths never go to the Hub
    sources_mod._load_hub.cache_clear()


# ---------------------------------------------------------------------------------------------- bad records

BAD_JSON = [
    ({"chosen": "c", "rejected": "r"}, "'prompt': missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "r"}, "'chosen': wrong type"),
    ({"prompt": "p", "chosen": "c", "rejected": "  \n"}, "'rejected': empty"),
    ({"prompt": "", "chosen": "c", "rejected": "r"}, "'prompt': empty"),
    ({"prompt": "p", "chosen": None, "rejected": "r"}, "'chosen': missing"),
    (["not", "an", "object"], "not an object"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_JSON)
def test_bad_json_record_error_names_file_index_field(tmp_path, bad, expected):
    path = write_json(tmp_path / "d.json", [*pairs("x", 2), bad, *pairs("y", 1)])
    with pytest.raises(DataError) as err:
        load_source(resolve_source_path(path), require_rejected=True)
    assert str(path) in str(err.value) and "record 2" in str(err.value) and expected in str(err.value)
    data = load_source(resolve_source_path(path), require_rejected=True, on_bad_record="skip")
    assert len(data.train) == 3 and data.skipped == {str(path): 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json\n", "not valid JSON"),
        ("[1, 2]\n", "not an object"),
        ('{"prompt": "p", "chosen": "c"}\n', "'rejected': missing"),
    ],
)
def test_bad_jsonl_line_names_record_and_line(tmp_path, line, expected):
    rows = [*pairs("x", 1), "\n", line, *pairs("y", 2)]  # blank line 2 is not a record
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_source(resolve_source_path(path), require_rejected=True)
    msg = str(err.value)
    assert str(path) in msg and "record 1 (line 3)" in msg and expected in msg
    data = load_source(resolve_source_path(path), require_rejected=True, on_bad_record="skip")
    assert [r.chosen for r in data.train] == [" good x0", " good y0", " good y1"] and data.skipped == {
        str(path): 1
    }


def test_bad_record_in_saved_dataset_names_split(tmp_path):
    rows = pairs("x", 3)
    rows[1]["chosen"] = " "
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds\[train\]: record 1 field 'chosen': empty"):
        load_source(resolve_source_path(tmp_path / "ds"), require_rejected=True)


def test_rejected_optional_for_sft_only(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "chosen": "c"}])
    assert load_source(resolve_source_path(path), require_rejected=False).train == [Record("p", "c", None)]
    with pytest.raises(DataError, match="'rejected': missing"):
        load_source(resolve_source_path(path), require_rejected=True)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", b'{"prompt": "\xff\xfe"}\n', "not valid UTF-8"),
        ("bad.json", b'[{"prompt": "p", "chosen": "c"},', "not valid JSON"),
        ("obj.json", b'{"prompt": "p",\n "chosen": "c"}', "expected a JSON list"),
    ],
)
def test_unreadable_file_is_never_skippable(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        load_source(resolve_source_path(path), require_rejected=False, on_bad_record="skip")
    assert str(path) in str(err.value)


def test_json_file_may_hold_json_lines(tmp_path):
    one = write_jsonl(tmp_path / "one.json", pairs("x", 1))
    two = write_jsonl(tmp_path / "two.json", pairs("y", 2))
    assert len(load_source(resolve_source_path(one), require_rejected=True).train) == 1
    assert len(load_source(resolve_source_path(two), require_rejected=True).train) == 2


def test_all_records_bad_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["oops\n", "nope\n"])
    with pytest.raises(DataError, match="no usable training records .2 bad records skipped"):
        load_source(resolve_source_path(path), require_rejected=True, on_bad_record="skip")


# ---------------------------------------------------------------------------------------------------- split


def test_split_deterministic_disjoint_covering():
    records = list(range(101))
    parts = split_records(records, (2, 4, 4), seed=7)
    assert parts == split_records(records, (2, 4, 4), seed=7)
    assert [len(p) for p in parts] == [20, 41, 40]  # bounds round(101 * [.2, .6, 1])
    assert sorted(x for p in parts for x in p) == records
    assert parts[0] != records[:20]  # shuffled
    other = split_records(records, (2, 4, 4), seed=8)
    assert other != parts and sorted(x for p in other for x in p) == records


@pytest.mark.parametrize("shares", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (0, 0, 1)])
def test_zero_share_gives_empty_part(shares):
    for n in (0, 1, 2, 3, 7, 10):
        parts = split_records(list(range(n)), shares, seed=1)
        assert all(not p for p, s in zip(parts, shares, strict=True) if s == 0)
        assert sorted(x for p in parts for x in p) == list(range(n))
    assert split_bounds(10, (1, 1, 1)) == [0, 3, 7, 10]


def test_hold_out_and_source_parts():
    records = list(range(40))
    train, evals = hold_out(records, 0.1, seed=3)
    assert (
        len(evals) == 4 and sorted(train + evals) == records and (train, evals) == hold_out(records, 0.1, 3)
    )
    t_parts, e_parts = source_parts(records, None, (1, 1, 2), 0.1, seed=3)
    assert sorted(x for p in e_parts for x in p) == sorted(evals)
    assert sorted(x for p in t_parts for x in p) == sorted(train)
    t_own, e_own = source_parts(records, ["e1", "e2", "e3", "e4"], (1, 1, 2), 0.5, seed=3)
    assert sorted(x for p in t_own for x in p) == records  # own eval split: nothing held out
    assert sorted(x for p in e_own for x in p) == ["e1", "e2", "e3", "e4"]
    assert blend([[1, 2], [3]], seed=0) == blend([[1, 2], [3]], seed=0) and sorted(
        blend([[1, 2], [3]], 0)
    ) == [1, 2, 3]


def decode_sft(tokenizer, ds) -> list[tuple[str, str]]:
    return [
        (
            tokenizer.decode(x["input_ids"][: x["prompt_len"]]),
            tokenizer.decode(x["input_ids"][x["prompt_len"] :]),
        )
        for x in ds
    ]


def test_blending_two_sources_and_sft_only_phase0_only(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", pairs("a", 20))
    write_json(tmp_path / "b" / "train.json", pairs("b", 10))
    s = write_jsonl(
        tmp_path / "s.jsonl",
        [{"prompt": f"Human: s{i}?\n\nAssistant:", "chosen": f" good s{i}"} for i in range(5)],
    )
    cfg = make_cfg(
        tmp_path,
        paths=[str(a), str(tmp_path / "b")],
        sft_only_paths=[str(s)],
        split="1,1,2",
        eval_fraction=0.0,
        add_eot_token=False,
        max_seq_len=512,
    )
    p0 = prepare_phase_data(cfg, tokenizer, phase=0)
    p1 = prepare_phase_data(cfg, tokenizer, phase=1)
    p2 = prepare_phase_data(cfg, tokenizer, phase=2, max_prompt_len=64)
    assert p0.eval is None and p1.eval is None  # eval_fraction 0 and no eval files
    sft = decode_sft(tokenizer, p0.train)
    assert all(a_.startswith(" good") for _, a_ in sft)
    tags0 = {a_.split()[-1] for _, a_ in sft}
    tags1 = {tokenizer.decode(x["chosen_ids"]).split()[-1] for x in p1.train}
    tags2 = {tokenizer.decode(x["prompt_ids"]).split()[1].rstrip("?") for x in p2.train}
    sft_tags = {f"s{i}" for i in range(5)}
    assert sft_tags <= tags0 and not sft_tags & (tags1 | tags2)
    pref = {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(10)}
    assert not tags0 & tags1 and not tags1 & tags2 and not tags0 & tags2
    assert (tags0 - sft_tags) | tags1 | tags2 == pref
    assert [len(tags0 - sft_tags), len(tags1), len(tags2)] == [5 + 2, 5 + 3, 10 + 5]  # b: round(2.5) = 2
    assert [x["path"] for x in p0.stats["sources"]] == [str(a), str(tmp_path / "b"), str(s)]
    assert p0.stats["sources"][0]["train_per_phase"] == [5, 5, 10]
    order = [a_ for _, a_ in sft]
    assert order != sorted(
        order, key=lambda t: (t.split()[-1][0], int(t.split()[-1][1:]))
    )  # blended, shuffled


def test_eval_holdout_in_prepared_data(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", pairs("a", 40))
    cfg = make_cfg(tmp_path, paths=[str(a)], split="1,1,0", eval_fraction=0.25, add_eot_token=False)
    p0 = prepare_phase_data(cfg, tokenizer, phase=0)
    p1 = prepare_phase_data(cfg, tokenizer, phase=1)
    assert (len(p0.train), len(p0.eval), len(p1.train), len(p1.eval)) == (15, 5, 15, 5)
    train_tags = {a_.split()[-1] for _, a_ in decode_sft(tokenizer, p0.train)}
    eval_tags = {a_.split()[-1] for _, a_ in decode_sft(tokenizer, p0.eval)}
    assert not train_tags & eval_tags
    assert p1.stats["sources"][0]["eval_per_phase"] == [5, 5, 0]
    with pytest.raises(ValueError, match="max_prompt_len"):
        prepare_phase_data(cfg, tokenizer, phase=2)


def test_skipped_records_in_stats(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [*pairs("a", 4), "bad\n"])
    cfg = make_cfg(tmp_path, paths=[str(path)], split="1,0,0", eval_fraction=0.0, on_bad_record="skip")
    assert prepare_phase_data(cfg, tokenizer, phase=0).stats["skipped_bad_records"] == {str(path): 1}


# ------------------------------------------------------------------------------------------------- tokenize


def test_sft_truncation_and_prompt_len(tokenizer):
    rec = Record("Human: what is the capital of France?\n\nAssistant:", " Paris is the capital.")
    p, a = ids(tokenizer, rec.prompt), ids(tokenizer, rec.chosen)
    eos = tokenizer.eos_token_id
    full, dropped = tokenize_records([rec], tokenizer, 0, max_seq_len=100, eot_id=eos)
    assert full == {"input_ids": [p + a + [eos]], "prompt_len": [len(p)]} and dropped["truncated"] == 0
    cut, _ = tokenize_records([rec], tokenizer, 0, max_seq_len=len(p) + 1, eot_id=eos)
    assert cut["input_ids"] == [p + a[:1]] and cut["prompt_len"] == [len(p)]
    none, dropped = tokenize_records([rec], tokenizer, 0, max_seq_len=len(p), eot_id=eos)
    assert none["input_ids"] == [] and dropped["truncated"] == 1
    assert tokenizer.decode(full["input_ids"][0][: len(p)]) == rec.prompt


def test_reward_truncation_and_identical_pairs(tokenizer):
    prompt = "Human: tell me a joke\n\nAssistant:"
    p = ids(tokenizer, prompt)
    good = Record(prompt, " I am not funny", " sorry")
    same = Record(prompt, " same", " same")
    late = Record(prompt, " I am not funny, sorry.", " I am not funny, sorry!")  # differ only at the end
    cols, dropped = tokenize_records([good, same, late], tokenizer, 1, max_seq_len=len(p) + 2, eot_id=None)
    assert cols["chosen_ids"] == [(p + ids(tokenizer, good.chosen))[: len(p) + 2]]
    assert cols["rejected_ids"] == [(p + ids(tokenizer, good.rejected))[: len(p) + 2]]
    assert cols["prompt_len"] == [len(p)]  # where the answers start (DPO scores the tokens after it)
    assert dropped == {"truncated": 0, "identical": 2}
    _, dropped = tokenize_records([good], tokenizer, 1, max_seq_len=len(p), eot_id=None)
    assert dropped == {"truncated": 1, "identical": 0}


def test_ppo_prompts_keep_last_tokens(tokenizer):
    rec = Record("Human: what is the capital of France?\n\nAssistant:", " Paris")
    p = ids(tokenizer, rec.prompt)
    cols, _ = tokenize_records([rec], tokenizer, 2, max_seq_len=8, max_prompt_len=5)
    assert cols == {"prompt_ids": [p[-5:]]} and tokenizer.decode(p[-5:]).endswith("Assistant:")


def test_eot_token(tokenizer):
    assert eot_token_id(tokenizer, True, None) == tokenizer.eos_token_id
    assert eot_token_id(tokenizer, True, "<pad>") == tokenizer.pad_token_id
    assert eot_token_id(tokenizer, False, "<nope>") is None
    with pytest.raises(DataError, match="'<nope>' is not in the tokenizer's vocabulary"):
        eot_token_id(tokenizer, True, "<nope>")


# ---------------------------------------------------------------------------------------------------- cache


def test_cache_built_once_reused_and_rebuilt_on_change(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", pairs("a", 15))
    cfg = make_cfg(tmp_path, paths=[str(path)], split="1,1,1", eval_fraction=0.2)
    first = prepare_phase_data(cfg, tokenizer, phase=1)
    assert first.stats["reused"] is False and (Path(first.stats["cache_dir"]) / "meta.json").is_file()
    assert first.stats["cache_dir"] == str(tmp_path / "cache" / first.stats["cache_key"])
    assert set(first.train.column_names) == {"chosen_ids", "rejected_ids", "prompt_len"}

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(cache_mod, "tokenize_records", boom)
    again = prepare_phase_data(cfg, tokenizer, phase=1)
    assert again.stats["reused"] is True and again.stats["cache_key"] == first.stats["cache_key"]
    assert again.train[:] == first.train[:] and again.eval[:] == first.eval[:]
    monkeypatch.undo()

    keys = {first.stats["cache_key"]}
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    touched = prepare_phase_data(cfg, tokenizer, phase=1)
    cfg.data.max_seq_len = 16
    shorter = prepare_phase_data(cfg, tokenizer, phase=1)
    other_tok = prepare_phase_data(cfg, make_tokenizer(280), phase=1)
    sft = prepare_phase_data(cfg, tokenizer, phase=0)
    for built in (touched, shorter, other_tok, sft):
        assert built.stats["reused"] is False and built.stats["cache_key"] not in keys
        keys.add(built.stats["cache_key"])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_non_zero_rank(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", pairs("a", 6))
    cfg = make_cfg(tmp_path, paths=[str(path)], split="1,0,0", eval_fraction=0.0)
    barriers = []
    with pytest.raises(DataError, match="shared by all nodes"):
        prepare_phase_data(cfg, tokenizer, phase=0, rank=1, barrier=lambda: barriers.append(1))
    assert barriers == [1] and not (tmp_path / "cache").exists()  # rank 1 never builds
    built = prepare_phase_data(cfg, tokenizer, phase=0, rank=0, barrier=lambda: barriers.append(0))
    loaded = prepare_phase_data(cfg, tokenizer, phase=0, rank=1, barrier=lambda: barriers.append(1))
    assert barriers == [1, 0, 1] and loaded.stats["cache_key"] == built.stats["cache_key"]
    assert loaded.train[:] == built.train[:] and len(loaded.train) == 6
