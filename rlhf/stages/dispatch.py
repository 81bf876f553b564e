"""``rlhf train STAGE``: the stage kind's trainer, found by name.

Each stage kind is a module ``rlhf.stages.<name>`` with ``train(cfg) -> summary`` (its config class
is :data:`rlhf.config.STAGES` ``[name]``): a new kind needs no entry here.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf.config.stages import StageConfig
from rlhf.stages.finished import finished_summary


def run_stage(cfg: StageConfig) -> dict[str, Any]:
    """Train one stage to completion and return its summary.

    A stage that already completed with the same config is skipped; an interrupted one resumes
    from its latest checkpoint.
    """
    done = finished_summary(cfg)
    if done is not None:
        return dict(done, skipped=True)
    module = importlib.import_module(f"rlhf.stages.{cfg.name}")
    summary: dict[str, Any] = module.train(cfg)
    return summary
