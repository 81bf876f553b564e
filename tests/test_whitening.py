"""Advantage whitening: once over the whole rollout of an iteration, every data-parallel rank's
answers together — so what a mini-batch trains on does not depend on how the rollout is cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlhf import losses
from rlhf.config import PPOConfig, load
from rlhf.engine.distributed import free_port
from rlhf.stages.dispatch import run_stage
from rlhf.stages.rollout import whiten_across_ranks


def _rollout(seed: int = 0, rows: int = 6, width: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    advantages = torch.randn(rows, width, generator=g) * 3 + 1
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    starts = torch.randint(0, 3, (rows,), generator=g)
    positions = torch.arange(width)[None, :]
    mask = (
        (positions >= starts[:, None]) & (positions < (starts + lengths).clamp(max=width)[:, None])
    ).float()
    return advantages * mask, mask


def test_on_one_rank_it_is_plain_whitening():
    adv, mask = _rollout()
    torch.testing.assert_close(whiten_across_ranks(adv, mask, torch.device("cpu")), losses.whiten(adv, mask))


def test_a_part_whitened_by_the_whole_equals_the_rows_of_the_whole_whitened():
    adv, mask = _rollout()
    whole = losses.whiten(adv, mask)
    mean = losses.masked_mean(adv, mask)
    var = losses.masked_mean((adv - mean) ** 2, mask)
    torch.testing.assert_close(losses.whiten(adv[2:4], mask[2:4], mean=mean, var=var), whole[2:4])
    # whitening the part by itself (what a per-mini-batch whitening did) is something else
    assert not torch.allclose(losses.whiten(adv[2:4], mask[2:4]), whole[2:4])


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        adv, mask = _rollout()
        share = slice(rank * 3, rank * 3 + 3)  # each rank holds half of the rollout
        mine = whiten_across_ranks(adv[share], mask[share], torch.device("cpu"))
        Path(f"{out}.{rank}").write_text(json.dumps(mine.tolist()))
    finally:
        dist.destroy_process_group()


def test_two_ranks_whiten_by_the_statistics_of_both_shares(tmp_path):
    out = str(tmp_path / "rank")
    mp.start_processes(_rank, args=(2, free_port(), out), nprocs=2, start_method="spawn", join=True)
    got = torch.cat([torch.tensor(json.loads(Path(f"{out}.{r}").read_text())) for r in range(2)])
    adv, mask = _rollout()
    torch.testing.assert_close(got, losses.whiten(adv, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("minibatch", [1, 4, 8])  # 8: the whole rollout, the critic's values from training
def test_each_minibatch_trains_on_its_rows_of_the_whole_rollouts_whitened_advantages(
    tiny, tmp_path, monkeypatch, minibatch
):
    """The advantages a mini-batch's policy loss sees equal the matching rows of the whole rollout's
    whitened advantages, for any mini-batch size (two PPO epochs: the second sees them too)."""
    from rlhf.stages import rollout

    events: list[tuple] = []
    gae, policy_loss, select = losses.gae, losses.policy_loss, rollout.Experience.select

    def recording_gae(values, rewards, mask, gamma, lam):
        adv, ret = gae(values, rewards, mask, gamma, lam)
        events.append(("gae", rewards.clone(), mask.clone(), adv.clone()))
        return adv, ret

    def recording_select(self, index):
        mb = select(self, index)
        events.append(("select", mb.rewards.clone()))
        return mb

    def recording_policy_loss(logprobs, old, advantages, mask, cliprange):
        events.append(("policy", advantages.detach().cpu().clone()))
        return policy_loss(logprobs, old, advantages, mask, cliprange)

    monkeypatch.setattr(losses, "gae", recording_gae)
    monkeypatch.setattr(losses, "policy_loss", recording_policy_loss)
    monkeypatch.setattr(rollout.Experience, "select", recording_select)
    ppo_epochs = 1 if minibatch == 8 else 2
    cfg = load(
        PPOConfig,
        None,
        tiny.ppo_overrides(
            tmp_path / "out",
            f"optim.per_device_train_batch_size={minibatch}",
            f"ppo.ppo_epochs={ppo_epochs}",
            "ppo.max_iterations=1",
            "evaluation.baseline=false",
            "evaluation.max_prompts=2",
        ),
    )
    assert run_stage(cfg)["status"] == "completed"

    checked = 0
    rollout_rows = None
    for i, event in enumerate(events):
        if event[0] == "gae" and event[1].size(0) == 8:  # the whole rollout's GAE (8 answers on this rank)
            _, rewards, mask, adv = event
            rollout_rows = (rewards, losses.whiten(adv, mask))
        if event[0] != "policy":
            continue
        selected = next(e for e in reversed(events[:i]) if e[0] == "select")[1]
        assert rollout_rows is not None and selected.size(0) == minibatch == event[1].size(0)
        rewards, whitened = rollout_rows
        for row, trained in zip(selected, event[1], strict=True):
            match = [k for k in range(rewards.size(0)) if torch.equal(rewards[k], row)]
            assert match, "a mini-batch row that is not in the rollout"
            torch.testing.assert_close(trained, whitened[match[0]], rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked == 8 * ppo_epochs
