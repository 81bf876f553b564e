"""``spec.stages``: how each of the three stages (sft, reward, ppo) runs and trains.

Training fields map onto one trainer config key each (named in their description); everything
else the trainer offers is reachable through ``trainerOptions``, checked at admission.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, create_model

from rlhf.api.base import Quantity, Rule, SpecModel, section, trainer_field
from rlhf.api.graph import DEFAULT_PIPELINE, KINDS, STAGE_NAMES
from rlhf.config.parts import DType

# Upper bounds of the counts a stage declares: every one ends up in an int32 field of an MPIJob or
# a pod name (``<run>-<stage>-worker-<i>``, see rlhf.api.meta.LONGEST_CHILD_SUFFIX), so the API
# server must refuse what the MPI operator could never run, not admit it and let it hang.
MAX_NODES = 2048
MAX_DEVICES_PER_NODE = 256
MAX_RETRIES = 100
MAX_COUNT = 1_000_000


class ResourcesSpec(SpecModel):
    """CPU and memory requested by each worker pod of the stage (devices come from devicesPerNode)."""

    cpu: Quantity | None = Field(None, description="CPU cores per worker pod, e.g. 32 or '500m'")
    memory: Quantity | None = Field(None, description="Memory per worker pod, e.g. '256Gi'")


class LoraSpec(SpecModel):
    """LoRA adapters (peft); dim 0 trains the full model."""

    cel_rules = (
        Rule(
            "!self.onlyOptimizeLora || self.dim > 0",
            "onlyOptimizeLora needs dim > 0",
            lambda m: not m.only_optimize_lora or m.dim > 0,
            "onlyOptimizeLora",
        ),
        Rule(
            "!has(self.targetModules) || !self.targetModules.exists(m, m == 'all-linear')",
            "'all-linear' is not a module name: leave targetModules out for the model family's "
            "projections, or list the module names to adapt",
            lambda m: "all-linear" not in (m.target_modules or ()),
            "targetModules",
        ),
    )

    dim: int = trainer_field("lora.dim", le=MAX_COUNT)
    alpha: float | None = trainer_field("lora.alpha")
    dropout: float = trainer_field("lora.dropout", "Dropout of the LoRA layers")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = trainer_field(
        "lora.target_modules",
        "Module name suffixes to adapt (peft target_modules); default the model family's attention and MLP "
        "projections (every linear layer for a family the trainer does not know)",
        default=None,
        max_length=64,
    )
    learning_rate: float | None = trainer_field("lora.learning_rate")
    only_optimize_lora: bool = trainer_field("lora.only_optimize_lora")


class StageSpec(SpecModel):
    """One stage: its MPIJob's shape and the main training settings."""

    cel_rules = (
        Rule(
            "!self.offload || self.zeroStage >= 1",
            "offload needs zeroStage >= 1",
            lambda m: not m.offload or m.zero_stage >= 1,
            "offload",
        ),
    )

    nodes: int = Field(
        1, ge=1, le=MAX_NODES, description="Nodes the stage runs on: MPIJob worker pods, one per node"
    )
    devices_per_node: int = Field(
        1,
        ge=1,
        le=MAX_DEVICES_PER_NODE,
        description="Accelerator devices per node, one training process each (accelerator cpu: processes)",
    )
    resources: ResourcesSpec = section(ResourcesSpec, "CPU and memory requested by each worker pod")
    zero_stage: int = trainer_field("deepspeed.zero_stage")
    dtype: DType = trainer_field("deepspeed.dtype")
    offload: bool = trainer_field("deepspeed.offload")
    gradient_checkpointing: bool = trainer_field("model.gradient_checkpointing")
    per_device_train_batch_size: int = trainer_field(
        "optim.per_device_train_batch_size",
        "Micro-batch size of each process (--per_device_train_batch_size)",
        le=MAX_COUNT,
    )
    learning_rate: float = trainer_field("optim.learning_rate")
    epochs: int = trainer_field("optim.epochs", le=MAX_COUNT)
    lora: LoraSpec = section(LoraSpec, "LoRA adapters (peft); dim 0 trains the full model")
    retries: int = Field(
        2,
        ge=0,
        le=MAX_RETRIES,
        description="Retries of a failed stage: the operator recreates its MPIJob (whose own "
        "backoffLimit is 0), and the retry resumes from the stage's latest checkpoint",
    )
    trainer_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further trainer config keys, dotted, e.g. "
        "{optim.warmup_ratio: 0.1, data.max_seq_len: 512} (see `rlhf config STAGE`). Checked against "
        "the stage's trainer config at admission; keys that a spec field sets "
        "(seed, data paths, model, output_dir, the fields above) are rejected.",
    )


class _StagesBase(SpecModel):
    def get(self, stage: str) -> StageSpec:
        """The spec of ``stage`` (one of :data:`~rlhf.api.graph.STAGE_NAMES`); its defaults when unset."""
        if stage not in STAGE_NAMES:
            raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_NAMES)}")
        return getattr(self, stage) or StageSpec()


#: The stage sections the CRD defaults (DeepSpeed-Chat's three, so that manifests written before
#: spec.pipeline keep their shape); the other kinds' sections are optional.
DEFAULTED = DEFAULT_PIPELINE


def _section(name: str) -> tuple[Any, Any]:
    description = KINDS[name].description
    if name in DEFAULTED:
        return StageSpec, section(StageSpec, description)
    return StageSpec | None, Field(None, description=description)


#: How each stage of the run's pipeline runs and trains: one section per stage kind of the graph
#: (rlhf.api.graph.KINDS), so a new kind needs no edit here. (mypy matches the ``**`` field definitions
#: against create_model's own ``__base__``/``__doc__`` keywords too, and finds no overload.)
StagesSpec = create_model(  # type: ignore[call-overload]
    "StagesSpec",
    __base__=_StagesBase,
    __doc__="How each stage of the run's pipeline runs and trains; a stage "
    "left out runs as one process with the trainer's defaults. Settings of a stage that is not in "
    "spec.pipeline are ignored.",
    **{name: _section(name) for name in STAGE_NAMES},
)
