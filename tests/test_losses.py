import math

import torch

from rlhf import losses

PAD = 0


def test_sft_labels_mask_prompt_and_padding():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = (ids != PAD).long()
    prompt = torch.tensor([2, 1])
    assert losses.sft_labels(ids, mask, prompt, loss_on_prompt=False).tolist() == [
        [-100, -100, 7, 8],
        [-100, 6, -100, -100],
    ]
    assert losses.sft_labels(ids, mask, prompt, loss_on_prompt=True).tolist() == [
        [5, 6, 7, 8],
        [5, 6, -100, -100],
    ]


def test_causal_lm_loss_by_hand():
    # Vocabulary of 2, uniform logits except one confident position.
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 0.75 at position 1
    labels = torch.tensor([[-100, 0, 1]])  # position 0 predicts label 0; position 1 predicts label 1
    loss, n = losses.causal_lm_loss(logits, labels)
    expected = (-math.log(0.5) - math.log(0.75)) / 2
    assert n.item() == 2
    assert abs(loss.item() - expected) < 1e-6
    loss32, _ = losses.causal_lm_loss(logits.bfloat16(), labels, fp32=True)
    assert loss32.dtype == torch.float32


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_the_score_position_comes_from_the_mask_even_when_pad_is_eos_and_inside_the_prompt():
    eos = pad = 1  # Llama/GPT-2 style: no pad token, padding with eos
    # a chat-templated prompt holding eos (a turn end) at 1, answer, eos, then padding
    ids = torch.tensor(
        [[3, eos, 4, 5, eos, pad, pad], [eos, 4, eos, pad, pad, pad, pad], [3, 4, 5, 6, 7, 8, 9]]
    )
    mask = _mask([5, 3, 7], 7)
    last = losses.last_index(mask)
    assert last.tolist() == [4, 2, 6]  # the final eos of each sequence, never an earlier one
    assert losses.gather_at(ids, last).tolist() == [eos, eos, 9]
    values = torch.arange(21.0).reshape(3, 7)
    assert losses.gather_at(values, losses.last_index(mask)).tolist() == [4.0, 9.0, 20.0]


def test_pairwise_scores_come_from_the_masks_with_pad_equal_to_eos():
    eos = pad = 1
    chosen = torch.tensor([[3, eos, 4, 5, eos, pad]])
    rejected = torch.tensor([[3, eos, 6, eos, pad, pad]])
    cv = torch.tensor([[0.0, 7.0, 0.0, 0.0, 2.0, 9.0]])
    rv = torch.tensor([[0.0, 7.0, 0.0, -1.0, 9.0, 9.0]])
    loss, cs, rs = losses.pairwise_reward_loss(cv, rv, chosen, rejected, _mask([5], 6), _mask([4], 6))
    # read at the final eos (4 and 3), not at the prompt's eos (1) nor at padding
    assert cs.tolist() == [2.0] and rs.tolist() == [-1.0]
    assert abs(loss.item() - math.log1p(math.exp(-3.0))) < 1e-6


def test_pairwise_loss_matches_deepspeed_chat_by_hand():
    chosen = torch.tensor([[7, 8, 9, 0, 0]])
    rejected = torch.tensor([[7, 8, 3, 4, 0]])
    cv = torch.tensor([[0.1, 0.2, 1.0, 2.0, 3.0]])
    rv = torch.tensor([[0.1, 0.2, 0.0, -1.0, 5.0]])
    loss, cs, rs = losses.pairwise_reward_loss(
        cv, rv, chosen, rejected, _mask([3], 5), _mask([4], 5), kind="divergence"
    )
    # diverge at 2, chosen ends at 3, rejected at 4 -> positions 2 and 3
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(-3.0)))) / 2
    assert abs(loss.item() - expected) < 1e-6
    assert cs.tolist() == [1.0]  # value at the last real chosen token (index 2)
    assert rs.tolist() == [-1.0]  # index 3


def test_pairwise_loss_identical_pair_uses_last_position():
    ids = torch.tensor([[7, 8, 0]])
    cv = torch.tensor([[0.0, 1.0, 2.0]])
    rv = torch.tensor([[0.0, 1.0, 0.0]])
    loss, cs, rs = losses.pairwise_reward_loss(
        cv, rv, ids, ids, _mask([2], 3), _mask([2], 3), kind="divergence"
    )
    assert abs(loss.item() - (-math.log(1 / (1 + math.exp(-2.0))))) < 1e-6
    assert cs.tolist() == rs.tolist() == [1.0]


def test_pairwise_loss_batch_is_mean_of_pairs_and_grad_flows():
    chosen = torch.tensor([[7, 8, 0], [5, 6, 7]])
    rejected = torch.tensor([[7, 9, 0], [5, 1, 0]])
    cv = torch.zeros(2, 3, requires_grad=True)
    rv = torch.zeros(2, 3)
    loss, _, _ = losses.pairwise_reward_loss(
        cv, rv, chosen, rejected, _mask([2, 3], 3), _mask([2, 2], 3), kind="divergence"
    )
    assert abs(loss.item() - math.log(2)) < 1e-6
    loss.backward()
    # only positions inside each pair's divergent span get gradient
    assert (cv.grad != 0).tolist() == [[False, True, False], [False, True, True]]


def test_last_token_loss_is_bradley_terry_on_scores():
    chosen = torch.tensor([[7, 8, 9, 0], [5, 6, 0, 0]])
    rejected = torch.tensor([[7, 8, 0, 0], [5, 6, 7, 8]])
    cv = torch.tensor([[0.0, 0.0, 2.0, 9.0], [0.0, 1.0, 9.0, 9.0]], requires_grad=True)
    rv = torch.tensor([[0.0, 0.5, 9.0, 9.0], [0.0, 0.0, 0.0, 3.0]])
    loss, cs, rs = losses.pairwise_reward_loss(cv, rv, chosen, rejected, _mask([3, 2], 4), _mask([2, 4], 4))
    assert cs.tolist() == [2.0, 1.0] and rs.tolist() == [0.5, 3.0]
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(2.0))) / 2
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    # gradient reaches only the scored positions, never padding
    assert (cv.grad != 0).tolist() == [[False, False, True, False], [False, True, False, False]]
