"""The stage graph: which stage kinds exist, what each reads from which earlier stage, and the
order they run in. The one place that knows the pipeline; the trainer, ``rlhf run``, the
entrypoint and the operator iterate it instead of spelling stage names out.

A *step* is what a run does, in order: the ``prepare`` step (models, datasets and tokenized data
into the run's storage), then the stages. Each step has one condition in the run's status
(:func:`condition_type`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StageKind:
    """A kind of training stage.

    ``name`` is the stage's name in a run, its ``rlhf train`` subcommand and its storage folder;
    ``title`` names it in conditions (``SFTSucceeded``) and Events; ``needs`` are the stages whose
    outputs it reads (PPO: the SFT actor and the reward model)."""

    name: str
    title: str
    needs: tuple[str, ...] = ()
    description: str = ""


#: The step before every stage: ``rlhf prepare`` (a batch Job on a cluster).
PREPARE = "prepare"
PREPARE_TITLE = "Prepare"

SFT = StageKind("sft", "SFT", (), "Stage 1: supervised fine-tuning of the actor")
REWARD = StageKind("reward", "Reward", (), "Stage 2: the reward model, trained on chosen/rejected pairs")
PPO = StageKind("ppo", "PPO", ("sft", "reward"), "Stage 3: PPO of the SFT actor against the reward model")

#: Every stage kind, by name, in pipeline order.
KINDS: dict[str, StageKind] = {k.name: k for k in (SFT, REWARD, PPO)}
#: The stages of a run, in the order they are listed and reported.
STAGE_NAMES: tuple[str, ...] = tuple(KINDS)
#: Every step of a run: prepare, then the stages.
STEPS: tuple[str, ...] = (PREPARE, *STAGE_NAMES)


class GraphError(ValueError):
    """A stage graph that cannot run (unknown stage, missing input, cycle)."""


def kind(stage: str) -> StageKind:
    try:
        return KINDS[stage]
    except KeyError:
        raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(KINDS)}") from None


def title(step: str) -> str:
    """The human name of a step: ``Prepare``, ``SFT``, ``Reward``, ``PPO``."""
    return PREPARE_TITLE if step == PREPARE else kind(step).title


def condition_type(step: str) -> str:
    """The condition of a step in the run's status: ``Prepared``, ``SFTSucceeded``, ..."""
    return "Prepared" if step == PREPARE else f"{kind(step).title}Succeeded"


def needs(stage: str) -> tuple[str, ...]:
    return kind(stage).needs


def ordered(stages: Iterable[str]) -> list[str]:
    """``stages`` in pipeline order (a stage after everything it needs)."""
    chosen = set(stages)
    unknown = sorted(chosen - set(KINDS))
    if unknown:
        raise GraphError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    return [s for s in topological(KINDS) if s in chosen]


def topological(graph: Mapping[str, StageKind]) -> list[str]:
    """The stages of ``graph`` with every stage after the ones it needs (ties in listed order)."""
    done: list[str] = []
    pending = list(graph)
    while pending:
        ready = [s for s in pending if all(n in done for n in graph[s].needs if n in graph)]
        if not ready:
            raise GraphError(f"the stages {', '.join(pending)} need each other (a cycle)")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def waves(stages: Iterable[str]) -> list[list[str]]:
    """``stages`` in waves: each wave's stages need only stages of earlier waves (or stages not
    in ``stages``: already done), so a wave's stages may run side by side."""
    todo = ordered(stages)
    out: list[list[str]] = []
    done: set[str] = set()
    while todo:
        wave = [s for s in todo if all(n in done or n not in todo for n in needs(s))]
        out.append(wave)
        done |= set(wave)
        todo = [s for s in todo if s not in done]
    return out


def ready(stage: str, succeeded: Iterable[str]) -> bool:
    """Whether every stage ``stage`` needs has succeeded."""
    done = set(succeeded)
    return all(n in done for n in needs(stage))


def waiting_for(stage: str) -> str:
    """What a stage waits for, in words: ``the prepare Job`` or ``the SFT and Reward stages``."""
    deps = needs(stage)
    if not deps:
        return "the prepare step"
    titles = [title(d) for d in deps]
    return "the " + (" and ".join(titles) if len(titles) < 3 else ", ".join(titles[:-1]) + " and " + titles[-1]) + (
        " stage" if len(titles) == 1 else " stages")
