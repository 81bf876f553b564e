"""Before ``rlhf run`` starts anything: every stage's local inputs exist — its models (PPO's reward
model too) and tokenizers, its data files, PPO's evaluation prompts — so a typo in the last stage's
path fails in a second, not after hours of SFT. Inputs that the run itself makes are not checked:
the outputs of its stages (``<root>/<stage>/model``), ``rlhf prepare``'s Hub copies
(``<root>/hub/...``) and the GGUF-only model folders it converts. Hub ids are left to
``rlhf prepare`` and the stage. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhf.api.datasets import is_local_jsonfile
from rlhf.api.hub import HUB_DIR, is_hub_id
from rlhf.config import ConfigError, StageConfig
from rlhf.models.checks import check_local_sources


def _norm(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def gguf_only_folders(folders: list[str | None]) -> list[str]:
    """The local model folders (of ``spec.models``) that hold only a GGUF file: ``rlhf prepare``
    converts them in place before any stage starts (:mod:`rlhf.prepare.gguf_models`)."""
    from rlhf.models.gguf import GGUFError, gguf_in

    out = []
    for folder in folders:
        if not folder or is_hub_id(folder):
            continue
        try:
            if gguf_in(folder) is not None:
                out.append(folder)
        except GGUFError:
            continue  # rlhf prepare names it
    return out


class RunInputs:
    """What the run at storage root ``root`` will make itself (its stages' models, ``rlhf prepare``'s
    Hub copies and GGUF conversions in ``converted``), and the checks of the rest."""

    def __init__(self, root: Path, stages: list[str], converted: list[str] | None = None):
        self.made = [_norm(root / HUB_DIR)] + [_norm(root / stage / "model") for stage in stages]
        self.made += [_norm(folder) for folder in converted or []]

    def _made_by_run(self, value: str) -> bool:
        path = _norm(value)
        return any(path == made or path.startswith(made + os.sep) for made in self.made)

    def problems(self, stage: str, cfg: StageConfig) -> list[str]:
        """One line per missing or unusable local input of ``stage``, each naming the stage and key."""
        out: list[str] = []
        for section, model in cfg.model_sections():
            if self._made_by_run(model.name_or_path) or (
                model.tokenizer and self._made_by_run(model.tokenizer)
            ):
                continue
            try:
                check_local_sources(model, section)
            except ConfigError as e:
                out.append(f"{stage}: {e}")
        for key in ("paths", "sft_only_paths"):
            for i, source in enumerate(getattr(cfg.data, key)):
                path = source.path
                if is_hub_id(path) or is_local_jsonfile(path) or self._made_by_run(path):
                    continue
                if not Path(path).expanduser().exists():
                    out.append(f"{stage}: data.{key}[{i}]: {path} does not exist")
        evaluation = getattr(cfg, "evaluation", None)
        prompts = getattr(evaluation, "prompts", None)
        if prompts and not Path(prompts).expanduser().is_file():
            out.append(f"{stage}: evaluation.prompts: {prompts} does not exist")
        return out
