"""Train one stage, then write this rank's fingerprint of the full trained parameters.

Used by the multi-rank tests: every rank must end with identical parameters.
Usage: python train_and_fingerprint.py STAGE OUT_JSON_PREFIX KEY=VALUE...
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch


def fingerprint(module: torch.nn.Module) -> dict[str, str]:
    import deepspeed

    out = {}
    for name, param in module.named_parameters():
        ctx = (
            deepspeed.zero.GatheredParameters([param], modifier_rank=None)
            if hasattr(param, "ds_id")
            else None
        )
        if ctx is not None:
            ctx.__enter__()
        out[name] = hashlib.sha256(param.detach().float().cpu().numpy().tobytes()).hexdigest()
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return out


def main() -> None:
    from rlhf.config import STAGES, load
    from rlhf.stages.dpo import DPOStage
    from rlhf.stages.loop import Trainer
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.sft import SFTStage

    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    stage, prefix, *overrides = args
    cfg = load(STAGES[stage], None, overrides)
    trainer = Trainer(cfg, {"sft": SFTStage, "reward": RewardStage, "dpo": DPOStage}[stage])
    summary = trainer.run()
    rank = trainer.rt.dist.rank
    with open(f"{prefix}{rank}.json", "w") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": trainer.rt.dist.world_size,
                "summary": summary,
                "params": fingerprint(trainer.engine.module),
            },
            f,
        )


if __name__ == "__main__":
    main()
