"""DPO's frozen reference: the log-probabilities of each pair's two answers under the reference model.

Two ways (``dpo.reference_logps``):

* ``cached`` (default): before the first step, every train and eval pair is scored once (one
  no-grad pass, the pairs shared out across the ranks, then gathered) and the result is kept in
  ``<output_dir>/reference_logps.pt``; the pairs carry it as two columns from then on. No reference
  model stays in memory while training, and epochs after the first cost no reference forwards.
  A fresh run scores with the policy itself before it has moved (the reference is the policy's
  starting checkpoint; new LoRA adapters start as the identity); a resumed run reads the file.
* ``live``: the reference scores every batch — the policy with its LoRA adapters disabled when the
  base weights are frozen (``lora.only_optimize_lora``: no second model), else a frozen copy in its
  own DeepSpeed engine (ZeRO-3 partitioned when the policy is, else a replica).

Whichever way, a model scores in eval mode (no dropout) and without gradients.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhf import losses
from rlhf.config import DPOConfig
from rlhf.engine.ds_config import build_ds_config
from rlhf.engine.setup import Runtime, barrier, torch_dtype, zero3_model_init
from rlhf.stages.base import Batch

FILE = "reference_logps.pt"
#: The columns the cached log-probs add to the pairs.
COLUMNS = ("ref_chosen_logp", "ref_rejected_logp")


class Frozen:
    """A model called like an engine, in eval mode and without gradients: the policy engine itself
    (before it moved), the policy with its adapters disabled, or a frozen copy's engine."""

    def __init__(self, engine: Any, adapters_off: bool = False):
        self.engine = engine
        self.adapters_off = adapters_off

    @torch.no_grad()
    def __call__(self, **kwargs: Any):
        module = self.engine.module
        was_training = module.training
        module.eval()
        try:
            if self.adapters_off:
                with module.disable_adapter():
                    return self.engine(**kwargs)
            return self.engine(**kwargs)
        finally:
            module.train(was_training)


def adapters_are_reference(cfg: DPOConfig) -> bool:
    """The policy without its adapters is the reference: LoRA on a frozen base that is the reference's
    checkpoint."""
    return cfg.reference is None and cfg.lora.enabled and cfg.lora.only_optimize_lora


def pair_logps(model: Callable[..., Any], batch: Batch) -> torch.Tensor:
    """``[2B]``: the answer tokens' log-probability of each row of a pair batch (chosen rows, then
    rejected)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return losses.sequence_logprobs(logits, batch["input_ids"], batch["answer_mask"])


def frozen_copy(cfg: DPOConfig, rt: Runtime, tokenizer) -> Frozen:
    """The reference model in its own engine: ZeRO-3 partitioned (offloaded with ``deepspeed.offload``)
    when the policy is under ZeRO-3, else a full replica per rank (a frozen model has no optimizer
    state for ZeRO-1/2 to shard)."""
    import deepspeed

    from rlhf.models.loading import load_causal_lm

    zero3 = cfg.deepspeed.zero_stage == 3
    ds = cfg.deepspeed.model_copy(
        update={"zero_stage": 3 if zero3 else 0, "offload": cfg.deepspeed.offload and zero3}
    )
    ds_config = build_ds_config(
        ds, cfg.optim, rt.dist.world_size, train=False, micro_batch_size=cfg.optim.per_device_train_batch_size
    )
    model_cfg = cfg.reference_model.model_copy(update={"dropout": None, "gradient_checkpointing": False})
    with zero3_model_init(ds_config):
        model = load_causal_lm(model_cfg, tokenizer, torch_dtype(cfg.deepspeed)).eval().requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, dist_init_required=False)
    return Frozen(engine)


def live_reference(cfg: DPOConfig, rt: Runtime, policy: Any, tokenizer) -> Frozen:
    """The reference that scores every batch (``dpo.reference_logps: live``)."""
    return (
        Frozen(policy, adapters_off=True) if adapters_are_reference(cfg) else frozen_copy(cfg, rt, tokenizer)
    )


@torch.no_grad()
def score_pairs(
    model: Callable[..., Any], dataset, collate: Callable[[list[dict]], Batch], batch_size: int, rt: Runtime
) -> torch.Tensor:
    """``[N, 2]`` float32: (chosen, rejected) answer log-probs of every pair of ``dataset``. Each rank
    scores every ``world``-th pair, all in the same number of batches (ZeRO-3 ranks run every forward
    together); the scores are gathered to every rank."""
    import torch.distributed as dist

    world, rank, n = rt.dist.world_size, rt.dist.rank, len(dataset)
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    padded = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
    scores = torch.zeros(per_rank, 2)
    for start in range(0, per_rank, batch_size):
        index = padded[start : start + batch_size]
        batch = {k: v.to(rt.device) for k, v in collate([dataset[i] for i in index]).items()}
        logps = pair_logps(model, batch).float().cpu()
        half = len(index)
        scores[start : start + half] = torch.stack([logps[:half], logps[half:]], dim=1)
        rt.accel.mark_step()
    if world == 1:
        return scores[:n]
    gathered = [torch.zeros(per_rank, 2, device=rt.device) for _ in range(world)]
    dist.all_gather(gathered, scores.to(rt.device))
    out = torch.zeros(n, 2)
    for r, part in enumerate(gathered):
        count = len(range(r, n, world))
        out[r::world] = part[:count].cpu()
    return out


def cache_key(cfg: DPOConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """What the cached log-probs depend on: the reference, its precision and the tokenized pairs."""
    return {
        "reference": cfg.reference_model.name_or_path,
        "dtype": cfg.deepspeed.dtype,
        "data": stats.get("cache_key"),
        "train_samples": stats.get("train_samples"),
        "eval_samples": stats.get("eval_samples"),
    }


def read_cache(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor | None] | None:
    """The cached log-probs at ``path`` when they were made for ``key``; None otherwise."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None  # torn by a kill while written elsewhere: score again
    if saved.get("key") != key:
        return None
    return {"train": saved["train"], "eval": saved.get("eval")}


