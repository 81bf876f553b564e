"""Our training steps against a plain PyTorch loop, same models and batch, in one process
(``python -m bench.step``).

* ``sft``: one SFT step of the actor: ours is the DeepSpeed engine as ``rlhf train sft`` builds it
  (``rlhf.engine.setup.initialize_training`` with our DeepSpeed config) running
  :class:`rlhf.stages.sft.SFTStage`'s loss, ``engine.backward``, ``engine.step``;
* ``ppo``: one PPO mini-batch step, actor and critic: ours is
  :func:`rlhf.stages.ppo_train.train_minibatch` on the engines :func:`rlhf.stages.ppo_models.build_models`
  builds (the code PPO runs), with experience of the rollout's shape (random tokens, advantages);
* plain: the same models in float32 under ``torch.autocast`` to the training dtype (fp32: none),
  ``torch.optim.AdamW(fused=True)``, forward, loss (the same functions of :mod:`rlhf.losses`),
  backward, step, ``zero_grad``: no DeepSpeed.

The two take turns, ``steps`` steps each, ``repeats`` times, after ``warmup`` steps each; reported:
seconds per step of each (median over repeats), the ratio ours / plain per repeat (median, min,
max), and FLOP/s as a fraction of this process's matmul peak (``6 N`` per token, N = parameters).
The same ratios are also given in process CPU time (``time.process_time``): with one thread on a
shared machine it leaves out the time other processes held the core, which wall time cannot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sft_batch(assets: Path, tokenizer, rows: int, max_len: int) -> dict[str, torch.Tensor]:
    """``rows`` prompt + chosen + eos rows of the benchmark's pairs, right-padded to the longest."""
    from rlhf import losses
    from rlhf.stages.base import pad_rows

    records = [json.loads(line) for line in (assets / "data" / "pairs.jsonl").read_text().splitlines()[:rows]]
    ids, prompt_lens = [], []
    for r in records:
        prompt = tokenizer(r["prompt"])["input_ids"]
        row = (
            prompt + tokenizer(r["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        )
        ids.append(row[:max_len])
        prompt_lens.append(len(prompt))
    input_ids, mask = pad_rows(ids, tokenizer.pad_token_id, max(map(len, ids)))
    labels = losses.sft_labels(input_ids, mask, torch.tensor(prompt_lens), False)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def fake_experience(rows: int, prompt: int, answer: int, vocab: int, seed: int = 0):
    """A rollout batch of the benchmark's shape: random tokens, log-probs, rewards and advantages."""
    from rlhf.stages.rollout import Experience

    g = torch.Generator().manual_seed(seed)
    width = prompt + answer
    seqs = torch.randint(3, vocab, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    action = torch.zeros(rows, width - 1)
    action[:, prompt - 1 :] = 1
    logprobs = -torch.rand(rows, width - 1, generator=g) * 5 * action
    values = torch.randn(rows, width - 1, generator=g) * action
    return Experience(
        seqs,
        mask,
        action,
        logprobs,
        logprobs + 0.01,
        torch.randn(rows, width - 1) * action,
        torch.randn(rows),
        torch.zeros(rows, width - 1),
        values=values,
        advantages=torch.randn(rows, width - 1, generator=g) * action,
        returns=torch.randn(rows, width - 1, generator=g) * action,
    )


class PlainSFT:
    """Forward, loss, backward, fused AdamW step: the plain PyTorch loop."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: torch.device, lr: float):
        self.model, self.dtype, self.device = model.to(device).train(), dtype, device
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)

    def autocast(self):
        import contextlib

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        from rlhf import losses

        with self.autocast():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
        loss, _ = losses.causal_lm_loss(logits, batch["labels"])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class PlainPPO:
    """Actor and critic updates of one mini-batch, plain PyTorch (same losses as ours)."""

    def __init__(self, actor, critic, dtype, device, lr: float):
        self.actor, self.critic = PlainSFT(actor, dtype, device, lr), PlainSFT(critic, dtype, device, lr)
        self.device = device

    def step(self, mb, cliprange: float = 0.2, cliprange_value: float = 0.2):
        from rlhf import losses

        d = self.device
        seqs, mask, action = mb.sequences.to(d), mb.attention_mask.to(d), mb.action_mask.to(d)
        with self.actor.autocast():
            logits = self.actor.model(input_ids=seqs, attention_mask=mask, use_cache=False).logits
        logprobs = losses.logprobs_of(logits, seqs)
        loss, _ = losses.policy_loss(logprobs, mb.logprobs.to(d), mb.advantages.to(d), action, cliprange)
        loss.backward()
        self.actor.opt.step()
        self.actor.opt.zero_grad(set_to_none=True)
        with self.critic.autocast():
            values = self.critic.model(seqs, attention_mask=mask)[:, :-1].float()
        vloss, _ = losses.value_loss(values, mb.values.to(d), mb.returns.to(d), action, cliprange_value)
        vloss.backward()
        self.critic.opt.step()
        self.critic.opt.zero_grad(set_to_none=True)
        return vloss


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def setup(
    kind: str,
    assets: Path,
    dtype: str,
    rows: int,
    prompt: int,
    answer: int,
    lr: float = 1e-5,
    actor_name: str = "actor",
    critic_name: str = "reward",
):
    """(ours: step callable, plain: step callable, parameters trained, tokens per step, device)."""
    from rlhf.config import PPOConfig, SFTConfig, load
    from rlhf.engine.ds_config import build_ds_config
    from rlhf.engine.setup import init_runtime, initialize_training, torch_dtype
    from rlhf.models.loading import load_causal_lm, load_tokenizer
    from rlhf.models.reward import load_reward_model

    common = [
        f"data.paths=[{assets / 'data' / 'pairs.jsonl'}]",
        f"deepspeed.dtype={dtype}",
        "deepspeed.zero_stage=2",
        f"optim.per_device_train_batch_size={rows}",
        f"optim.learning_rate={lr}",
        "optim.lr_scheduler=constant",
        f"data.max_seq_len={max(256, prompt + answer)}",
        "checkpoint.output_dir=/tmp/rlhf-bench-step",
    ]
    if kind == "sft":
        cfg = load(SFTConfig, None, [f"model.name_or_path={assets / actor_name}", *common])
        rt = init_runtime(cfg.deepspeed)
        tok = load_tokenizer(cfg.model, cfg.data)
        batch = {k: v.to(rt.device) for k, v in sft_batch(assets, tok, rows, prompt + answer).items()}
        ds = build_ds_config(cfg.deepspeed, cfg.optim, rt.dist.world_size)
        engine = initialize_training(
            load_causal_lm(cfg.model, tok), rt, ds, cfg.deepspeed, cfg.optim, cfg.lora, 10**6
        )
        from rlhf import losses

        def ours():
            logits = engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
            loss, _ = losses.causal_lm_loss(logits, batch["labels"], fp32=cfg.optim.compute_fp32_loss)
            engine.backward(loss)
            engine.step()
            return loss

        plain = PlainSFT(load_causal_lm(cfg.model, tok), torch_dtype(cfg.deepspeed), rt.device, lr)
        tokens = batch["input_ids"].numel()
        return ours, lambda: plain.step(batch), _params(engine.module), tokens, rt.device
    from rlhf.stages.ppo_models import build_models, load_tokenizers
    from rlhf.stages.ppo_train import train_minibatch

    cfg = load(
        PPOConfig,
        None,
        [
            f"actor.name_or_path={assets / actor_name}",
            f"critic.name_or_path={assets / critic_name}",
            *common,
            f"generation.max_prompt_len={prompt}",
            f"generation.max_answer_len={answer}",
            f"generation.per_device_generation_batch_size={rows}",
            f"critic_optim.learning_rate={lr}",
        ],
    )
    rt = init_runtime(cfg.deepspeed)
    tokenizers = load_tokenizers(cfg)
    models = build_models(cfg, rt, 10**6, tokenizers)
    mb = fake_experience(rows, prompt, answer, len(tokenizers[0]))

    def ours():
        return train_minibatch(models, mb, cfg, rt.device)["critic_loss"]

    actor = load_causal_lm(cfg.actor.model_copy(update={"dropout": 0.0}), tokenizers[0])
    critic = load_reward_model(cfg.critic.model_copy(update={"dropout": 0.0}), tokenizers[0])
    plain = PlainPPO(actor, critic, torch_dtype(cfg.deepspeed), rt.device, lr)
    params = _params(models.actor.module) + _params(models.critic.module)
    return ours, lambda: plain.step(mb), params, mb.sequences.numel(), rt.device


def run(
    kind: str,
    assets: Path,
    *,
    dtype: str = "bf16",
    rows: int = 8,
    prompt: int = 40,
    answer: int = 64,
    steps: int = 5,
    repeats: int = 5,
    warmup: int = 3,
    peak_seconds: float = 2.0,
    actor: str = "actor",
    critic: str = "reward",
) -> dict[str, Any]:
    """``prompt + answer`` is the PPO batch's width and the SFT rows' cut."""
    from bench.peak import matmul_gflops

    ours, plain, params, tokens, device = setup(
        kind, assets, dtype, rows, prompt, answer, actor_name=actor, critic_name=critic
    )
    for fn in (ours, plain):
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(repeats):
        order = (("ours", ours), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("ours", ours))
        for name, fn in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                loss = fn()
            float(loss.detach())  # the step's result read once, as a training loop's logging does
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)
    sizes = (2048, 4096) if device.type == "cpu" else (8192,)
    peak_dtype = "bf16" if dtype != "fp32" else "fp32"
    peak = max(matmul_gflops(peak_dtype, n, peak_seconds, device.type) for n in sizes)
    cpu_peak = (
        max(matmul_gflops(peak_dtype, n, peak_seconds, device.type, clock="cpu") for n in sizes)
        if device.type == "cpu"
        else peak
    )
    ratios = [o / p for o, p in zip(times["ours"], times["plain"], strict=True)]
    cpu_ratios = [o / p for o, p in zip(cpu["ours"], cpu["plain"], strict=True)]
    flops = 6 * params * tokens
    return {
        "kind": kind,
        "dtype": dtype,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "tokens_per_step": tokens,
        "params": params,
        "peak_gflops": peak,
        "cpu_peak_gflops": cpu_peak,
        "repeats": repeats,
        "steps": steps,
        "seconds_per_step": {k: statistics.median(v) for k, v in times.items()},
        "seconds_all": times,
        "ratio_ours_to_plain": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_seconds_per_step": {k: statistics.median(v) for k, v in cpu.items()},
        "cpu_ratio_ours_to_plain": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
        "fraction_of_peak": {k: flops / statistics.median(v) / 1e9 / peak for k, v in times.items()},
        "cpu_fraction_of_peak": {k: flops / statistics.median(v) / 1e9 / cpu_peak for k, v in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("sft", "ppo"))
    parser.add_argument("--assets", required=True)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    parser.add_argument("--actor", default="actor", help="asset name of the actor (SFT: the model)")
    parser.add_argument("--critic", default="reward", help="asset name of the critic")
    parser.add_argument(
        "--prompt", type=int, default=40, help="PPO: prompt tokens per row; SFT: rows cut at prompt + answer"
    )
    parser.add_argument("--answer", type=int, default=64, help="PPO: answer tokens per row")
    args = parser.parse_args(argv)
    print(
        json.dumps(
            run(
                args.kind,
                Path(args.assets),
                dtype=args.dtype,
                rows=args.rows,
                steps=args.steps,
                repeats=args.repeats,
                peak_seconds=args.peak_seconds,
                actor=args.actor,
                critic=args.critic,
                prompt=args.prompt,
                answer=args.answer,
            )
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
