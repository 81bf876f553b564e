"""The stage graph: which stage kinds exist, what each reads from which earlier stage, and the
order a run's stages run in. The one place that knows pipelines; the trainer, ``rlhf run``, the
entrypoint and the operator iterate it instead of spelling stage names out.

A run's stages are ``spec.pipeline`` (default SFT, reward model, PPO: DeepSpeed-Chat's three).
A *step* is what a run does, in order: the ``prepare`` step (models, datasets and tokenized data
into the run's storage), then its stages. Each step has one condition in the run's status
(:func:`condition_type`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Input:
    """What a stage reads from an earlier one: ``role`` (the actor, the critic, ...) is the output
    model of stage ``stage``. An optional input is read when that stage is in the run."""

    role: str
    stage: str
    #: The section of the reading stage's trainer config that loads it (``actor``, ``critic``, ...).
    section: str
    required: bool = True


@dataclass(frozen=True)
class StageKind:
    """A kind of training stage.

    ``name`` is the stage's name in a run, its ``rlhf train`` subcommand and its storage folder;
    ``title`` names it in conditions (``SFTSucceeded``) and Events; ``phase`` is its share of
    ``spec.data.split`` (0: SFT's, 1: the preference pairs', 2: the prompts'); ``inputs`` are the
    earlier stages' models it starts from."""

    name: str
    title: str
    phase: int
    inputs: tuple[Input, ...] = ()
    description: str = ""
    #: The summary metrics that say how the stage went, first in `rlhf run`'s final table.
    key_metrics: tuple[str, ...] = ()


#: The step before every stage: ``rlhf prepare`` (a batch Job on a cluster).
PREPARE = "prepare"
PREPARE_TITLE = "Prepare"

#: The held-out answers' checks of the stages that train the policy (before: baseline/*, after: eval/*).
_ANSWER_CHECKS = (
    "eval/property_rate",
    "baseline/property_rate",
    "eval/content_rate",
    "baseline/content_rate",
)

SFT = StageKind("sft", "SFT", 0, (), "Supervised fine-tuning of the actor", ("eval/perplexity", "eval/loss"))
REWARD = StageKind(
    "reward",
    "Reward",
    1,
    (),
    "The reward model, trained on chosen/rejected pairs",
    ("eval/accuracy", "eval/margin", "eval/loss"),
)
PPO = StageKind(
    "ppo",
    "PPO",
    2,
    (Input("actor", "sft", "actor"), Input("critic", "reward", "critic")),
    "PPO of the SFT actor against the reward model, with a critic from it",
    ("eval/reward_mean", "baseline/reward_mean", *_ANSWER_CHECKS),
)
DPO = StageKind(
    "dpo",
    "DPO",
    1,
    (Input("policy", "sft", "model"),),
    "DPO of the SFT model on the preference pairs, against itself as the reference",
    ("eval/reward_accuracy", "eval/reward_margin", *_ANSWER_CHECKS),
)
GRPO = StageKind(
    "grpo",
    "GRPO",
    2,
    (Input("actor", "sft", "actor"), Input("reward model", "reward", "reward_model", required=False)),
    "GRPO or RLOO of the SFT actor: groups of answers, rewards from a reward model and/or code",
    ("eval/reward_mean", "baseline/reward_mean", *_ANSWER_CHECKS),
)

#: Every stage kind, by name (the order stages are listed in when a run names them).
KINDS: dict[str, StageKind] = {k.name: k for k in (SFT, REWARD, PPO, DPO, GRPO)}
#: Every stage name a run may have.
STAGE_NAMES: tuple[str, ...] = tuple(KINDS)
#: A stage name, as a type (the API's fields that name a stage). Built from KINDS when imported, so
#: pydantic checks it; mypy, which needs the values written out, takes it as Any.
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]
#: A run's stages unless its spec.pipeline says otherwise: DeepSpeed-Chat's three.
DEFAULT_PIPELINE: tuple[str, ...] = ("sft", "reward", "ppo")
#: Every step a run may have: prepare, then the stages.
STEPS: tuple[str, ...] = (PREPARE, *STAGE_NAMES)


class GraphError(ValueError):
    """A pipeline that cannot run (unknown stage, missing input, cycle)."""


