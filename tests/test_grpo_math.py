"""GRPO / RLOO math on tiny tensors against hand-computed values: group advantages (both baselines,
every scaling), the KL estimators, and the clipped policy loss with its KL term."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf import losses

# Two groups of three answers: [0, 1, 5] (mean 2) and [2, 2, 2] (all alike).
REWARDS = torch.tensor([0.0, 1.0, 5.0, 2.0, 2.0, 2.0])
SQRT7 = math.sqrt(7.0)  # sample std of [0, 1, 5]: deviations -2, -1, 3; (4 + 1 + 9) / 2 = 7


@pytest.mark.parametrize(
    "baseline, scale, batch_std, expected",
    [
        # GRPO without scaling: reward minus the group mean
        ("group", "none", None, [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]),
        # RLOO: reward minus the mean of the other two: 0 - (1+5)/2, 1 - (0+5)/2, 5 - (0+1)/2
        ("leave_one_out", "none", None, [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]),
        # GRPO: divided by the group's sample std; a group rewarded alike stays 0 (0 / eps)
        ("group", "group", None, [-2 / SQRT7, -1 / SQRT7, 3 / SQRT7, 0.0, 0.0, 0.0]),
        # by the std of all six rewards: squares 14 over n-1 = 5 -> sqrt(2.8)
        (
            "group",
            "batch",
            None,
            [-2 / math.sqrt(2.8), -1 / math.sqrt(2.8), 3 / math.sqrt(2.8), 0.0, 0.0, 0.0],
        ),
        # by a given (every rank's) std
        ("group", "batch", 2.0, [-1.0, -0.5, 1.5, 0.0, 0.0, 0.0]),
        ("leave_one_out", "batch", 3.0, [-1.0, -0.5, 1.5, 0.0, 0.0, 0.0]),
    ],
)
def test_group_advantages_by_hand(baseline, scale, batch_std, expected):
    got = losses.group_advantages(
        REWARDS, 3, baseline, scale, eps=0.0 if scale != "group" else 1e-12, batch_std=batch_std
    )
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=0)


def test_leave_one_out_is_the_mean_of_the_others_for_any_group():
    rewards = torch.tensor([0.3, -1.2, 2.0, 0.7, 5.0, -3.0, 1.0, 1.0])
    got = losses.group_advantages(rewards, 4, "leave_one_out", "none")
    groups = rewards.view(2, 4)
    by_definition = torch.stack(
        [torch.stack([g[i] - torch.cat([g[:i], g[i + 1 :]]).mean() for i in range(4)]) for g in groups]
    ).reshape(-1)
    torch.testing.assert_close(got, by_definition)


def test_group_advantages_default_eps_keeps_an_all_alike_group_at_zero_and_refuses_bad_shapes():
    assert losses.group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0]), 2).abs().max() == 0
    with pytest.raises(ValueError, match="multiple of group_size"):
        losses.group_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="at least 2"):
        losses.group_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="unknown baseline"):
        losses.group_advantages(torch.tensor([1.0, 2.0]), 2, "median")


def test_kl_estimators_by_hand():
    logp, ref = (
        torch.tensor([math.log(0.5)]),
        torch.tensor([math.log(0.25)]),
    )  # log r = log(0.25/0.5) = -log 2
    log2 = math.log(2.0)
    assert losses.kl_estimate(logp, ref, "k1").item() == pytest.approx(log2)
    assert losses.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * log2**2)
    assert losses.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + log2)
    same = torch.tensor([-1.3, -0.2])
    assert losses.kl_estimate(same, same, "k3").abs().max() == 0
    # k3 is never negative, k1 can be
    x, y = torch.randn(100), torch.randn(100)
    assert (losses.kl_estimate(x, y, "k3") >= 0).all() and (losses.kl_estimate(x, y, "k1") < 0).any()


# Two answers over 3 action positions: row 0 answers at all three, row 1 at the last two.
MASK = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
RATIOS = torch.tensor([[1.5, 1.0, 1.0], [1.0, 0.5, 1.1]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]])
ADV = torch.tensor([1.0, -2.0])
# per token max(-A r, -A clip(r, 0.8, 1.2)):
#   row 0 (A = 1):  r 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); r 1 -> -1; r 1 -> -1
#   row 1 (A = -2): r 0.5 -> max(1.0, 1.6) = 1.6 (clipped);    r 1.1 -> 2.2
TOKEN_MEAN = (-1.2 - 1 - 1 + 1.6 + 2.2) / 5  # 0.12
SEQUENCE_MEAN = ((-1.2 - 1 - 1) / 3 + (1.6 + 2.2) / 2) / 2  # 0.41667


def _loss(**kwargs):
    logprobs = (OLD + torch.log(RATIOS)).requires_grad_(True)
    loss, stats = losses.grpo_policy_loss(logprobs, OLD, ADV, MASK, 0.2, **kwargs)
    return logprobs, loss, stats


def test_grpo_policy_loss_by_hand():
    logprobs, loss, stats = _loss()
    assert loss.item() == pytest.approx(TOKEN_MEAN, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["kl"].item() == 0
    loss.backward()
    # an unclipped token's gradient is -A * r / (answer tokens); clipped ones get none
    expected = torch.tensor([[0.0, -1.0 / 5, -1.0 / 5], [0.0, 0.0, 2 * 1.1 / 5]])
    torch.testing.assert_close(logprobs.grad, expected, atol=1e-6, rtol=0)
    assert _loss(aggregation="sequence")[1].item() == pytest.approx(SEQUENCE_MEAN, abs=1e-6)


def test_grpo_policy_loss_clip_higher_and_kl_term():
    # upper clip 1.6: the ratio 1.5 is no longer clipped (-1.5 instead of -1.2)
    assert _loss(cliprange_high=0.6)[1].item() == pytest.approx(TOKEN_MEAN - 0.3 / 5, abs=1e-6)
    logprobs = OLD + torch.log(RATIOS)
    ref = logprobs + math.log(2.0)  # log r = log 2 on every token: k3 = 2 - 1 - log 2
    k3 = 1.0 - math.log(2.0)
    _, loss, stats = _loss(ref_logprobs=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(TOKEN_MEAN + 0.1 * k3, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(k3, abs=1e-6)
    # kl_coef 0: the reference is ignored
    assert _loss(ref_logprobs=ref, kl_coef=0.0)[1].item() == pytest.approx(TOKEN_MEAN, abs=1e-6)
    # k1 as the KL term
    assert _loss(ref_logprobs=ref, kl_coef=0.1, estimator="k1")[1].item() == pytest.approx(
        TOKEN_MEAN - 0.1 * math.log(2.0), abs=1e-6
    )


def test_positions_outside_the_mask_do_not_count():
    logprobs = OLD + torch.log(RATIOS)
    noisy = logprobs.clone()
    noisy[1, 0] += 5.0  # not an answer token of row 1
    a = losses.grpo_policy_loss(logprobs, OLD, ADV, MASK, 0.2)[0]
    b = losses.grpo_policy_loss(noisy, OLD, ADV, MASK, 0.2)[0]
    assert a.item() == pytest.approx(b.item())
