"""The RLHFRun object: models, data, storage, stages, scheduling, and the object around them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from rlhf.api import graph
from rlhf.api.base import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    FreeObject,
    Rule,
    RuleViolation,
    SpecModel,
    no_dotdot,
    section,
    trainer_field,
)
from rlhf.api.graph import DEFAULT_PIPELINE, KINDS, STAGE_NAMES, StageName
from rlhf.api.meta import API_VERSION, KIND, ObjectMeta
from rlhf.api.stages import DEFAULTED, StagesSpec
from rlhf.api.status import RLHFRunStatus
from rlhf.config import DataConfig, DataSource

Accelerator = Literal["nvidia", "habana", "cpu"]
#: Extended resource a worker pod requests per device, by accelerator (cpu requests none).
DEVICE_RESOURCES: dict[str, str | None] = {
    "nvidia": "nvidia.com/gpu",
    "habana": "habana.ai/gaudi",
    "cpu": None,
}
#: Value of RLHF_ACCELERATOR for the trainer (:func:`rlhf.engine.accelerator.detect`), by accelerator.
TRAINER_ACCELERATORS = {"nvidia": "cuda", "habana": "hpu", "cpu": "cpu"}
#: Where the operator mounts the run's PVC (with its subPath) in every pod: the storage root on a cluster.
PVC_MOUNT_PATH = "/mnt/rlhf"

SPLIT_PATTERN = r"^\s*[0-9]+(\.[0-9]*)?\s*,\s*[0-9]+(\.[0-9]*)?\s*,\s*[0-9]+(\.[0-9]*)?\s*$"
_DEFAULT_SPLIT = ",".join(f"{share:g}" for share in DataConfig.model_fields["split"].default)
INT32_MAX = 2**31 - 1
PathStr = Annotated[str, Field(min_length=1, max_length=4096)]


def _mapping_only(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping like {path: Dahoas/rm-static} or {path: DIR, format: hh}")
    return value


#: A data source as the trainer declares it (:class:`rlhf.config.DataSource`), written as a mapping.
Source = Annotated[DataSource, BeforeValidator(_mapping_only)]


class ModelsSpec(SpecModel):
    """The base models, each a Hugging Face Hub id or a path. A Hub id is 'name' or 'org/name' (letters,
    digits, '-', '_', '.'; no '--' or '..'; no file suffix such as .json): the prepare step downloads it
    to <storage>/hub/models/<org>--<name> and the stages load that copy. Anything else is a path, used
    as given: one starting with '/', './', '../' or '~', or with two or more '/'. A relative path is
    relative to the working directory (on a cluster: the storage root, where the operator runs the
    trainers); write ./dir for a local directory 'dir'."""

    actor: PathStr = Field(
        description="Base of the actor: a Hub id (facebook/opt-1.3b, downloaded by the prepare step) "
        "or a directory (/models/opt, ./opt). SFT fine-tunes it; PPO starts from SFT's output",
    )
    reward: PathStr | None = Field(
        None,
        description="Base of the reward model: a Hub id (facebook/opt-350m, downloaded by the prepare "
        "step) or a directory. The reward stage trains it (required when spec.pipeline has reward); PPO's "
        "critic and GRPO's reward model start from its output",
    )
    tokenizer: PathStr | None = Field(
        None,
        description="Tokenizer of both models (Hub id or directory); default each model's own. "
        "PPO scores the actor's tokens with the reward model, so they must share a vocabulary",
    )


class DataSpec(SpecModel):
    """The preference data, split across the three stages the same way in every stage."""

    datasets: list[Source] = Field(
        min_length=1,
        max_length=64,
        description="Preference datasets (prompt/chosen/rejected), split across SFT, reward and PPO. "
        "A path that is a Hub id (Dahoas/rm-static: 'name' or 'org/name', no file suffix) is saved by "
        "the prepare step to <storage>/hub/datasets/<org>--<name> and read from there in the format it "
        "resolves to; any other path (data/pairs.jsonl, ./dir, /data/x) is used as given, relative to the "
        "working directory (on a cluster: the storage root)",
    )
    sft_only_datasets: list[Source] = Field(
        default_factory=list,
        max_length=64,
        description="Datasets used whole, by SFT only; Hub ids and paths as in datasets",
    )
    split: str = Field(
        _DEFAULT_SPLIT,
        max_length=64,
        json_schema_extra={"pattern": SPLIT_PATTERN},
        description="Relative shares of each dataset for SFT, reward and PPO, e.g. '2,4,4' (--data_split)",
    )
    eval_fraction: float = trainer_field("data.eval_fraction")
    chat_format: Literal["auto", "template", "raw"] = trainer_field(
        "data.chat_format",
        "How prompts and answers become text in every stage (and the shared data cache): template "
        "renders them with the tokenizer's chat template, raw as DeepSpeed-Chat's 'Human: ... "
        "Assistant: ...' text, auto the template when the tokenizer has one",
    )

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: str) -> str:
        try:
            DataConfig(split=value)  # the trainer's own parsing and checks
        except ValidationError as e:
            messages = (err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise ValueError("; ".join(messages)) from None
        if not re.match(SPLIT_PATTERN, value):
            raise ValueError(f"expected three non-negative numbers like '2,4,4', got {value!r}")
        return value

    @property
    def shares(self) -> tuple[float, float, float]:
        """The split as numbers (SFT, reward, PPO)."""
        return DataConfig(split=self.split).split


class PVCStorage(SpecModel):
    """A PersistentVolumeClaim in the run's namespace, mounted in every pod (ReadWriteMany for
    several nodes)."""

    cel_rules = (
        Rule(
            "!has(self.subPath) || !self.subPath.matches('(^|/)[.][.](/|$)')",
            "subPath must not contain '..'",
            lambda m: no_dotdot(m.sub_path),
            "subPath",
        ),
    )

    claim_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the PersistentVolumeClaim"
    )
    sub_path: str | None = Field(
        None,
        pattern=r"^[^/]",
        max_length=1024,
        description="Directory inside the volume to use as the storage root",
    )


class StorageSpec(SpecModel):
    """Where stage outputs (<root>/sft, <root>/reward, <root>/ppo) and the shared data cache
    (<root>/data_cache) go. Immutable once the run exists."""

    cel_rules = (
        Rule(
            "has(self.pvc) != has(self.localDir)",
            "exactly one of pvc (on a cluster) or localDir (with rlhf run) must be set",
            lambda m: (m.pvc is None) != (m.local_dir is None),
        ),
        Rule("self == oldSelf", "storage is immutable", None),
    )

    pvc: PVCStorage | None = Field(
        None, description="On a cluster: the PersistentVolumeClaim holding the run"
    )
    local_dir: PathStr | None = Field(
        None, description="With `rlhf run`: a local directory, e.g. runs/quickstart"
    )


class Toleration(SpecModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(
        None, max_length=316, description="Taint key; empty with operator Exists matches all"
    )
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal)")
    value: str | None = Field(None, max_length=63, description="Taint value for operator Equal")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all"
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated")


class SchedulingSpec(SpecModel):
    """Where the stage pods may run, and how they queue."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels every pod requires")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations of every pod"
    )
    affinity: FreeObject | None = Field(None, description="A core/v1 Affinity for every pod")
    priority_class_name: str | None = Field(
        None, pattern=DNS_SUBDOMAIN, max_length=253, description="PriorityClass of the stage jobs"
    )
    queue_name: str | None = Field(
        None, pattern=DNS_LABEL, max_length=63, description="Kueue LocalQueue the stage jobs are submitted to"
    )


