"""Which stages run, in what order, side by side or not, with how many processes and threads (pure).

The rule (``rlhf run``):

* A stage runs ``nodes x devicesPerNode`` processes on this machine.
* Threads per process (OMP_NUM_THREADS): ``resources.cpu / devicesPerNode`` when the stage sets
  ``resources.cpu`` (a pod's cores shared by its processes), else every core the stage may use;
  never more than those cores divided by the stage's processes, and at least 1.
* Stages run in the stage graph's waves (``rlhf.api.graph``: SFT and the reward model, then PPO);
  the stages of a wave are independent and run **side by side** unless ``--sequential``, when:
  - accelerator ``cpu``: the stages' processes x threads fit in this machine's cores
    (a stage without ``resources.cpu`` wants every core, so it runs alone);
  - accelerator ``nvidia``: the stages' processes fit in the visible GPUs; the GPUs are split
    (``CUDA_VISIBLE_DEVICES``: the first stage the first ones, the next the next) and so are the cores;
  - accelerator ``habana``: never (Gaudi cards are not split between local jobs).
  Otherwise they run one after the other, in graph order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rlhf.api import graph

_QUANTITY = re.compile(r"^\+?([0-9.]+)(m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")
_SCALE = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


class PlanError(ValueError):
    """The run cannot be laid out on this machine; the message names the manifest field."""


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity (``4``, ``"500m"``, ``"1.5"``) in cores."""
    m = _QUANTITY.match(str(quantity).strip())
    if not m:
        raise PlanError(f"not a CPU quantity: {quantity!r}")
    value, suffix = float(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return value * 10 ** int(suffix[1:])
    return value * _SCALE.get(suffix, 1.0)


@dataclass(frozen=True)
class Machine:
    """What this machine offers: CPU cores and (accelerator nvidia) the visible CUDA device ids."""

    cpus: int
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageShape:
    """How the manifest sizes a stage: nodes, devices (processes) per node, cores per pod."""

    nodes: int = 1
    devices_per_node: int = 1
    cpu: float | None = None

    @property
    def processes(self) -> int:
        return self.nodes * self.devices_per_node


@dataclass(frozen=True)
class StagePlan:
    """One stage as it will run here."""

    stage: str
    processes: int
    threads: int
    devices: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES (nvidia)

    @property
    def cores(self) -> int:
        return self.processes * self.threads


@dataclass(frozen=True)
class Plan:
    """Waves run one after the other; the stages of a wave run side by side."""

    waves: tuple[tuple[StagePlan, ...], ...]
    note: str = ""

    @property
    def stages(self) -> list[str]:
        return [p.stage for wave in self.waves for p in wave]

    def get(self, stage: str) -> StagePlan:
        return next(p for wave in self.waves for p in wave if p.stage == stage)


def threads_for(shape: StageShape, cores: int) -> int:
    """OMP threads per process of a stage allowed ``cores`` cores (see the module doc)."""
    limit = max(1, cores // shape.processes)
    if shape.cpu is None:
        return limit
    return max(1, min(int(shape.cpu // shape.devices_per_node), limit))


def _check_gpus(stage: str, shape: StageShape, machine: Machine) -> None:
    if not machine.gpus:
        raise PlanError(
            f"spec.accelerator: nvidia needs CUDA GPUs, and none is visible here "
            f"(CUDA_VISIBLE_DEVICES / nvidia-smi); stage {stage} cannot run"
        )
    if shape.processes > len(machine.gpus):
        raise PlanError(
            f"spec.stages.{stage}: {shape.nodes} node(s) x {shape.devices_per_node} device(s) = "
            f"{shape.processes} GPUs, but {len(machine.gpus)} are visible here"
        )


def make_plan(
    shapes: dict[str, StageShape],
    accelerator: str,
    machine: Machine,
    stages: Iterable[str],
    pipeline: Iterable[str] | None = None,
    *,
    sequential: bool = False,
) -> Plan:
    """Lay out ``stages`` on ``machine`` following the module's rule: the stage graph's waves
    (:func:`rlhf.api.graph.waves`) of the run's ``pipeline`` (default ``stages``), a wave's stages
    side by side when they fit, else one after the other."""
    run = list(pipeline) if pipeline is not None else list(stages)
    todo = graph.ordered(stages, run)
    cores = max(1, machine.cpus)
    if accelerator == "nvidia":
        for stage in todo:
            _check_gpus(stage, shapes[stage], machine)

    def alone(stage: str) -> StagePlan:
        shape = shapes[stage]
        devices = machine.gpus[: shape.processes] if accelerator == "nvidia" else ()
        return StagePlan(stage, shape.processes, threads_for(shape, cores), devices)

    waves: list[tuple[StagePlan, ...]] = []
    notes: list[str] = []
    for wave in graph.waves(todo, run):
        together, note = _side_by_side(wave, shapes, accelerator, machine, cores, sequential, alone)
        waves += [together] if together else [(alone(s),) for s in wave]
        notes.append(note)
    return Plan(tuple(waves), "; then ".join(notes) or ", ".join(todo))


def _side_by_side(
    wave: list[str],
    shapes: dict[str, StageShape],
    accelerator: str,
    machine: Machine,
    cores: int,
    sequential: bool,
    alone: Callable[[str], StagePlan],
) -> tuple[tuple[StagePlan, ...] | None, str]:
    """The wave's stages laid out together if they fit (None: one after the other), and why."""
    names = " and ".join(wave) if len(wave) == 2 else ", ".join(wave)
    one_by_one = ", then ".join(wave)
    if len(wave) == 1:
        return None, wave[0]
    if sequential:
        return None, f"{one_by_one} (--sequential)"
    if accelerator == "cpu":
        plans = tuple(alone(s) for s in wave)
        used = [p.cores for p in plans]
        if sum(used) <= cores:
            return plans, f"{names} side by side ({' + '.join(map(str, used))} of {cores} cores)"
        return None, (
            f"{one_by_one}: {' + '.join(map(str, used))} cores do not fit in {cores} "
            "(set spec.stages.*.resources.cpu to share the machine)"
        )
    if accelerator == "nvidia":
        wanted = [shapes[s].processes for s in wave]
        if sum(wanted) > len(machine.gpus):
            return (
                None,
                f"{one_by_one}: {' + '.join(map(str, wanted))} GPUs do not fit in {len(machine.gpus)}",
            )
        split: list[StagePlan] = []
        first_gpu, first_core = 0, 0
        for i, (stage, n) in enumerate(zip(wave, wanted, strict=True)):
            share = cores - first_core if i == len(wave) - 1 else cores * n // sum(wanted)
            split.append(
                StagePlan(
                    stage, n, threads_for(shapes[stage], share), machine.gpus[first_gpu : first_gpu + n]
                )
            )
            first_gpu, first_core = first_gpu + n, first_core + share
        return tuple(
            split
        ), f"{names} side by side ({' + '.join(map(str, wanted))} of {len(machine.gpus)} GPUs)"
    return None, f"{one_by_one} (accelerator {accelerator}: devices are not split between stages)"


def shapes_of(run) -> dict[str, StageShape]:
    """Each stage's shape from an RLHFRun's ``spec.stages``."""
    out = {}
    for stage in run.spec.stage_order:
        spec = run.spec.stages.get(stage)
        cpu = spec.resources.cpu
        out[stage] = StageShape(spec.nodes, spec.devices_per_node, None if cpu is None else cpu_cores(cpu))
    return out


@dataclass(frozen=True)
class Selection:
    """Which stages this ``rlhf run`` runs and why the others do not: ``todo`` in order, and a
    (state, note) for each stage that does not run (``skipped``: completed with this config;
    ``not run``: not selected, or this trainer lacks it)."""

    todo: tuple[str, ...]
    others: dict[str, tuple[str, str]]


def select_stages(
    pipeline: list[str],
    selected: list[str] | None,
    available: Iterable[str],
    done: Iterable[str],
    storage: str = "the run's storage",
) -> Selection:
    """The stages of the run's ``pipeline`` to run given ``--stages`` (None: all), the stages this
    trainer has and those that completed already (in ``storage``, for messages). Raises
    :class:`PlanError` for a selected stage not in the pipeline or this trainer, or one that needs
    a stage neither selected nor completed."""
    available, done = set(available), set(done)
    outside = [s for s in selected or () if s not in pipeline]
    if outside:
        raise PlanError(
            f"--stages: {', '.join(outside)} not in this run's spec.pipeline ({', '.join(pipeline)})"
        )
    chosen = list(selected or pipeline)
    missing = [s for s in chosen if s not in available]
    if selected and missing:
        raise PlanError(
            f"--stages: this trainer has no {', '.join(missing)} stage "
            f"(it has {', '.join(s for s in graph.STAGE_NAMES if s in available)})"
        )
    for stage in chosen:
        for dep in graph.needs(stage, pipeline):
            if dep not in chosen and dep not in done:
                raise PlanError(
                    f"--stages: {stage} needs {dep} completed first, and {storage}/{dep} holds no "
                    f"completed {dep} with this manifest's config; add {dep} to --stages"
                )
    others: dict[str, tuple[str, str]] = {}
    for stage in pipeline:
        if stage not in available:
            others[stage] = ("not run", "not in this trainer")
        elif stage not in chosen:
            others[stage] = ("not run", "not in --stages")
        elif stage in done:
            others[stage] = ("skipped", "already completed")
    return Selection(tuple(s for s in graph.ordered(chosen, pipeline) if s not in others), others)
