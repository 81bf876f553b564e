"""Load an RLHFRun manifest for this machine: the cluster's checks, plus where its storage is here."""

from __future__ import annotations

import os
from pathlib import Path

from rlhf.api import (
    STAGE_NAMES,
    RLHFRun,
    SpecError,
    load_manifest,
    read_manifest,
    storage_root,
)

NEEDS_LOCAL_DIR = (
    "spec.storage: rlhf run keeps the run in a local directory: set spec.storage.localDir, "
    "or pass --storage DIR (spec.storage.pvc is for clusters)"
)


def load_run(manifest: str | os.PathLike[str], storage: str | None = None, *, local: bool = False) -> RLHFRun:
    """The run in ``manifest``, checked exactly as admission checks it (same messages as ``rlhf validate``).

    ``storage`` replaces ``spec.storage`` with ``{localDir: storage}``. With ``local`` (``rlhf run``),
    a run that still stores on a PVC is an error naming ``spec.storage``. Raises :class:`SpecError`.
    """
    if storage is None:
        run = load_manifest(manifest)
    else:
        data = read_manifest(manifest)
        spec = data.get("spec")
        if isinstance(spec, dict):
            data["spec"] = {**spec, "storage": {"localDir": storage}}
        try:
            run = load_manifest(data)
        except SpecError as e:
            raise SpecError(e.problems, str(manifest)) from None
    if local and run.spec.storage.local_dir is None:
        raise SpecError([NEEDS_LOCAL_DIR], str(manifest))
    return run


def parse_stages(value: str | None) -> list[str] | None:
    """``--stages sft,reward`` -> ["sft", "reward"] in pipeline order (None: all stages)."""
    if value is None:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        raise SpecError(
            [
                f"--stages: unknown stage {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"expected a comma-separated subset of {', '.join(STAGE_NAMES)}"
            ]
        )
    return [s for s in STAGE_NAMES if s in names]


def root_of(run: RLHFRun) -> Path:
    """The run's storage root (a local directory here)."""
    return Path(storage_root(run))