def kind(stage: str) -> StageKind:
    try:
        return KINDS[stage]
    except KeyError:
        raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(KINDS)}") from None


def title(step: str) -> str:
    """The human name of a step: ``Prepare``, ``SFT``, ``Reward``, ``PPO``, ``DPO``, ``GRPO``."""
    return PREPARE_TITLE if step == PREPARE else kind(step).title


def condition_type(step: str) -> str:
    """The condition of a step in the run's status: ``Prepared``, ``SFTSucceeded``, ..."""
    return "Prepared" if step == PREPARE else f"{kind(step).title}Succeeded"


def needs(stage: str, pipeline: Iterable[str] = DEFAULT_PIPELINE) -> tuple[str, ...]:
    """The stages ``stage`` reads from in a run of ``pipeline``: its required inputs, and its
    optional ones that the run has."""
    present = set(pipeline)
    return tuple(dict.fromkeys(i.stage for i in kind(stage).inputs if i.required or i.stage in present))


def problems(pipeline: Iterable[str], where: str = "spec.pipeline") -> list[str]:
    """Why ``pipeline`` cannot run, one line each: an unknown or repeated stage, a stage whose
    required input is missing."""
    stages = list(pipeline)
    out = []
    if not stages:
        out.append(f"{where}: name at least one stage ({', '.join(KINDS)})")
    for stage in dict.fromkeys(s for s in stages if stages.count(s) > 1):
        out.append(f"{where}: {stage} is listed twice")
    for stage in stages:
        if stage not in KINDS:
            out.append(f"{where}: unknown stage {stage!r}; expected one of {', '.join(KINDS)}")
            continue
        for inp in kind(stage).inputs:
            if inp.required and inp.stage not in stages:
                out.append(
                    f"{where}: {stage} starts its {inp.role} from the {inp.stage} stage's model; "
                    f"add {inp.stage} to {where}"
                )
    return out


def ordered(stages: Iterable[str], pipeline: Iterable[str] | None = None) -> list[str]:
    """``stages`` with every stage after the ones it needs (ties in the order of :data:`KINDS`).
    ``pipeline``: the run's stages, for the optional inputs (default ``stages`` themselves)."""
    chosen = list(dict.fromkeys(stages))
    unknown = [s for s in chosen if s not in KINDS]
    if unknown:
        raise GraphError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    run = list(pipeline) if pipeline is not None else chosen
    pending = [s for s in STAGE_NAMES if s in chosen]
    done: list[str] = []
    while pending:
        ready = [s for s in pending if all(n in done or n not in chosen for n in needs(s, run))]
        if not ready:
            raise GraphError(f"the stages {', '.join(pending)} need each other (a cycle)")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def waves(stages: Iterable[str], pipeline: Iterable[str] | None = None) -> list[list[str]]:
    """``stages`` in waves: each wave's stages need only stages of earlier waves (or stages not
    in ``stages``: already done), so a wave's stages may run side by side."""
    run = list(pipeline) if pipeline is not None else list(stages)
    todo = ordered(stages, run)
    out: list[list[str]] = []
    done: set[str] = set()
    while todo:
        wave = [s for s in todo if all(n in done or n not in todo for n in needs(s, run))]
        out.append(wave)
        done |= set(wave)
        todo = [s for s in todo if s not in done]
    return out


def ready(stage: str, succeeded: Iterable[str], pipeline: Iterable[str] = DEFAULT_PIPELINE) -> bool:
    """Whether every stage ``stage`` needs (in a run of ``pipeline``) has succeeded."""
    done = set(succeeded)
    return all(n in done for n in needs(stage, pipeline))


def waiting_for(stage: str, pipeline: Iterable[str] = DEFAULT_PIPELINE) -> str:
    """What a stage waits for, in words: ``the prepare step`` or ``the SFT and Reward stages``."""
    deps = needs(stage, pipeline)
    if not deps:
        return "the prepare step"
    titles = [title(d) for d in deps]
    joined = " and ".join(titles) if len(titles) < 3 else ", ".join(titles[:-1]) + " and " + titles[-1]
    return f"the {joined} stage" + ("" if len(titles) == 1 else "s")
