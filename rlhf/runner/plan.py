"""Which stages run, in what order, side by side or not, with how many processes and threads (pure).

The rule (``rlhf run``):

* A stage runs ``nodes x devicesPerNode`` processes on this machine.
* Threads per process (OMP_NUM_THREADS): ``resources.cpu / devicesPerNode`` when the stage sets
  ``resources.cpu`` (a pod's cores shared by its processes), else every core the stage may use;
  never more than those cores divided by the stage's processes, and at least 1.
* SFT and the reward model are independent and run **side by side** unless ``--sequential``, when:
  - accelerator ``cpu``: both stages' processes x threads fit in this machine's cores
    (a stage without ``resources.cpu`` wants every core, so it runs alone);
  - accelerator ``nvidia``: both stages' processes fit in the visible GPUs; the GPUs are split
    (``CUDA_VISIBLE_DEVICES``: SFT the first ones, the reward model the next) and so are the cores;
  - accelerator ``habana``: never (Gaudi cards are not split between local jobs).
  Otherwise SFT runs first, then the reward model.
* PPO runs after both succeeded, alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Stages that must have finished before a stage starts.
DEPENDS: dict[str, tuple[str, ...]] = {"sft": (), "reward": (), "ppo": ("sft", "reward")}
ORDER = ("sft", "reward", "ppo")
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
        raise PlanError(f"spec.accelerator: nvidia needs CUDA GPUs, and none is visible here "
                        f"(CUDA_VISIBLE_DEVICES / nvidia-smi); stage {stage} cannot run")
    if shape.processes > len(machine.gpus):
        raise PlanError(
            f"spec.stages.{stage}: {shape.nodes} node(s) x {shape.devices_per_node} device(s) = "
            f"{shape.processes} GPUs, but {len(machine.gpus)} are visible here")


def make_plan(shapes: dict[str, StageShape], accelerator: str, machine: Machine, stages: Iterable[str],
              *, sequential: bool = False) -> Plan:
    """Lay out ``stages`` (a subset of sft, reward, ppo) on ``machine`` following the module's rule."""
    todo = [s for s in ORDER if s in set(stages)]
    cores = max(1, machine.cpus)
    if accelerator == "nvidia":
        for stage in todo:
            _check_gpus(stage, shapes[stage], machine)

    def alone(stage: str) -> StagePlan:
        shape = shapes[stage]
        devices = machine.gpus[: shape.processes] if accelerator == "nvidia" else ()
        return StagePlan(stage, shape.processes, threads_for(shape, cores), devices)

    waves: list[tuple[StagePlan, ...]] = []
    note = ""
    first = [s for s in todo if s in ("sft", "reward")]
    if len(first) == 2:
        sft, rm = shapes["sft"], shapes["reward"]
        pair: tuple[StagePlan, ...] | None = None
        if sequential:
            note = "sft, then reward (--sequential)"
        elif accelerator == "cpu":
            a, b = alone("sft"), alone("reward")
            if a.cores + b.cores <= cores:
                pair = (a, b)
                note = f"sft and reward side by side ({a.cores} + {b.cores} of {cores} cores)"
            else:
                note = (f"sft, then reward: {a.cores} + {b.cores} cores do not fit in {cores} "
                        "(set spec.stages.*.resources.cpu to share the machine)")
        elif accelerator == "nvidia":
            n_sft, n_rm = sft.processes, rm.processes
            if n_sft + n_rm <= len(machine.gpus):
                share = cores * n_sft // (n_sft + n_rm)
                pair = (StagePlan("sft", n_sft, threads_for(sft, share), machine.gpus[:n_sft]),
                        StagePlan("reward", n_rm, threads_for(rm, cores - share),
                                  machine.gpus[n_sft:n_sft + n_rm]))
                note = f"sft and reward side by side ({n_sft} + {n_rm} of {len(machine.gpus)} GPUs)"
            else:
                note = f"sft, then reward: {n_sft} + {n_rm} GPUs do not fit in {len(machine.gpus)}"
        else:
            note = f"sft, then reward (accelerator {accelerator}: devices are not split between stages)"
        waves += [pair] if pair else [(alone("sft"),), (alone("reward"),)]
    elif first:
        waves.append((alone(first[0]),))
    if "ppo" in todo:
        waves.append((alone("ppo"),))
        note = f"{note}; then ppo" if note else "ppo"
    return Plan(tuple(waves), note or ", ".join(todo))


def shapes_of(run) -> dict[str, StageShape]:
    """Each stage's shape from an RLHFRun's ``spec.stages``."""
    out = {}
    for stage in ORDER:
        spec = run.spec.stages.get(stage)
        cpu = spec.resources.cpu
        out[stage] = StageShape(spec.nodes, spec.devices_per_node, None if cpu is None else cpu_cores(cpu))
    return out
