"""PPO on one rank in-process (CPU/gloo) with the nano models: the loop, its outputs, and its checks."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf import tools
from rlhf.config import ConfigError, PPOConfig, load
from rlhf.generation import Sampling, cut_answer, pack
from rlhf.stages.dispatch import run_stage

ITERATION_METRICS = {
    "reward_mean",
    "reward_std",
    "kl",
    "actor_loss",
    "critic_loss",
    "actor_clipfrac",
    "critic_clipfrac",
    "approx_kl",
    "answer_tokens",
    "generate_seconds",
    "train_seconds",
    "generate_tokens_per_second",
    "samples_per_second",
    "actor_lr",
    "critic_lr",
}


def _rows(out, split):
    return [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.fixture(scope="module")
def ppo_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    cfg = load(
        PPOConfig,
        None,
        tiny.ppo_overrides(
            out, "ppo.max_iterations=3", "generation.generation_batches=2", "ppo.ppo_epochs=2"
        ),
    )
    return out, cfg, run_stage(cfg)


def test_ppo_iterates_logs_and_saves_a_chatable_actor(ppo_run):
    out, cfg, summary = ppo_run
    assert summary["status"] == "completed" and summary["global_step"] == 3
    rows = _rows(out, "train")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row.keys() >= ITERATION_METRICS, ITERATION_METRICS - row.keys()
        assert row["answer_tokens"] >= 1
    # held-out evaluation of the starting actor and the final one, with the program's checks
    for prefix in ("baseline", "eval"):
        for key in ("reward_mean", "distinct_2", "mean_words", "property_rate", "content_rate"):
            assert f"{prefix}/{key}" in summary["metrics"], f"{prefix}/{key}"
    assert {"check/property_gain_points", "check/distinct_2_ratio", "check/length_ratio"} <= summary[
        "metrics"
    ].keys()
    assert len((out / "eval_answers.jsonl").read_text().splitlines()) == 6
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size >= 512
    actor, tok = tools.load_actor(out / "model")
    answer = tools.reply(actor, tok, [("What is the capital of France?", None)], Sampling(max_new_tokens=8))
    assert isinstance(answer, str)
    assert json.loads((out / "summary.json").read_text())["model_dir"] == str(out / "model")


def test_ppo_rerun_with_the_same_config_is_skipped(ppo_run):
    _, cfg, _ = ppo_run
    assert run_stage(cfg)["skipped"] is True


def test_ppo_with_ptx_ema_and_a_reward_model_with_its_own_tokenizer(tiny, tmp_path):
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models import tiny as tiny_models

    other_tok = tiny_models.train_tokenizer(corpus_texts(tiny.data), vocab_size=300)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    other = tiny_models.build_tiny(tmp_path / "other_rm", tokenizer=other_tok, seed=2, **nano)
    out = tmp_path / "ppo"
    cfg = load(
        PPOConfig,
        None,
        tiny.ppo_overrides(
            out,
            f"reward_model.name_or_path={other}",
            "ptx.coef=0.5",
            f"data.sft_only_paths=[{tiny.data / 'sft.jsonl'}]",
            "engines.ema=true",
            "ppo.max_iterations=1",
            "evaluation.baseline=false",
        ),
    )
    summary = run_stage(cfg)
    assert summary["status"] == "completed"
    assert "ptx_loss" in _rows(out, "train")[0]
    assert (out / "ema_model" / "config.json").is_file()


def test_critic_with_another_tokenizer_is_a_config_error(tiny, tmp_path):
    from rlhf.data.synthetic import corpus_texts
    from rlhf.models import tiny as tiny_models

    other_tok = tiny_models.train_tokenizer(corpus_texts(tiny.data), vocab_size=300)
    nano = {k: v for k, v in tiny_models.PRESETS["nano"].items() if k != "family"}
    other = tiny_models.build_tiny(tmp_path / "other", tokenizer=other_tok, seed=2, **nano)
    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path / "out", f"critic.name_or_path={other}"))
    from rlhf.stages.ppo_models import load_tokenizers

    with pytest.raises(ConfigError, match="critic.name_or_path: the critic's tokenizer"):
        load_tokenizers(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.per_device_train_batch_size=3", "must divide the samples of one iteration"),
        ("critic_optim.epochs=2", "critic_optim.epochs: unknown key"),
        ("generation.max_answer_len=60", "exceeds data.max_seq_len"),
        ("data.split=1,1,0", "PPO needs data.paths with a positive PPO share"),
        # DeepSpeed's hybrid engine would generate from the base weights, without peft's adapters
        ("engines.hybrid_engine=true lora.dim=4", "hybrid_engine .* not peft's"),
    ],
)
def test_ppo_config_checks(tiny, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load(PPOConfig, None, tiny.ppo_overrides(tmp_path, *override.split()))


def test_a_dumped_ppo_config_loads_back(tiny, tmp_path):
    from rlhf.config import dump

    cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path, "critic_optim.learning_rate=2e-5"))
    (tmp_path / "ppo.yaml").write_text(dump(cfg))
    assert load(PPOConfig, tmp_path / "ppo.yaml") == cfg


def test_ema_with_lora_is_rejected(tiny, tmp_path):
    with pytest.raises(ConfigError, match="ema"):
        load(PPOConfig, None, tiny.ppo_overrides(tmp_path, "engines.ema=true", "lora.dim=4"))


def test_answers_are_cut_at_their_end_and_packed_right_padded():
    assert cut_answer([5, 6, 1, 7], eos_id=1, pad_id=0) == ([5, 6], 1)
    assert cut_answer([5, 0, 6], eos_id=1, pad_id=0) == ([5], 0)
    assert cut_answer([5, 6], eos_id=1, pad_id=0) == ([5, 6], None)
    gen = pack([[9, 8, 7], [4], [3, 2]], [[5, 6], [], [5]], [1, 0, None], eos_id=1, pad_id=0)
    assert gen.sequences.tolist() == [[9, 8, 7, 5, 6, 1], [4, 0, 0, 0, 0, 0], [3, 2, 5, 0, 0, 0]]
    assert gen.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    # action t emits token t+1: answer tokens 5, 6 and the eos of row 0; the sampled pad that ended the
    # empty answer of row 1 (an action like any other); the answer of row 2, cut by the length limit
    assert gen.action_mask.tolist() == [[0, 0, 1, 1, 1], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]
    assert gen.answer_lens.tolist() == [3, 1, 1] and gen.content_lens.tolist() == [2, 0, 1]
    assert gen.ended.tolist() == [True, False, False]
    # what a reward model reads: prompt + content (+ eos when it ended), never the sampled pad
    assert gen.score_lens.tolist() == [6, 1, 3]


class _Scripted(torch.nn.Module):
    """A 'model' whose generate() emits fixed new tokens (with uniform logits)."""

    def __init__(self, new_tokens: list[list[int]], vocab: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new, self.vocab = torch.tensor(new_tokens), vocab

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        from types import SimpleNamespace

        new = self.new[:, :max_new_tokens]
        logits = tuple(torch.zeros(new.size(0), self.vocab) for _ in range(new.size(1)))
        return SimpleNamespace(sequences=torch.cat([input_ids, new], dim=1), logits=logits)


def test_an_empty_answer_that_did_not_end_gets_its_penalty_on_the_token_that_stopped_it():
    """The actor sampled the pad token first: an empty answer that did not end. Its too-short penalty
    must land on that token (the action the policy took), not on no token at all."""
    from rlhf import losses
    from rlhf.generation import generate

    pad, eos = 0, 1
    model = _Scripted([[pad, 7, 7], [5, 6, eos]], vocab=10)
    gen = generate(model, [[4, 3], [4, 3]], eos_id=eos, pad_id=pad, sampling=Sampling(max_new_tokens=3))
    assert gen.content_lens.tolist() == [0, 2] and gen.ended.tolist() == [False, True]
    assert gen.action_mask.sum(dim=1).tolist() == [1, 3]  # the sampled pad is row 0's one action
    penalty = torch.tensor([-5.0, 1.0])  # what score() gives an answer under generation.min_answer_len
    rewards, _ = losses.shaped_rewards(gen.logprobs, gen.logprobs, penalty, gen.action_mask.float(), 0.1, 5.0)
    assert rewards.sum(dim=1).tolist() == [-5.0, 1.0]
    assert rewards[0, 1].item() == -5.0  # on the action that emitted the pad (position 2 of the sequence)


def test_generation_logprobs_equal_a_forward_pass(tiny):
    import torch

    from rlhf import losses
    from rlhf.generation import generate

    actor, tok = tools.load_actor(tiny.actor)
    prompts = [
        tok("Human: Name a color.\n\nAssistant:")["input_ids"],
        tok("Human: Hi!\n\nAssistant:")["input_ids"],
    ]
    torch.manual_seed(0)
    gen = generate(
        actor,
        prompts,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        sampling=Sampling(max_new_tokens=6, do_sample=True, temperature=0.7),
    )
    with torch.no_grad():
        logits = actor(input_ids=gen.sequences, attention_mask=gen.attention_mask).logits
    forward = losses.logprobs_of(logits, gen.sequences) * gen.action_mask
    torch.testing.assert_close(gen.logprobs, forward, atol=1e-4, rtol=1e-4)
    assert (gen.logprobs != 0).sum() == gen.action_mask.sum()


def test_evaluation_prompts_errors_name_the_field(tiny, tmp_path):
    from rlhf.data.sources import DataError
    from rlhf.stages.ppo_eval import eval_prompts

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Human: Hi!\\n\\nAssistant:"}\nnot json\n')
    _, tok = tools.load_actor(tiny.actor)
    for path, words in ((tmp_path / "missing.jsonl", "no such file"), (bad, "bad.jsonl:2")):
        cfg = load(PPOConfig, None, tiny.ppo_overrides(tmp_path, f"evaluation.prompts={path}"))
        with pytest.raises(DataError, match=f"evaluation.prompts: .*{words}"):
            eval_prompts(cfg, tok, None)


def test_reward_scoring_tokenizes_like_the_reward_stage(tiny, tmp_path):
    """rw-eval and PPO with a reward model of its own tokenizer feed it the ids it was trained on."""
    from rlhf.data.sources import Record
    from rlhf.data.tokenize import answer_rows, tokenize_records

    _, tok = tools.load_actor(tiny.actor)
    rec = Record(prompt="Human: Name a color.\n\nAssistant:", chosen=" It is red. Cheers!", rejected=" Iron.")
    cols, _ = tokenize_records([rec], tok, 1, max_seq_len=128, eot_id=tok.eos_token_id)
    rows = answer_rows(tok, [rec.prompt] * 2, [rec.chosen, rec.rejected], [tok.eos_token_id] * 2)
    assert rows == [cols["chosen_ids"][0], cols["rejected_ids"][0]]
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny.reward, num_labels=1).save_pretrained(
        tmp_path / "rm"
    )
    tok.save_pretrained(tmp_path / "rm")  # tools.load_scorer takes reward models only
    scorer, stok = tools.load_scorer(tmp_path / "rm")
    a, b = tools.score_texts(scorer, stok, [rec.prompt] * 2, ["It is red. Cheers!", rec.chosen])
    assert a == pytest.approx(b, abs=1e-5)  # the answer format adds the leading space either way


@pytest.mark.parametrize(
    "overrides, once",
    [
        ((), True),  # one epoch over a rollout that is one mini-batch: the training forward is the only one
        (("ppo.ppo_epochs=2",), False),
        (("generation.generation_batches=2",), False),
        (("optim.per_device_train_batch_size=4",), False),
        (("critic.dropout=0.1",), False),
        (("critic_lora.dim=4", "critic_lora.dropout=0.1"), False),
        (("critic_lora.dim=4",), True),
    ],
)
def test_when_the_critic_values_come_from_its_training_forward(tiny, tmp_path, overrides, once):
    from rlhf.stages.rollout import critic_values_in_training

    cfg = load(
        PPOConfig, None, tiny.ppo_overrides(tmp_path, "optim.per_device_train_batch_size=8", *overrides)
    )
    assert critic_values_in_training(cfg) is once


def test_the_critic_runs_once_per_iteration_and_trains_as_with_an_experience_forward(
    tiny, tmp_path, monkeypatch
):
    """One critic forward per iteration (not an experience forward, then the same one again in
    training), with the same losses and the same trained models as the two-forward path."""
    import torch

    from rlhf.stages import ppo as ppo_module
    from rlhf.stages import ppo_train, rollout

    calls = []

    def counted(module):
        original = module.critic_values

        def wrapper(engine, sequences, attention_mask):
            calls.append(module.__name__)
            return original(engine, sequences, attention_mask)

        return wrapper

    monkeypatch.setattr(ppo_train, "critic_values", counted(ppo_train))
    monkeypatch.setattr(rollout, "critic_values", counted(rollout))
    runs = {}
    for once in (True, False):
        calls.clear()
        monkeypatch.setattr(ppo_module, "critic_values_in_training", lambda cfg, once=once: once)
        out = tmp_path / f"once-{once}"
        cfg = load(
            PPOConfig,
            None,
            tiny.ppo_overrides(
                out,
                "optim.per_device_train_batch_size=8",
                "evaluation.baseline=false",
                "evaluation.max_prompts=2",
            ),
        )
        assert run_stage(cfg)["status"] == "completed"
        runs[once] = (out, list(calls))
    assert runs[True][1] == ["rlhf.stages.ppo_train"] * 2  # 2 iterations, one critic forward each
    assert runs[False][1] == ["rlhf.stages.rollout", "rlhf.stages.ppo_train"] * 2
    rows = {once: _rows(out, "train") for once, (out, _) in runs.items()}
    for a, b in zip(rows[True], rows[False], strict=True):
        for key in ("critic_loss", "actor_loss", "reward_mean", "kl", "critic_clipfrac"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    models = {
        once: AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
        for once, (out, _) in runs.items()
    }
    for name, tensor in models[True].items():
        torch.testing.assert_close(tensor, models[False][name], rtol=1e-4, atol=1e-5, msg=name)
