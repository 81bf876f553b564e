"""PPO's tensor math (rlhf.losses) against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf import losses

T = torch.tensor


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-6)


def test_shaped_rewards_kl_on_every_answer_token_and_clipped_score_on_the_last():
    mask = T([[0, 1, 1, 0], [0, 0, 1, 1]])
    logprobs = T([[0.0, -1.0, -2.0, 0.0], [9.0, 9.0, -1.0, -1.0]])
    ref = T([[0.0, -1.5, -1.0, 0.0], [0.0, 0.0, -1.0, -3.0]])
    rewards, kl = losses.shaped_rewards(
        logprobs, ref, T([7.0, -0.5]), mask, kl_ctl=0.1, clip_reward_value=5.0
    )
    close(kl, [[0, 0.5, -1.0, 0], [0, 0, 0, 2.0]])
    # row 0: -0.1 * kl, and the score 7 clipped to 5 on position 2; row 1: score -0.5 on position 3.
    close(rewards, [[0, -0.05, 5.1, 0], [0, 0, 0, -0.7]])


def test_shaped_rewards_of_an_empty_answer_are_zero():
    rewards, _ = losses.shaped_rewards(
        torch.zeros(1, 3), torch.zeros(1, 3), T([3.0]), torch.zeros(1, 3), 0.1, 5.0
    )
    assert rewards.tolist() == [[0, 0, 0]]


def _gae_by_definition(values, rewards, mask, gamma, lam):
    """A_t = sum_k (gamma*lam)^k delta_{t+k} over the answer, with V = 0 after its end."""
    out = torch.zeros_like(values)
    for b in range(values.size(0)):
        idx = [t for t in range(values.size(1)) if mask[b, t]]
        for i, t in enumerate(idx):
            total = 0.0
            for k, u in enumerate(idx[i:]):
                v_next = values[b, idx[i + k + 1]] if i + k + 1 < len(idx) else 0.0
                delta = rewards[b, u] + gamma * v_next - values[b, u]
                total += (gamma * lam) ** k * delta
            out[b, t] = total
    return out


def test_gae_hand_computed():
    values, rewards, mask = T([[0.0, 1.0, 2.0, 9.0]]), T([[0.0, 0.0, 3.0, 0.0]]), T([[0, 1, 1, 0]])
    adv, ret = losses.gae(values, rewards, mask, gamma=1.0, lam=0.5)
    # delta_2 = 3 - 2 = 1; delta_1 = 0 + 2 - 1 = 1; A_1 = 1 + 0.5 * 1 = 1.5. The value 9 is padding.
    close(adv, [[0, 1.5, 1.0, 0]])
    close(ret, [[0, 2.5, 3.0, 0]])


def test_gae_matches_the_definition_with_discount_and_ragged_masks():
    g = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    mask = T([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]])
    adv, ret = losses.gae(values, rewards, mask, gamma=0.9, lam=0.7)
    expected = _gae_by_definition(values, rewards, mask, 0.9, 0.7)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_policy_loss_clips_only_the_optimistic_side():
    old = torch.zeros(1, 4)
    logprobs = T([[math.log(1.5), math.log(0.5), math.log(1.5), 50.0]])
    adv = T([[2.0, 2.0, -1.0, 1e6]])
    mask = T([[1, 1, 1, 0]])
    loss, stats = losses.policy_loss(logprobs, old, adv, mask, cliprange=0.2)
    # token 0: max(-3, -2.4) = -2.4 (clipped); token 1: max(-1, -1.6) = -1; token 2: max(1.5, 1.2) = 1.5.
    assert loss.item() == pytest.approx((-2.4 - 1.0 + 1.5) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert math.isfinite(stats["approx_kl"].item())


def test_value_loss_is_clipped_around_the_rollout_values():
    old, returns = T([[1.0, 1.0, 5.0]]), T([[1.5, 0.0, 0.0]])
    values = T([[2.0, 0.0, 100.0]])
    loss, stats = losses.value_loss(values, old, returns, T([[1, 1, 0]]), cliprange_value=0.2)
    # token 0: max(0.25, (1.2-1.5)^2=0.09) = 0.25; token 1: max(0, (0.8-0)^2) = 0.64 (clipped).
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.64) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_whiten_over_the_mask_only():
    out = losses.whiten(T([[1.0, 2.0, 3.0, 100.0]]), T([[1, 1, 1, 0]]))
    s = math.sqrt(2 / 3)
    close(out, [[-1 / s, 0, 1 / s, 0]])


def test_logprobs_of_next_tokens():
    logits = T([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, 5.0]]])
    lp = losses.logprobs_of(logits, T([[0, 1, 0]]))
    close(lp, [[math.log(3 / 4), math.log(4 / 5)]])


def test_masks_ignore_padding_values():
    mask = T([[0, 1, 1, 0]])
    assert losses.masked_mean(T([[100.0, 1.0, 3.0, -100.0]]), mask).item() == 2.0
    assert losses.last_index(T([[0, 1, 1, 0], [0, 0, 0, 0]])).tolist() == [2, 0]
    assert losses.masked_mean(T([[1.0]]), T([[0]])).item() == 0.0
