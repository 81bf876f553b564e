"""The static-cache decode loop (rlhf.decoding), eager and compiled, against transformers' generate:
the same greedy answers, the same sampling distribution, log-probs equal to a forward pass, and a
compiled step that follows the weights of a model trained between calls."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from rlhf import losses
from rlhf.decoding import Choice, StaticDecoder, choose
from rlhf.generation import Sampling, generate


@pytest.fixture(scope="module")
def actor(tiny):
    from rlhf import tools

    model, tok = tools.load_actor(tiny.actor)
    torch.manual_seed(0)
    with torch.no_grad():  # the untrained nano model repeats one token; noisier weights answer variously
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.float().eval(), tok


def _prompts(tok):
    texts = [
        "Human: Name a color.\n\nAssistant:",
        "Human: Hi!\n\nAssistant:",
        "Human: What comes after 41? Please answer.\n\nAssistant:",
        "Human: Say cat.\n\nAssistant:",
    ]
    return [tok(t)["input_ids"] for t in texts]


def _answers(gen):
    return [list(a) for a in gen.answers], gen.ended.tolist(), gen.sequences.tolist()


NEVER = 10**6  # an end-of-text id no model emits


def _ending_token(model, tok, prompts, n=12):
    """A token that the model emits greedily in some rows' answers but not in others': used as the
    end-of-text token, so some rows end early and others run out (the untrained nano model never
    emits its real eos)."""
    gen = generate(model, prompts, eos_id=NEVER, pad_id=tok.pad_token_id, sampling=Sampling(max_new_tokens=n))
    seen = [set(a) for a in gen.answers]
    return next(t for t in gen.answers[0][1:] if any(t not in s for s in seen))


@pytest.mark.parametrize("decoder", ["static", "compiled"])
def test_greedy_answers_and_logprobs_equal_transformers_generate(actor, decoder):
    model, tok = actor
    prompts = _prompts(tok)
    eos = _ending_token(model, tok, prompts)
    sampling = Sampling(max_new_tokens=12)
    ref = generate(model, prompts, eos_id=eos, pad_id=tok.pad_token_id, sampling=sampling)
    ours = generate(
        model, prompts, eos_id=eos, pad_id=tok.pad_token_id, sampling=sampling, decoder=decoder, cache_len=64
    )
    assert any(ours.ended.tolist()) and not all(ours.ended.tolist())  # some rows stop early, some run out
    assert _answers(ours) == _answers(ref)
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        logits = model(input_ids=ours.sequences, attention_mask=ours.attention_mask).logits
    forward = losses.logprobs_of(logits, ours.sequences) * ours.action_mask
    torch.testing.assert_close(ours.logprobs, forward, atol=1e-4, rtol=1e-4)
    # a smaller batch reuses the decoder (its rows filled up), the answers still those of generate()
    small = generate(
        model,
        prompts[1:3],
        eos_id=eos,
        pad_id=tok.pad_token_id,
        sampling=sampling,
        decoder=decoder,
        cache_len=64,
    )
    assert _answers(small)[0] == _answers(ref)[0][1:3]


def test_the_compiled_step_follows_weights_updated_in_place(actor):
    """PPO trains the actor between rollouts: the compiled step must read the new weights."""
    model, tok = actor
    model = AutoModelForCausalLM.from_config(model.config).float().eval()  # a copy to change
    model.load_state_dict(actor[0].state_dict())
    prompts = _prompts(tok)
    sampling = Sampling(max_new_tokens=10)
    kw = {"eos_id": -1, "pad_id": tok.pad_token_id, "sampling": sampling}
    before = generate(model, prompts, decoder="compiled", cache_len=64, **kw)
    assert _answers(before) == _answers(generate(model, prompts, **kw))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = generate(model, prompts, decoder="compiled", cache_len=64, **kw)
    assert _answers(after) == _answers(generate(model, prompts, **kw))
    assert _answers(after) != _answers(before)


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.8, 20, 0.9)]
)
def test_warp_logits_is_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    expected = logits.clone()
    for warper in (
        TemperatureLogitsWarper(temperature),
        TopKLogitsWarper(top_k) if top_k else None,
        TopPLogitsWarper(top_p) if top_p < 1 else None,
    ):
        if warper is not None:
            expected = warper(None, expected)
    torch.testing.assert_close(losses.warp_logits(logits, temperature, top_k, top_p), expected)


def test_warp_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(losses.warp_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p 0.8: 0.5 + 0.3 reach it, the rest (cumulative 0.05, 0.2 from the bottom, <= 0.2) goes
    assert torch.isinf(losses.warp_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(losses.warp_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    torch.testing.assert_close(losses.warp_logits(logits, temperature=2.0), logits / 2)


@pytest.mark.parametrize(
    "choice", [Choice(True, 1.0), Choice(True, 0.7, top_k=4), Choice(True, 1.0, top_p=0.7)]
)
def test_choose_draws_from_the_warped_distribution(choice):
    """The exponential race draws token i with probability p_i of the warped softmax (a binomial
    test per token at 5 standard deviations over 40,000 draws); the returned log-prob is unwarped."""
    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = losses.warp_logits(logits, choice.temperature, choice.top_k, choice.top_p).softmax(-1)[0]
    n = 40_000
    tokens, logp = choose(logits.expand(n, -1).contiguous(), choice)
    counts = torch.bincount(tokens, minlength=logits.size(1)).double()
    for p, c in zip(probs.tolist(), counts.tolist(), strict=True):
        assert abs(c - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9, (probs, counts / n)
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[0][tokens])


@pytest.mark.parametrize("decoder", ["static", "compiled"])
def test_sampled_answers_follow_the_models_warped_distribution(actor, decoder):
    """The whole loop (prefill, then a decode step): the first token's frequencies over 3,000 copies
    of a prompt, and the second's after the most frequent first token, are the warped softmax of the
    model's logits for that prefix (5 standard deviations per token with p > 1 %)."""
    model, tok = actor
    prompt = _prompts(tok)[0]
    n, temperature, top_k = 3000, 0.9, 12
    torch.manual_seed(11)
    gen = generate(
        model,
        [prompt] * n,
        eos_id=NEVER,
        pad_id=NEVER + 1,
        decoder=decoder,
        cache_len=len(prompt) + 2,
        sampling=Sampling(max_new_tokens=2, do_sample=True, temperature=temperature, top_k=top_k),
    )
    first = torch.tensor([a[0] for a in gen.answers])
    top = int(first.mode().values)
    second = torch.tensor([a[1] for a in gen.answers if a[0] == top])
    for prefix, drawn in (([], first), ([top], second)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + prefix])).logits[0, -1].float()
        probs = losses.warp_logits(logits[None], temperature, top_k).softmax(-1)[0]
        counts = torch.bincount(drawn, minlength=probs.numel()).double()
        assert counts[probs == 0].sum() == 0  # nothing outside the top-k
        m = len(drawn)
        for p, c in zip(probs.tolist(), counts.tolist(), strict=True):
            if p > 0.01:
                assert abs(c - m * p) <= 5 * math.sqrt(m * p * (1 - p)), (prefix, p, c / m)


