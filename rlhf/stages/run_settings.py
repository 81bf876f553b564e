"""What a checkpoint was trained with, and whether a resume may continue from it.

Every checkpoint carries ``run_settings.json``: the stage's resolved config (minus the settings in
:data:`MAY_CHANGE`) and, per dataset the stage reads, its training-sample count and cache key (a
hash of the data files, tokenizer, lengths and split). A resume compares them with the current
run and refuses, naming every difference, unless ``checkpoint.allow_changed_config`` is set: a
shrunk dataset would silently shift the data position and schedule, and a new learning rate would
silently not apply to the steps already taken. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, StageConfig

FILE = "run_settings.json"
#: Settings (dotted prefixes) that may differ on resume: they extend the run (epochs, steps), or only
#: change where and how it reports, evaluates and checkpoints.
MAY_CHANGE = (
    "optim.epochs",
    "optim.max_steps",
    "ppo.max_iterations",
    "grpo.max_iterations",
    "logging",
    "checkpoint",
    "evaluation",
    "data.cache_dir",
    "data.num_workers",
    "deepspeed.dist_timeout_seconds",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MAY_CHANGE)


def settings_of(cfg: StageConfig, data_stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The settings a checkpoint of ``cfg`` records; ``data_stats``: per dataset name, its stats
    (``train_samples``, ``cache_key``)."""
    config = {k: v for k, v in _flatten(cfg.model_dump(mode="json")).items() if not _may_change(k)}
    data = {
        name: {"train_samples": stats.get("train_samples"), "cache_key": stats.get("cache_key")}
        for name, stats in data_stats.items()
    }
    return {"config": config, "data": data}


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per setting or dataset that differs between a checkpoint's settings and the run's."""
    lines = []
    old, new = saved.get("config", {}), current.get("config", {})
    for key in sorted(set(old) | set(new)):
        if _may_change(key) or old.get(key) == new.get(key):
            continue
        before = _show(old[key]) if key in old else "(not set)"
        after = _show(new[key]) if key in new else "(not set)"
        lines.append(f"{key}: {before} at the checkpoint, {after} now")
    old_data, new_data = saved.get("data", {}), current.get("data", {})
    for name in sorted(set(old_data) | set(new_data)):
        a, b = old_data.get(name, {}), new_data.get(name, {})
        if a.get("train_samples") != b.get("train_samples"):
            lines.append(
                f"data ({name}): {a.get('train_samples')} training samples at the checkpoint, "
                f"{b.get('train_samples')} now"
            )
        elif a.get("cache_key") != b.get("cache_key"):
            lines.append(
                f"data ({name}): the tokenized data differs (a data file, the tokenizer, the lengths or the "
                f"split changed; cache {a.get('cache_key')} at the checkpoint, {b.get('cache_key')} now)"
            )
    return lines


def check_resume(step_dir: Path, current: dict[str, Any], allow_changed: bool) -> list[str]:
    """The differences between checkpoint ``step_dir`` and the current settings (empty: none, or a
    checkpoint without recorded settings). Raises ConfigError naming them unless ``allow_changed``."""
    try:
        saved = json.loads((step_dir / FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ConfigError(f"checkpoint {step_dir}: {FILE} cannot be read ({e})") from None
    changed = differences(saved, current)
    if changed and not allow_changed:
        raise ConfigError(
            f"checkpoint.resume: the checkpoint {step_dir} was trained with other data or settings "
            "than this run:\n"
            + "".join(f"  - {line}\n" for line in changed)
            + "Resuming would mix them. To continue from it anyway set checkpoint.allow_changed_config=true; "
            "to start over, use a new checkpoint.output_dir"
        )
    return changed
