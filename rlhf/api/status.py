"""``status`` of an RLHFRun, written by the operator (and by ``rlhf run`` locally)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from rlhf.api.base import SpecModel
from rlhf.api.graph import STEPS, StageName

#: A stage is Stopped when the run failed for good while it was still running: its job is deleted
#: (freeing its devices) and it never resumes.
StageState = Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"]
#: ``status.stage``: the steps running now, comma-separated in run order (``prepare``,
#: ``sft,reward``, ``ppo``), or the last one that ran.
_STEP = "(" + "|".join(STEPS) + ")"
CURRENT_STEPS = rf"^{_STEP}(,{_STEP})*$"
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]

# metav1.Condition's validation, as Kubernetes declares it.
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def _time(description: str) -> Any:
    # RFC 3339 strings from the API server are parsed (strict mode would refuse them).
    return Field(None, description=description, strict=False)


class Condition(SpecModel):
    """A condition in the shape of Kubernetes' metav1.Condition (Ready, Succeeded, Failed, ...)."""

    type: str = Field(pattern=CONDITION_TYPE, max_length=316, description="Type in CamelCase, e.g. Succeeded")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was set for"
    )
    last_transition_time: datetime = Field(strict=False, description="When status last changed")
    reason: str = Field(
        pattern=CONDITION_REASON,
        min_length=1,
        max_length=1024,
        description="Machine-readable CamelCase reason for the last transition",
    )
    message: str = Field(max_length=32768, description="Human-readable details; may be empty")


class StageStatus(SpecModel):
    """Progress of one stage."""

    name: StageName = Field(description="The stage: sft, reward, ppo, dpo or grpo")
    job_name: str | None = Field(None, max_length=253, description="The stage's MPIJob")
    state: StageState = Field(
        "Pending", description="Pending, Running, Succeeded, Failed, or Stopped (the run failed while it ran)"
    )
    start_time: datetime | None = _time("When the stage's job started")
    completion_time: datetime | None = _time("When the stage's job finished")
    retries: int = Field(0, ge=0, description="Failed attempts so far")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Final metrics from the stage's summary.json, e.g. eval/accuracy"
    )


class RLHFRunStatus(SpecModel):
    """Observed state of the run."""

    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on")
    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended")
    stage: str | None = Field(
        None,
        pattern=CURRENT_STEPS,
        max_length=64,
        description="The steps running now, comma-separated (prepare; sft,reward; ppo), "
        "or the last one that ran",
    )
    start_time: datetime | None = _time("When the first stage started")
    completion_time: datetime | None = _time("When the run succeeded or failed for good")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations of the run's state",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    stages: list[StageStatus] = Field(
        default_factory=list,
        description="One entry per stage that has started",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
