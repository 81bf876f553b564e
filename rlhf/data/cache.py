"""Prepared (split, blended, tokenized) phase data, cached on storage shared by all ranks.

:func:`prepare_phase_data` is the entry point of every stage. The cache lives in
``<cfg.data_cache_dir>/<cache_key>/`` (``train/``, ``eval/`` as ``save_to_disk`` datasets, plus
``meta.json`` with the stats and the key's inputs). The key hashes everything that changes the
output: phase, sources (path, format, file size/mtime or Hub fingerprint), shares, eval fraction,
seed, lengths, eot token, bad-record policy, chat format, the tokenizer (its chat template
included) and :data:`FORMAT_VERSION`.

Global rank 0 builds the cache if it is missing (in a temp dir renamed into place, so a crash
never leaves a half-written cache), then every rank calls ``barrier()`` and loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from rlhf.config.parts import DataConfig
from rlhf.config.stages import StageConfig
from rlhf.data import split as splitting
from rlhf.data.render import resolve_chat_format
from rlhf.data.sources import DataError, Record, ResolvedSource, fingerprint, load_source, resolve_source
from rlhf.data.tokenize import eot_token_id, to_dataset, tokenize_records
from rlhf.rewards import row_of

log = logging.getLogger(__name__)

FORMAT_VERSION = (
    4  # bump when the cached samples change (2: the tokenizer's BOS, chat formats; 3: pairs' prompt_len;
)
#                     4: prompts (phase 2) keep their dataset row, which GRPO's reward functions read)
META = "meta.json"
SPLITS = ("train", "eval")


@dataclass
class PhaseData:
    """A phase's tokenized samples (None when empty) and how they were made.

    ``stats``: phase; sources (per source: path, format, kind, train/eval records read, and
    train/eval_per_phase chunk sizes or, for SFT-only sources, train/eval_used); skipped_bad_records
    ({file or name[split]: count}); dropped ({split: {truncated, identical}}); train/eval_samples;
    cache_key; cache_dir; reused (False only on the rank that built the cache in this call).
    """

    train: datasets.Dataset | None
    eval: datasets.Dataset | None
    stats: dict[str, Any] = field(default_factory=dict)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, normalizer, added tokens and chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for transient in ("truncation", "padding"):  # call-time settings, not the tokenizer
            spec.pop(transient, None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(
        json.dumps(
            [
                getattr(tokenizer, "eos_token", None),
                getattr(tokenizer, "bos_token", None),
                getattr(tokenizer, "add_bos_token", None),
                getattr(tokenizer, "chat_template", None),
            ],
            default=str,
        ).encode()
    )
    return h.hexdigest()


def _key_inputs(
    data: DataConfig,
    phase: int,
    seed: int,
    max_prompt_len: int | None,
    tokenizer: Any,
    eot_id: int | None,
    sources: list[ResolvedSource],
    sft_only: list[ResolvedSource],
) -> dict[str, Any]:
    def describe(src: ResolvedSource) -> dict[str, Any]:
        return {"path": src.spec, "format": src.format, "fingerprint": fingerprint(src)}

    inputs: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "phase": phase,
        "seed": seed,
        "sources": [describe(s) for s in sources],
        "sft_only": [describe(s) for s in sft_only] if phase == 0 else [],
        "split": list(data.split),
        "eval_fraction": data.eval_fraction,
        "on_bad_record": data.on_bad_record,
        "chat_format": resolve_chat_format(tokenizer, data.chat_format),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    if phase == 2:
        inputs["max_prompt_len"] = max_prompt_len
    else:
        inputs.update(max_seq_len=data.max_seq_len, eot_id=eot_id)
    return inputs


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def _phase_records(
    data: DataConfig,
    phase: int,
    seed: int,
    sources: list[ResolvedSource],
    sft_only: list[ResolvedSource],
    stats: dict[str, Any],
) -> tuple[list[Record], list[Record]]:
    """Read, split and blend every source into the phase's (train, eval) records."""
    train_parts: list[list[Record]] = []
    eval_parts: list[list[Record]] = []
    for src, is_pref in [(s, True) for s in sources] + [(s, False) for s in (sft_only if phase == 0 else [])]:
        loaded = load_source(src, require_rejected=is_pref, on_bad_record=data.on_bad_record)
        for where, n in loaded.skipped.items():
            log.warning("skipped %d bad records in %s", n, where)
            stats["skipped_bad_records"][where] = n
        entry: dict[str, Any] = {
            "path": src.spec,
            "format": src.format,
            "kind": "preference" if is_pref else "sft_only",
            "train_records": len(loaded.train),
            "eval_records": None if loaded.eval is None else len(loaded.eval),
        }
        if is_pref:
            t_chunks, e_chunks = splitting.source_parts(
                loaded.train, loaded.eval, data.split, data.eval_fraction, seed
            )
            train_parts.append(t_chunks[phase])
            eval_parts.append(e_chunks[phase])
            entry.update(
                train_per_phase=[len(c) for c in t_chunks], eval_per_phase=[len(c) for c in e_chunks]
            )
        else:
            t, e = splitting.sft_only_parts(loaded.train, loaded.eval, data.eval_fraction, seed)
            train_parts.append(t)
            eval_parts.append(e)
            entry.update(train_used=len(t), eval_used=len(e))
        stats["sources"].append(entry)
    return splitting.blend(train_parts, seed), splitting.blend(eval_parts, seed)


