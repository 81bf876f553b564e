"""What a run needs from the Hugging Face Hub (pure: decided from the manifest's strings, rlhf.api.hub)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.api import RLHFRun
from rlhf.api.hub import dataset_format, is_hub_id

#: "model": the whole repository (weights included); "tokenizer": only the tokenizer's files.
ModelKind = Literal["model", "tokenizer"]


@dataclass
class HubNeeds:
    """Hub repositories to copy into the run's storage: models (repo id -> kind) and datasets
    (repo id -> format)."""

    models: dict[str, ModelKind] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)


def hub_needs(run: RLHFRun) -> HubNeeds:
    """The Hub models (actor, reward, tokenizer) and datasets of ``run``, in manifest order.

    A repository used both as a model and as the tokenizer is downloaded once, whole.
    """
    needs = HubNeeds()
    models = run.spec.models
    for repo in (models.actor, models.reward):
        if repo and is_hub_id(repo):
            needs.models[repo] = "model"
    if models.tokenizer and is_hub_id(models.tokenizer):
        needs.models.setdefault(models.tokenizer, "tokenizer")
    for source in [*run.spec.data.datasets, *run.spec.data.sft_only_datasets]:
        if is_hub_id(source.path):
            needs.datasets[source.path] = dataset_format(source.path, source.format)
    return needs
