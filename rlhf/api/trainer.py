"""From an RLHFRun to each stage's trainer config: the contract between the spec and the trainer.

:func:`stage_config` returns the dict the operator puts in a stage's ConfigMap and ``rlhf run``
passes to ``rlhf train STAGE --config``. It is checked against the stage's typed config
(:data:`rlhf.config.STAGES`), so an admitted run's configs load in the trainer.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from rlhf.api import graph
from rlhf.api.base import SpecModel, trainer_key
from rlhf.api.errors import SpecError
from rlhf.api.graph import STAGE_NAMES
from rlhf.api.hub import dataset_location, model_location
from rlhf.api.run import PVC_MOUNT_PATH, RLHFRun
from rlhf.config import STAGES, ConfigError, DataSource, StageConfig, build

#: Shared by all stages: tokenized data is built once and reused.
DATA_CACHE = "data_cache"
#: Where a stage's final model lands inside its output directory (``<root>/<stage>/model``).
MODEL_DIR = "model"


def _config_class(stage: str) -> type[StageConfig]:
    return STAGES[stage]


def storage_root(run: RLHFRun) -> str:
    """The run's storage root as the trainers see it: ``localDir``, or where the PVC is mounted."""
    storage = run.spec.storage
    return (storage.local_dir or PVC_MOUNT_PATH).rstrip("/") or "/"


def _model_keys(run: RLHFRun, stage: str, root: str) -> tuple[str, dict[str, tuple[Any, str]]]:
    """The stage's model section name and its keys -> (value, manifest field).

    A stage that reads earlier stages (:data:`rlhf.api.graph.KINDS` inputs) starts from their
    outputs, which carry their tokenizers (spec.models.tokenizer included): PPO's actor from SFT's
    model and its critic (and frozen reward model) from the reward model's, DPO's policy from SFT's,
    GRPO's actor from SFT's and, when the run trains one, its reward model from the reward stage's."""
    models = run.spec.models
    kind = graph.kind(stage)
    if kind.inputs:
        present = set(run.spec.pipeline)
        keys = {
            f"{inp.section}.name_or_path": (f"{root}/{inp.stage}/{MODEL_DIR}", "spec.storage")
            for inp in kind.inputs
            if inp.required or inp.stage in present
        }
        return kind.inputs[0].section, keys
    base, field = (models.actor, "actor") if stage == "sft" else (models.reward, "reward")
    assert base is not None, "RLHFRunSpec's rule: a run with the reward stage sets spec.models.reward"
    # Hub ids load from the copies `rlhf prepare` put on the storage (rlhf.api.hub); paths as given.
    keys = {"model.name_or_path": (model_location(root, base), f"spec.models.{field}")}
    if models.tokenizer:
        keys["model.tokenizer"] = (model_location(root, models.tokenizer), "spec.models.tokenizer")
    return "model", keys


def _sources(root: str, sources: list[DataSource]) -> list[dict[str, Any]]:
    """Data sources as the trainer reads them: Hub datasets from their prepared copies (rlhf.api.hub)."""
    return [dataset_location(root, s.model_dump()) for s in sources]


def _spec_keys(model: SpecModel, where: str) -> dict[str, tuple[Any, str]]:
    """Trainer keys set by the fields of ``model`` (recursively) -> (value, manifest field)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{where}.{info.alias or name}"
        key = trainer_key(info)
        if key is not None and value is not None:
            out[key] = (value, path)
        elif isinstance(value, SpecModel):
            out.update(_spec_keys(value, path))
    return out


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is not a section")
    node[parts[-1]] = value


def _compose(run: RLHFRun, stage: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The stage's trainer config, which manifest field each key came from, and conflicts."""
    spec, root = run.spec, storage_root(run)
    stage_spec = spec.stages.get(stage)
    data = spec.data
    keys: dict[str, tuple[Any, str]] = {
        "seed": (spec.seed, "spec.seed"),
        "data.paths": (_sources(root, data.datasets), "spec.data.datasets"),
        "data.split": (data.split, "spec.data.split"),
        "data.eval_fraction": (data.eval_fraction, "spec.data.evalFraction"),
        "data.chat_format": (data.chat_format, "spec.data.chatFormat"),
        "data.cache_dir": (f"{root}/{DATA_CACHE}", "spec.storage"),
        "checkpoint.output_dir": (f"{root}/{stage}", "spec.storage"),
    }
    if stage == "sft":
        sft_only = _sources(root, data.sft_only_datasets)
        keys["data.sft_only_paths"] = (sft_only, "spec.data.sftOnlyDatasets")
    section, model_keys = _model_keys(run, stage, root)
    keys.update(model_keys)
    for key, item in _spec_keys(stage_spec, f"spec.stages.{stage}").items():
        keys[section + key[len("model") :] if key.startswith("model.") else key] = item

    config: dict[str, Any] = {}
    origins = {key: field for key, (_, field) in keys.items()}
    for key, (value, _) in keys.items():
        _set(config, key, value)
    problems = []
    options = f"spec.stages.{stage}.trainerOptions"
    for key, value in stage_spec.trainer_options.items():
        owner = next((k for k in keys if k == key or key.startswith(k + ".")), None)
        if owner is not None:
            problems.append(f"{options}: {key}: set by {origins[owner]}; set it there")
            continue
        inner = next((k for k in keys if k.startswith(key + ".")), None)
        if inner is not None:
            problems.append(
                f"{options}: {key}: would replace {inner}, set by {origins[inner]}; "
                f"give dotted keys instead, e.g. {key}.<name>"
            )
            continue
        try:
            _set(config, key, value)
        except ValueError as e:
            problems.append(f"{options}: {key}: {e}")
            continue
        origins[key] = options
    return config, origins, problems