def _build(
    target: Path,
    data: DataConfig,
    phase: int,
    seed: int,
    tokenizer: Any,
    max_prompt_len: int | None,
    eot_id: int | None,
    sources: list[ResolvedSource],
    sft_only: list[ResolvedSource],
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """Write the cache for one key to ``target`` atomically; returns its stats."""
    stats: dict[str, Any] = {"phase": phase, "sources": [], "skipped_bad_records": {}, "dropped": {}}
    records = dict(zip(SPLITS, _phase_records(data, phase, seed, sources, sft_only, stats), strict=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        for name in SPLITS:
            cols, dropped = tokenize_records(
                records[name],
                tokenizer,
                phase,
                max_seq_len=data.max_seq_len,
                max_prompt_len=max_prompt_len,
                eot_id=eot_id,
                chat_format=data.chat_format,
            )
            stats["dropped"][name] = dropped
            if sum(dropped.values()):
                log.warning(
                    "%s: dropped %s samples of %d (%s)",
                    name,
                    sum(dropped.values()),
                    len(records[name]),
                    dropped,
                )
            ds = to_dataset(cols, phase)
            if phase == 2 and ds is not None:  # every record gives a prompt: rows and samples stay aligned
                ds = ds.add_column(
                    "row",
                    [json.dumps(row_of(r.prompt, r.chosen, r.rejected, r.where)) for r in records[name]],
                )
            stats[f"{name}_samples"] = 0 if ds is None else len(ds)
            if ds is not None:
                ds.save_to_disk(str(tmp / name))
        (tmp / META).write_text(json.dumps({"stats": stats, "inputs": inputs}, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / META).is_file():  # not a concurrent build of the same key
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def prepare_phase_data(
    cfg: StageConfig,
    tokenizer: Any,
    *,
    phase: int | None = None,
    max_prompt_len: int | None = None,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> PhaseData:
    """The tokenized train/eval data of ``phase`` (default ``cfg.phase``), built once and cached.

    ``rank`` is the global rank: rank 0 builds the cache when missing, then all ranks call
    ``barrier()`` and load it. ``max_prompt_len`` is required for phase 2 (PPO prompts).
    """
    phase = cfg.phase if phase is None else phase
    if phase not in (0, 1, 2):
        raise ValueError(f"phase must be 0, 1 or 2, got {phase}")
    if phase == 2 and (max_prompt_len is None or max_prompt_len < 1):
        raise ValueError("phase 2 (PPO prompts) needs max_prompt_len >= 1")
    data = cfg.data
    sources = [resolve_source(s) for s in data.paths]
    sft_only = [resolve_source(s) for s in data.sft_only_paths] if phase == 0 else []
    if not sources and not sft_only:
        raise DataError(
            f"no data for phase {phase}: set data.paths" + (" or data.sft_only_paths" if phase == 0 else "")
        )
    eot_id = None if phase == 2 else eot_token_id(tokenizer, data.add_eot_token, data.eot_token)
    inputs = _key_inputs(data, phase, cfg.seed, max_prompt_len, tokenizer, eot_id, sources, sft_only)
    key = cache_key(inputs)
    root = Path(cfg.data_cache_dir)
    target = root / key
    reused = True
    if rank == 0 and not (target / META).is_file():
        log.info("building phase %d data cache %s", phase, target)
        _build(target, data, phase, cfg.seed, tokenizer, max_prompt_len, eot_id, sources, sft_only, inputs)
        reused = False
    barrier()
    if not (target / META).is_file():
        raise DataError(
            f"rank {rank}: prepared data {target} not found after rank 0 built it; data.cache_dir "
            f"({root}) must be on storage shared by all nodes"
        )
    stats = json.loads((target / META).read_text())["stats"]
    stats.update(cache_key=key, cache_dir=str(target), reused=reused)
    loaded = {
        name: datasets.load_from_disk(str(target / name)) if (target / name).is_dir() else None
        for name in SPLITS
    }
    return PhaseData(train=loaded["train"], eval=loaded["eval"], stats=stats)
