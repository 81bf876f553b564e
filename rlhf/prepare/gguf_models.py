"""Model folders of a run that hold only a GGUF file: converted in place into HF folders, once.

A manifest may name a local folder with a llama.cpp ``.gguf`` file in it as a model (actor, reward,
tokenizer); :func:`convert_gguf_folders` writes the HF model next to the file (:mod:`rlhf.models.gguf`),
so the stages load the folder like any other. A folder that already holds a model is left alone.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.api import RLHFRun
from rlhf.api.hub import is_hub_id
from rlhf.prepare.downloads import Copied


def gguf_folders(run: RLHFRun) -> list[tuple[str, Path, Path]]:
    """(manifest field, folder, its .gguf file) for each model path of ``run`` that holds only a GGUF file."""
    from rlhf.models.gguf import gguf_in

    models = run.spec.models
    out, seen = [], set()
    for name, value in (("actor", models.actor), ("reward", models.reward), ("tokenizer", models.tokenizer)):
        if not value or is_hub_id(value):
            continue
        folder = Path(value).expanduser()
        found = gguf_in(folder)
        if found is not None and folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append((f"spec.models.{name}", folder, found))
    return out


def convert_gguf_folders(run: RLHFRun) -> list[Copied]:
    """Convert every GGUF-only model folder of ``run`` in place (see the module docstring)."""
    from rlhf.models.gguf import GGUFError, convert
    from rlhf.prepare.downloads import PrepareError

    done = []
    for field, folder, gguf in gguf_folders(run):
        try:
            result = convert(gguf, folder)
        except GGUFError as e:
            raise PrepareError(f"{field}: {e}") from None
        done.append(
            Copied(
                gguf.name,
                "GGUF model",
                folder,
                fetched=result.converted,
                seconds=result.seconds,
                detail="converted to safetensors",
            )
        )
    return done