def _field_of(key: str, origins: dict[str, str], stage: str) -> str:
    """The manifest field responsible for trainer key ``key`` (its own, or a parent's)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in origins:
            field = origins[prefix]
            return f"{field}: {key}" if field.endswith("trainerOptions") or prefix != key else field
    return f"spec.stages.{stage}: {key}" if key != "<root>" else f"spec.stages.{stage}"


def _check(stage: str, config: dict[str, Any], origins: dict[str, str]) -> list[str]:
    """Build the stage's typed config; its errors, each naming the manifest field at fault."""
    problems = []
    try:
        build(_config_class(stage), config)
    except ConfigError as e:
        for line in str(e).splitlines()[1:]:
            key, _, msg = line.strip().partition(": ")
            msg = msg.removeprefix("Value error, ")
            section, sep, rest = msg.partition(": ")
            if key == "<root>" and sep and section in _SECTION_FIELDS:  # a stage's cross-section check
                problems.append(f"{_SECTION_FIELDS[section]}: {_in_manifest_terms(rest, origins)}")
            else:
                problems.append(f"{_field_of(key, origins, stage)}: {msg}")
    return problems


#: Manifest field of a trainer config section named by a stage-level check ("data: SFT needs ...").
_SECTION_FIELDS = {"data": "spec.data", "model": "spec.models"}


def _in_manifest_terms(message: str, origins: dict[str, str]) -> str:
    """Name trainer keys by the spec fields that set them: data.paths -> spec.data.datasets."""
    names = {
        k: f
        for k, f in origins.items()
        if "." in k and f.startswith("spec.") and not f.endswith(("trainerOptions", "spec.storage"))
    }
    if not names:
        return message
    pattern = "|".join(re.escape(k) for k in sorted(names, key=len, reverse=True))
    return re.sub(rf"(?<![\w.])({pattern})(?![\w])", lambda m: names[m.group(1)], message)


def stage_config(run: RLHFRun, stage: str) -> dict[str, Any]:
    """The trainer config of ``stage`` (one of the run's ``spec.pipeline``) for ``run``, checked.

    Outputs go to ``<storage>/<stage>``, the tokenized-data cache to ``<storage>/data_cache``
    (shared by the stages); SFT trains ``spec.models.actor``, the reward stage
    ``spec.models.reward``, PPO starts from their outputs. Raises :class:`SpecError` naming the
    manifest fields at fault.
    """
    if stage not in STAGE_NAMES:
        raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_NAMES)}")
    if stage not in STAGES:
        raise SpecError(
            [f"spec.pipeline: this trainer has no {stage} stage (it has {', '.join(STAGES)})"],
            f"{run.metadata.name!r} (stage {stage})",
        )
    if stage not in run.spec.pipeline:
        raise SpecError(
            [f"spec.pipeline: the run has no {stage} stage (its stages: {', '.join(run.spec.stage_order)})"],
            f"{run.metadata.name!r} (stage {stage})",
        )
    config, origins, problems = _compose(run, stage)
    problems += _check(stage, config, origins)
    if problems:
        raise SpecError(problems, f"{run.metadata.name!r} (stage {stage})")
    return copy.deepcopy(config)


def stage_configs(run: RLHFRun) -> dict[str, dict[str, Any]]:
    """Every stage's trainer config, by stage in pipeline order; one :class:`SpecError` listing the
    problems of all of them (each line naming its manifest field)."""
    configs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for stage in run.spec.stage_order:
        try:
            configs[stage] = stage_config(run, stage)
        except SpecError as e:
            problems += [p for p in e.problems if p not in problems]
    if problems:
        raise SpecError(problems, repr(run.metadata.name))
    return configs


def config_text(config: dict[str, Any]) -> str:
    """A stage's config file, byte for byte what the trainer reads on every side: the stage's
    ConfigMap on a cluster, ``<storage>/<stage>.config.yaml`` with ``rlhf run``, and what
    ``rlhf validate --stage`` prints (keys sorted, block style)."""
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)
