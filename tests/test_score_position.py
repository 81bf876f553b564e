"""Where a reward model reads a sequence's score: at its last real token by the attention mask — in
reward training, PPO scoring and rw-eval alike, with the same inputs — even when the pad id is the
eos id (Llama, Mistral, Qwen, GPT-2) and the prompt itself holds that token (chat turns)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf import tools
from rlhf.config import PPOConfig, RewardConfig, load
from rlhf.data.sources import Record
from rlhf.data.tokenize import tokenize_records
from rlhf.engine.accelerator import Accelerator
from rlhf.generation import pack

RT = SimpleNamespace(device=torch.device("cpu"), accel=Accelerator("cpu"))


class _Engine:
    """What DeepSpeed's engine offers the scoring code: call it, and its ``module``."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.fixture(scope="module")
def setup(tiny):
    from rlhf.config import RewardModelConfig
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import load_reward_model

    model_cfg = RewardModelConfig(
        name_or_path=str(tiny.reward), dropout=0.0
    )  # a fresh value head: any weights do
    tok = load_tokenizer(model_cfg)
    scorer = load_reward_model(model_cfg, tok).eval()
    tok.pad_token = tok.eos_token  # no pad token of its own: pad = eos
    eos = tok.eos_token_id
    # a two-turn prompt: the first turn ended with eos, as chat templates end turns
    prompt = f"Human: Hi!{tok.eos_token}\n\nHuman: Name a color.\n\nAssistant:"
    rec = Record(prompt=prompt, chosen=" It is red. Cheers!", rejected=" Iron.")
    cols, _ = tokenize_records([rec], tok, 1, max_seq_len=128, eot_id=eos)
    chosen, rejected = cols["chosen_ids"][0], cols["rejected_ids"][0]
    assert eos in chosen[:-1] and chosen[-1] == eos and len(chosen) != len(rejected)
    with torch.no_grad():  # the truth: the value at the final token of each sequence, unpadded
        truth = [
            float(scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1])
            for ids in (chosen, rejected)
        ]
    return SimpleNamespace(
        scorer=scorer, tok=tok, eos=eos, rec=rec, chosen=chosen, rejected=rejected, truth=truth
    )


def test_reward_training_reads_the_score_at_the_answer_end(setup, tmp_path, tiny):
    from rlhf.stages.reward import RewardStage

    cfg = load(RewardConfig, None, tiny.reward_overrides(tmp_path))
    stage = RewardStage(cfg, RT, setup.tok)
    batch = stage.collate([{"chosen_ids": setup.chosen, "rejected_ids": setup.rejected}])
    with torch.no_grad():
        _, chosen, rejected = stage._forward(setup.scorer, batch)
    assert [float(chosen[0]), float(rejected[0])] == pytest.approx(setup.truth, abs=1e-5)


def test_ppo_scores_the_inputs_reward_training_saw(setup, tmp_path, tiny):
    from rlhf.stages.reward import RewardStage
    from rlhf.stages.rollout import reward_inputs, score

    tok, eos = setup.tok, setup.eos
    prompt_ids = tok(setup.rec.prompt, add_special_tokens=False)["input_ids"]
    answers = [ids[len(prompt_ids) : -1] for ids in (setup.chosen, setup.rejected)]
    gen = pack([prompt_ids, prompt_ids], answers, [eos, eos], eos_id=eos, pad_id=tok.pad_token_id)
    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path))
    models = SimpleNamespace(
        reward=_Engine(setup.scorer), tokenizer=tok, reward_tokenizer=tok, same_reward_tokenizer=True
    )
    ids, mask = reward_inputs(models, cfg, gen, RT)
    trained = RewardStage(load(RewardConfig, None, tiny.reward_overrides(tmp_path)), RT, tok).collate(
        [{"chosen_ids": setup.chosen, "rejected_ids": setup.rejected}]
    )
    assert torch.equal(ids, trained["input_ids"]) and torch.equal(mask, trained["attention_mask"])
    assert score(models, cfg, gen, RT).tolist() == pytest.approx(setup.truth, abs=1e-5)


def test_rw_eval_reads_the_same_scores(setup):
    scores = tools.score_texts(
        setup.scorer, setup.tok, [setup.rec.prompt] * 2, [setup.rec.chosen, setup.rec.rejected]
    )
    assert scores == pytest.approx(setup.truth, abs=1e-5)