def test_a_decoder_refuses_what_does_not_fit(actor):
    model, tok = actor
    dec = StaticDecoder(model, 2, 16, torch.device("cpu"), compile=False)
    ids = torch.ones(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="does not fit"):
        dec(ids, torch.ones_like(ids), 4, Choice(), eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="does not fit"):
        dec(ids[:2], torch.ones_like(ids[:2]), 13, Choice(), eos_id=1, pad_id=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CUDA-graph path)")
@pytest.mark.parametrize("do_sample", [False, True])
def test_cuda_graph_decoder_answers_as_generate_on_the_gpu(actor, do_sample):
    """On CUDA the compiled step is captured in CUDA graphs: greedy answers and log-probs as
    transformers' generate() on the same GPU; sampled answers stay within the warped support."""
    import copy

    model, tok = actor
    model = copy.deepcopy(model).cuda()
    prompts = _prompts(tok)
    device = torch.device("cuda")
    sampling = Sampling(max_new_tokens=12, do_sample=do_sample, top_k=20)
    kw = {"eos_id": NEVER, "pad_id": tok.pad_token_id, "sampling": sampling, "device": device}
    ours = generate(model, prompts, decoder="compiled", cache_len=64, **kw)
    again = generate(model, prompts, decoder="compiled", cache_len=64, **kw)  # replayed graphs
    with torch.no_grad():
        logits = model(input_ids=ours.sequences.cuda(), attention_mask=ours.attention_mask.cuda()).logits
    forward = losses.logprobs_of(logits, ours.sequences.cuda()).cpu() * ours.action_mask
    torch.testing.assert_close(ours.logprobs, forward, atol=1e-4, rtol=1e-4)
    if not do_sample:
        ref = generate(model, prompts, **kw)
        assert _answers(ours) == _answers(ref) == _answers(again)
