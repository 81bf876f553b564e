"""``rlhf prepare MANIFEST``: fill the run's storage so that every stage runs offline.

1. Hub models (actor, reward, tokenizer) are downloaded into ``<root>/hub/models/<org>--<name>``
   and Hub datasets saved (``save_to_disk``) into ``<root>/hub/datasets/<org>--<name>`` with their
   resolved format recorded (:mod:`rlhf.prepare.downloads`); paths are left alone. Which strings are
   Hub ids is decided by :mod:`rlhf.api.hub`, whose mapping the stage configs use too.
   A local model folder holding only a GGUF file is converted in place into an HF folder
   (:mod:`rlhf.prepare.gguf_models`).
2. Each stage's tokenized data caches are built in ``<root>/data_cache`` by the same
   :func:`rlhf.stages.data.prepare_stage_data` call the stage makes (:mod:`rlhf.prepare.caches`).

Idempotent: a rerun finds every copy and cache and does no work. On a cluster the operator runs it
once per run as a Job (``rlhf prepare /etc/rlhf/run.yaml``, storage at ``/mnt/rlhf``); ``rlhf run``
runs it before the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.api import RLHFRun, storage_root
from rlhf.prepare.caches import StageData, build_caches
from rlhf.prepare.downloads import Copied, PrepareError, ensure_dataset, ensure_model
from rlhf.prepare.gguf_models import convert_gguf_folders
from rlhf.prepare.needs import HubNeeds, hub_needs


@dataclass
class Prepared:
    """What :func:`prepare` found or made."""

    copies: list[Copied] = field(default_factory=list)
    data: list[StageData] = field(default_factory=list)

    @property
    def did_work(self) -> bool:
        return any(c.fetched for c in self.copies) or any(
            not stats.get("reused") for d in self.data for stats in d.caches.values()
        )


def prepare(
    run: RLHFRun, stages: list[str] | None = None, *, echo: Callable[[str], None] = print
) -> Prepared:
    """Copy the run's Hub models and datasets into its storage, then build the data caches of
    ``stages`` (default all). ``echo`` receives one line per item."""
    root = Path(storage_root(run))
    out = Prepared()
    needs = hub_needs(run)
    for copy in convert_gguf_folders(run):
        out.copies.append(copy)
        echo(_line(copy))
    for repo_id, kind in needs.models.items():
        copy = ensure_model(root, repo_id, kind)
        out.copies.append(copy)
        echo(_line(copy))
    for repo_id, fmt in needs.datasets.items():
        copy = ensure_dataset(root, repo_id, fmt)
        out.copies.append(copy)
        echo(_line(copy))
    for data in build_caches(run, list(stages or run.spec.stage_order)):
        out.data.append(data)
        echo(f"{data.stage} data: {data.describe()}")
    return out


def _line(copy: Copied) -> str:
    verb = "converted" if copy.what == "GGUF model" else "downloaded"
    state = f"{verb} in {copy.seconds:.1f}s" if copy.fetched else "already prepared"
    detail = f", {copy.detail}" if copy.detail else ""
    return f"{copy.what} {copy.repo_id}: {state} -> {copy.path}{detail}"


__all__ = ["Copied", "HubNeeds", "PrepareError", "Prepared", "StageData", "hub_needs", "prepare"]
