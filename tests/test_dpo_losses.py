"""DPO's tensor math on tiny tensors against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf import losses


def test_answer_mask_marks_the_actions_that_emit_answer_tokens():
    # 2 rows of 5 tokens: row 0 has a 2-token prompt and 2 answer tokens then padding; row 1 a
    # 1-token prompt and 4 answer tokens. Position t is the action that emits token t + 1.
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 7, 8, 9, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    got = losses.answer_mask(ids, mask, torch.tensor([2, 1]))
    assert got.tolist() == [[0, 1, 1, 0], [1, 1, 1, 1]]


def test_answer_mask_ends_at_the_attention_mask_not_at_a_pad_id():
    # pad id 0 inside the answer is a real token (pad = eos tokenizers); the mask says where it ends
    ids = torch.tensor([[5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert losses.answer_mask(ids, mask, torch.tensor([1])).tolist() == [[1, 1, 1, 0]]


def test_sequence_logprobs_sums_the_masked_tokens():
    # vocabulary of 2; logits [0, ln 3] give p = [1/4, 3/4] at every position
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 4])
    tokens = torch.tensor([[0, 1, 0, 1]])  # scored: tokens 1..3 = 1, 0, 1
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the first action is the prompt's
    expected = math.log(1 / 4) + math.log(3 / 4)
    assert losses.sequence_logprobs(logits, tokens, mask).item() == pytest.approx(expected, abs=1e-6)
    full = torch.ones(1, 3)
    assert losses.sequence_logprobs(logits, tokens, full).item() == pytest.approx(
        2 * math.log(3 / 4) + math.log(1 / 4), abs=1e-6
    )


def test_sequence_logprobs_in_float32_from_bf16_logits():
    logits = torch.randn(2, 6, 11).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 6))
    mask = torch.ones(2, 5)
    got = losses.sequence_logprobs(logits, tokens, mask)
    assert got.dtype == torch.float32
    ref = torch.log_softmax(logits.float()[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(1)
    torch.testing.assert_close(got, ref)


def test_dpo_loss_by_hand():
    # policy prefers chosen by 1 nat more than the reference does: h = (-1 + 1.5) - (-2 + 1.5) = 1
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5))
    loss, chosen, rejected = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)  # -logsigmoid(0.5) = 0.474077
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)
    # conservative DPO: 0.9 * -logsigmoid(0.5) + 0.1 * -logsigmoid(-0.5)
    smoothed, *_ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * 0.474077 + 0.1 * 0.974077, abs=1e-5)


def test_dpo_loss_at_the_reference_is_log_2_and_pushes_chosen_up_rejected_down():
    pc = torch.tensor([-3.0, -7.0], requires_grad=True)
    pr = torch.tensor([-4.0, -2.0], requires_grad=True)
    loss, chosen, rejected = losses.dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), math.log(2.0)))
    assert chosen.tolist() == [0.0, 0.0] and rejected.tolist() == [0.0, 0.0]
    loss.sum().backward()
    # d/dpc of -logsigmoid(beta h) at h = 0 is -beta * sigmoid(0) = -0.05; +0.05 for the rejected one
    torch.testing.assert_close(pc.grad, torch.full((2,), -0.05))
    torch.testing.assert_close(pr.grad, torch.full((2,), 0.05))


def test_label_smoothing_keeps_a_pull_back_when_the_margin_is_large():
    # far past the reference, plain DPO's gradient vanishes; with eps it pushes back (cDPO's point)
    pc = torch.tensor([10.0], requires_grad=True)
    zero = torch.zeros(1)
    plain, *_ = losses.dpo_loss(pc, zero, zero, zero, beta=1.0)
    plain.backward()
    assert abs(pc.grad.item()) < 1e-4
    pc.grad = None
    smooth, *_ = losses.dpo_loss(pc, zero, zero, zero, beta=1.0, label_smoothing=0.2)
    smooth.backward()
    # -(0.8) * sigmoid(-10) + 0.2 * sigmoid(10) ~ 0.2: the loss now wants a smaller margin
    assert pc.grad.item() == pytest.approx(
        0.2 * torch.sigmoid(torch.tensor(10.0)).item() - 0.8 * torch.sigmoid(torch.tensor(-10.0)).item(),
        abs=1e-6,
    )