def write_cache(path: Path, key: dict[str, Any], logps: dict[str, torch.Tensor | None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, **logps}, tmp)
    os.replace(tmp, path)


@contextmanager
def _scorer(cfg: DPOConfig, rt: Runtime, policy: Any, tokenizer, fresh: bool) -> Iterator[Frozen]:
    """The model that scores the pairs for the cache: the policy before it has moved, the policy
    without its adapters, or a frozen copy (freed afterwards)."""
    if fresh and cfg.reference is None:
        yield Frozen(policy)
    elif adapters_are_reference(cfg):
        yield Frozen(policy, adapters_off=True)
    else:
        copy = frozen_copy(cfg, rt, tokenizer)
        try:
            yield copy
        finally:
            copy.engine.destroy()
            del copy
            gc.collect()
            if rt.accel.name == "cuda":
                torch.cuda.empty_cache()


def cached_logps(
    cfg: DPOConfig,
    rt: Runtime,
    policy: Any,
    tokenizer,
    data,
    collate: Callable[[list[dict]], Batch],
    resumed: bool,
    log: Callable[[str], None],
) -> dict[str, torch.Tensor | None]:
    """The reference log-probs of the train and eval pairs (``data``: the stage's PhaseData):
    scored now on a fresh start, read back on a resume (scored again when the file is missing or
    was made for other pairs or another reference)."""
    path = Path(cfg.checkpoint.output_dir) / FILE
    key = cache_key(cfg, data.stats)
    cached = read_cache(path, key) if resumed else None
    if cached is not None:
        return cached
    bs = cfg.optim.per_device_eval_batch_size
    with _scorer(cfg, rt, policy, tokenizer, fresh=not resumed) as model:
        out = {
            name: score_pairs(model, split, collate, bs, rt) if split is not None and len(split) else None
            for name, split in (("train", data.train), ("eval", data.eval))
        }
    if rt.is_main:
        write_cache(path, key, out)
    barrier()
    log(
        f"reference log-probs of {len(data.train)} train and {len(data.eval or [])} eval pairs "
        f"cached in {path}"
    )
    return out


def with_logps(dataset, logps: torch.Tensor | None):
    """``dataset`` with its pairs' reference log-probs as the columns :data:`COLUMNS`."""
    if dataset is None or logps is None:
        return dataset
    for column, values in zip(COLUMNS, logps.T.tolist(), strict=True):
        dataset = dataset.add_column(column, values)
    return dataset