class RunPolicySpec(SpecModel):
    """Lifetime of the stage jobs (applied to each stage's MPIJob runPolicy)."""

    suspend: bool = Field(
        False, description="Hold the run: no new stage starts and a running one is suspended"
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Time limit of each stage's job"
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=INT32_MAX,
        description="Delete a finished stage's job (not its outputs) after this many seconds",
    )


def _every_stage(condition: str) -> str:
    """CEL for ``condition`` on every stage section the run sets (``s`` is the stage). Written out
    rather than ``[...].all(...)``: the stages are distinct CEL types, and Kubernetes rejects mixed
    list literals. The sections without a default (dpo, grpo) may be absent."""
    parts = []
    for s in STAGE_NAMES:
        check = condition.replace("s.", f"self.stages.{s}.")
        parts.append(check if s in ALWAYS_SET else f"(!has(self.stages.{s}) || {check})")
    return "(" + " && ".join(parts) + ")"


#: The stage sections the CRD defaults (rlhf.api.stages.DEFAULTED); the others are optional.
ALWAYS_SET = DEFAULTED


def _input_rules() -> tuple[Rule, ...]:
    """One rule per required input of a stage kind: the stage it reads from is in the pipeline."""
    rules = []
    for kind in KINDS.values():
        for inp in kind.inputs:
            if not inp.required:
                continue
            rules.append(
                Rule(
                    f"!self.pipeline.exists(s, s == '{kind.name}') "
                    f"|| self.pipeline.exists(s, s == '{inp.stage}')",
                    f"{kind.name} starts its {inp.role} from the {inp.stage} stage's model; "
                    f"add {inp.stage} to spec.pipeline",
                    None,
                    "pipeline",
                )
            )
    return tuple(rules)


