"""Can a model section load, and does it fit the run? Checked at a stage's start, before any work,
each problem one line naming the config key (``actor.name_or_path: ...``) instead of a traceback
from transformers, or an ``IndexError`` hours into training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, ModelConfig

#: Files that carry a tokenizer's vocabulary; a directory with none of them has no tokenizer
#: (``tokenizer_config.json`` alone is not one: transformers would build an empty tokenizer from it).
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.tiktoken",
)
#: Config attributes holding the number of positions a model can attend to, by family.
POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


def local_dir(value: str, key: str) -> Path | None:
    """The directory ``value`` names, None for a Hub id; ConfigError when it is a path that cannot be
    a model."""
    from rlhf.api.hub import is_hub_id

    path = Path(value).expanduser()
    try:
        exists, is_dir = path.exists(), path.is_dir()
        entries = sorted(p.name for p in path.iterdir()) if is_dir else []
    except OSError as e:  # permissions, a stale network mount
        raise ConfigError(f"{key}: {value} cannot be read ({e.strerror or e})") from None
    if not exists:
        if is_hub_id(value):
            return None
        raise ConfigError(f"{key}: {value} does not exist")
    if not is_dir:
        raise ConfigError(f"{key}: {value} is a file, not a model directory")
    if not entries:
        raise ConfigError(f"{key}: {value} is an empty directory")
    return path


def check_local_model(path: Path, value: str, where: str) -> None:
    """A local model directory must hold a saved model's config."""
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{where}: {value} has no config.json: not a saved model "
            "(point it at a stage's model/ directory or a Hub model)"
        )


def check_local_tokenizer(path: Path, value: str, where: str, section: str) -> None:
    """A local tokenizer source (a model directory, or ``<section>.tokenizer``) must hold vocabulary files."""
    if not any((path / name).is_file() for name in VOCAB_FILES):
        raise ConfigError(
            f"{where}: {value} has no tokenizer files (none of {', '.join(VOCAB_FILES)}); save the "
            f"tokenizer with the model, or point {section}.tokenizer at one"
        )


def check_local_sources(model: ModelConfig, key: str) -> bool:
    """The checks that need no network and no transformers: local paths exist and hold a model and a
    tokenizer. True when ``name_or_path`` is local (False: a Hub id, checked by loading)."""
    where = f"{key}.name_or_path"
    local = local_dir(model.name_or_path, where)
    if local is not None:
        check_local_model(local, model.name_or_path, where)
    source_key = f"{key}.tokenizer" if model.tokenizer else where
    source = model.tokenizer or model.name_or_path
    tok_dir = local_dir(source, source_key)
    if tok_dir is not None:
        check_local_tokenizer(tok_dir, source, source_key, key)
    return local is not None


def check_model(model: ModelConfig, key: str) -> None:
    """``model.name_or_path`` holds a model and the tokenizer source a tokenizer (``key``: e.g. "actor");
    a Hub id must load (from the local Hub cache when offline)."""
    if not check_local_sources(model, key):
        model_config(model, f"{key}.name_or_path")


def check_tokenizer(tokenizer: Any, model: ModelConfig, key: str) -> None:
    """A loaded tokenizer that encodes nothing (an empty vocabulary) is refused."""
    source_key = f"{key}.tokenizer" if model.tokenizer else f"{key}.name_or_path"
    if len(tokenizer) == 0 or not tokenizer("Hello world", add_special_tokens=False)["input_ids"]:
        raise ConfigError(
            f"{source_key}: the tokenizer of {model.tokenizer or model.name_or_path} is empty "
            "(it turns text into no tokens)"
        )


def model_config(model: ModelConfig, where: str):
    """The model's transformers config; ConfigError naming ``where`` when it cannot be loaded."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model.name_or_path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: {model.name_or_path} cannot be loaded: {first}") from None


def position_limit(config: Any) -> int | None:
    """How many positions the model has (None: no fixed limit, e.g. ALiBi in Bloom)."""
    for attr in POSITION_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_positions(model: ModelConfig, key: str, needed: int, setting: str) -> None:
    """Refuse a run whose sequences (``needed`` tokens, from ``setting``) exceed the model's positions."""
    limit = position_limit(model_config(model, f"{key}.name_or_path"))
    if limit is not None and needed > limit:
        raise ConfigError(
            f"{setting} = {needed} exceeds the {limit} positions of {key}.name_or_path "
            f"({model.name_or_path}); lower it to {limit} or less"
        )
