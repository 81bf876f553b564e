"""What a dataset's name tells without reading it (stdlib only: the API, the operator and the trainer
agree on it).

* :data:`KNOWN_FORMATS`: the record format of the Hub datasets DeepSpeed-Chat ships adapters for;
  :func:`known_format` matches a Hub name, or a local path whose last components spell one
  (``Dahoas/rm-static``, ``.../Dahoas--rm-static``, ``rm-static.jsonl``).
* :data:`LOCAL_JSONFILE`: DeepSpeed-Chat's ``local/jsonfile[:DIR]`` spec, a local layout, not a Hub name.
"""

from __future__ import annotations

from pathlib import Path

KNOWN_FORMATS: dict[str, str] = {
    "Dahoas/rm-static": "hh",
    "Dahoas/full-hh-rlhf": "hh",
    "Dahoas/synthetic-instruct-gptj-pairwise": "gptj-pairwise",
    "yitingxie/rlhf-reward-datasets": "yitingxie",
}
LOCAL_JSONFILE = "local/jsonfile"


def is_local_jsonfile(path: str) -> bool:
    """``local/jsonfile`` or ``local/jsonfile:DIR``."""
    return path == LOCAL_JSONFILE or path.startswith(LOCAL_JSONFILE + ":")


def known_format(path: str) -> str | None:
    """The format of a known Hub dataset named by ``path`` or by a local path's last components."""
    p = Path(path)
    stem = p.stem if p.suffix in (".json", ".jsonl") else p.name
    candidates = {path.strip("/").lower(), f"{p.parent.name}/{stem}".lower(), stem.lower()}
    for name, fmt in KNOWN_FORMATS.items():
        owner, short = name.lower().split("/")
        if candidates & {
            f"{owner}/{short}",
            short,
            f"{owner}_{short}",
            f"{owner}--{short}",
            f"{owner}___{short}",
        }:
            return fmt
    return None