def _pipeline_problems(m: RLHFRunSpec) -> list[str]:
    return graph.problems(m.pipeline) if m.pipeline is not None else []


class RLHFRunSpec(SpecModel):
    """What to train and where: the three DeepSpeed-Chat stages, SFT -> reward model -> PPO."""

    cel_rules = (
        Rule(
            "self.accelerator != 'cpu' || " + _every_stage("s.dtype != 'fp16'"),
            "accelerator cpu does not train in fp16; use bf16 or fp32",
            lambda m: m.accelerator != "cpu" or all(m.stages.get(s).dtype != "fp16" for s in STAGE_NAMES),
            "accelerator",
        ),
        Rule(
            "self.accelerator != 'cpu' || " + _every_stage("!s.offload"),
            "accelerator cpu has no device memory to offload from; set offload: false",
            lambda m: m.accelerator != "cpu" or not any(m.stages.get(s).offload for s in STAGE_NAMES),
            "accelerator",
        ),
        Rule(
            "!self.pipeline.exists(s, s == 'reward') || has(self.models.reward)",
            "the reward stage trains spec.models.reward; set it (or drop reward from spec.pipeline)",
            lambda m: "reward" not in m.pipeline or m.models.reward is not None,
            "models",
        ),
        *_input_rules(),
    )

    @model_validator(mode="after")
    def _check_pipeline(self) -> RLHFRunSpec:
        """The pipeline's own rules (the CEL rules above say the same to the API server)."""
        found = _pipeline_problems(self)
        if found:
            raise RuleViolation([("pipeline", p.removeprefix("spec.pipeline: ")) for p in found])
        return self

    pipeline: list[StageName] = Field(
        default_factory=lambda: list(DEFAULT_PIPELINE),
        min_length=1,
        max_length=len(STAGE_NAMES),
        json_schema_extra={"default": list(DEFAULT_PIPELINE), "x-kubernetes-list-type": "set"},
        description="The run's stages, in any order: each starts once the stages it reads from succeeded "
        "(sft and reward side by side, then ppo). Default DeepSpeed-Chat's three, [sft, reward, ppo]; also "
        "[sft, dpo] (preference pairs, no reward model), [sft, reward, grpo] or [sft, grpo] (GRPO/RLOO with "
        "a reward model and/or reward functions). Each stage's settings are in spec.stages.<stage>",
    )

    @property
    def stage_order(self) -> list[str]:
        """The pipeline's stages in the order they start (and are listed in the status)."""
        return graph.ordered(self.pipeline)

    accelerator: Accelerator = Field(description="Device family: nvidia (CUDA GPUs), habana (Gaudi) or cpu")
    pool: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Node pool of the cluster to run on, by name, as the platform team defined it in the "
        "operator's configuration (its nodes, tolerations, devices, and what a run on it may choose: images, "
        "PriorityClasses, Hub-token Secrets, extra node labels and tolerations). Default: the first pool for "
        "the accelerator that the run's namespace may use. Ignored by `rlhf run`",
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Trainer image; default the operator's for the accelerator",
    )
    hub_token_secret: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Secret in the run's namespace whose HF_TOKEN key is given to the trainers "
        "(gated Hub models)",
    )
    seed: int = trainer_field(
        "seed", "Seeds the data split, shuffling and initialisation of every stage", ge=0, le=2**32 - 1
    )
    models: ModelsSpec = Field(description="Base models of the actor and the reward model")
    data: DataSpec = Field(description="Datasets and how they are split across the stages")
    storage: StorageSpec = Field(description="Where outputs and the data cache go")
    stages: StagesSpec = section(StagesSpec, "How each stage runs and trains")
    scheduling: SchedulingSpec = section(SchedulingSpec, "Node selection and queueing of the stage jobs")
    run_policy: RunPolicySpec = section(RunPolicySpec, "Suspension, deadlines and clean-up of the stage jobs")


class RLHFRun(SpecModel):
    """An RLHF training run: SFT, reward model and PPO (DeepSpeed-Chat's three steps), each as an MPIJob."""

    api_version: Literal["rlhf.dev/v1alpha1"] = Field(alias="apiVersion", description=f"{API_VERSION}")
    kind: Literal["RLHFRun"] = Field(description=KIND)
    metadata: ObjectMeta
    spec: RLHFRunSpec = Field(description="What to train and where")
    status: RLHFRunStatus | None = Field(None, description="Observed state, written by the operator")

    def to_manifest(self) -> dict[str, Any]:
        """The object as a manifest dict (camelCase, defaults filled in, unset fields left out)."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"metadata"})
        api_version, kind = out.pop("apiVersion"), out.pop("kind")
        return {"apiVersion": api_version, "kind": kind, "metadata": self.metadata.dump(), **out}
