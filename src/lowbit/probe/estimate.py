"""How long a probe run will take, timed on this machine before the work starts.

One unit costs its estimators plus one line search per estimator. Timed on
the first task of each position (a toy dim, a network layer):

- a line search: ``lr_grid.num + 1`` loss evaluations with every studied
  coordinate moved, each timed on a few members (``time_per_full_evaluation``);
- NES and Bernoulli NES: ``population`` such evaluations; SNES ``population × iterations``;
- network CDG and flip CDG: one single-coordinate evaluation per measured
  coordinate (two for central CDG), timed on 8 random coordinates (pruning
  makes the cost depend on ε);
- every other toy estimator (CDG with its exact fast path, STE, DG, multi-step
  STE): one call, timed directly.

- trajectories: one step of every method, timed, times the steps its budget allows.

Pretraining and the STE statistics are left out, and the estimate says so.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence

import torch

from lowbit.estimators import get_estimator
from lowbit.probe.config import EstimatorSpec, ProbeConfig
from lowbit.probe.plan import STATS, Unit, make_task, plan_units, prepare, probed_layers


@dataclass
class TimeEstimate:
    """Seconds of one unit at each position, and what the figure leaves out."""

    per_unit: Dict[Any, float] = field(default_factory=dict)
    details: Dict[Any, str] = field(default_factory=dict)
    left_out: List[str] = field(default_factory=list)
    layers: List[str] = field(default_factory=list)  # a network's probed layers (to plan a part's units)

    def seconds(self, units: Sequence[Unit]) -> float:
        """The estimated time of ``units`` (statistics units count as nothing)."""
        return sum(self.per_unit.get(u.position, 0.0) for u in units if u.position != STATS)

    def describe(self, units: Sequence[Unit]) -> str:
        """Lines for the console: per position, then the total."""
        counts: Dict[Any, int] = {}
        for unit in units:
            if unit.position != STATS:
                counts[unit.position] = counts.get(unit.position, 0) + 1
        lines = [
            f"  {_position_label(p)}: {self.details[p]}; {n} units: ~{duration(self.per_unit[p] * n)}"
            for p, n in counts.items()
        ]
        extra = f", plus {' and '.join(self.left_out)}" if self.left_out else ""
        return "\n".join(lines + [f"  total ~{duration(self.seconds(units))}{extra}"])


def estimate_time(
    config: ProbeConfig, specs: Sequence[EstimatorSpec], positions: Sequence[Any], task_for: Callable[[Any], Any]
) -> TimeEstimate:
    """Time one unit at every position; ``task_for(position)`` gives the task to time it on."""
    estimate = TimeEstimate(left_out=_left_out(config))
    line_points = config.measure.lr_grid.num + 1  # the grid and the quick-check lr
    for position in positions:
        task = task_for(position)
        if config.network is not None:
            objective = task.objective(position, batch=0)
        else:
            objective = task.objective(layers=config.probe.layers, batch=0)
        full = time_per_full_evaluation(objective)
        seconds = len(specs) * line_points * full
        parts = [f"line searches {len(specs)} x {line_points} evaluations ({full * 1e3:.1f} ms each)"]
        for index, spec in enumerate(specs):
            members = population_evaluations(spec, objective.numel())
            if members is not None:
                seconds += members * full
            elif config.network is not None:
                if spec.name in ("cdg", "flip_cdg"):
                    estimator = get_estimator(spec.name, **spec.params)
                    if spec.name == "cdg":
                        step: Any = estimator.steps_for(objective.params)
                        moves = 2 if estimator.central else 1
                    else:
                        from lowbit.estimators.flips import flip_steps

                        step, moves = flip_steps(objective.params), 1
                    per = time_per_evaluation(objective, step)
                    coords = min(objective.numel(), spec.params.get("coords") or objective.numel())
                    seconds += coords * moves * per
                    parts.append(f"{spec.label}: {coords} of {objective.numel()} coordinates at {per * 1e3:.1f} ms")
            else:
                seconds += time_estimator(spec, objective, index)
        if config.trajectory.evaluations:
            from lowbit.probe.trajectory import time_trajectories

            spent, methods = time_trajectories(config.trajectory, objective)
            seconds += spent
            parts.append(f"trajectories {methods} x {config.trajectory.evaluations} evaluations (~{duration(spent)})")
        estimate.per_unit[position] = seconds
        estimate.details[position] = ", ".join(parts)
    return estimate


def estimate_run(config: ProbeConfig) -> TimeEstimate:
    """The estimate of a whole run of ``config``, on tasks built for timing only.

    Toy tasks are built per dim at the full batch size without pretraining; a
    network task is built once, without pretraining (its weights barely change
    the cost; pruning in CDG makes it depend a little on them).
    """
    specs = prepare(config)
    layers = probed_layers(config)
    units = plan_units(config, layers)
    first = units[0]
    if config.network is None:
        def task_for(dim: Any) -> Any:
            return make_task(config, dim, first.condition, first.init, pretrain=False)
    else:
        untrained = dataclasses.replace(config.network, **{**first.condition, "pretrain_epochs": 0})
        task = make_task(dataclasses.replace(config, network=untrained), None, {}, first.init)

        def task_for(layer: Any) -> Any:
            return task
    positions = list(dict.fromkeys(u.position for u in units if u.position != STATS))
    estimate = estimate_time(config, specs, positions, task_for)
    estimate.layers = layers
    return estimate


def population_evaluations(spec: EstimatorSpec, numel: int) -> Any:
    """Loss evaluations of a population estimator (NES, Bernoulli NES, SNES); None for the others."""
    if spec.name in ("nes", "bernoulli_nes"):
        return int(spec.params.get("population", 5000 if spec.name == "nes" else 1000))
    if spec.name == "snes":
        from lowbit.estimators.snes import default_population

        population = spec.params.get("population") or default_population(numel, spec.params.get("antithetic", True))
        return int(population) * int(spec.params.get("iterations", 10))
    return None


def _left_out(config: ProbeConfig) -> List[str]:
    if config.network is not None:
        pretraining = config.network.pretrain_epochs or any(config.probe.sweep.get("pretrain_epochs", []))
    else:
        pretraining = config.task.pretrain_steps or any(config.probe.sweep.get("pretrain_steps", []))
    return [name for name, present in (("pretraining", pretraining), ("the STE statistics", config.stats.batches)) if present]


def _position_label(position: Any) -> str:
    return position if isinstance(position, str) else f"dim {position}"


def time_estimator(spec: EstimatorSpec, objective: Any, index: int) -> float:
    """Seconds of one ``estimate`` call of ``spec`` on ``objective``."""
    estimator = get_estimator(spec.name, **spec.params)
    generator = torch.Generator().manual_seed(index)
    start = time.perf_counter()
    estimator.estimate(objective, generator=generator)
    return time.perf_counter() - start


def time_per_full_evaluation(objective: Any, members: int = 4, repeats: int = 3) -> float:
    """Seconds per loss evaluation with every studied coordinate moved (a line-search point, an NES member).

    The best of ``repeats`` timings: on a shared machine a single one can catch a pause many times its length.
    """
    generator = torch.Generator().manual_seed(0)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in objective.params.items()}
    lrs = torch.full((members,), 1e-3, dtype=torch.float64)
    objective.line_losses(direction, lrs[:1])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        objective.line_losses(direction, lrs)
        best = min(best, time.perf_counter() - start)
    return best / members


def time_per_evaluation(objective: Any, step: Any, members: int = 8) -> float:
    """Seconds per single-coordinate loss evaluation L(w + s_i·e_i), timed on ``members`` random coordinates.

    ``step``: a number or a per-parameter mapping (``Objective.coordinate_deltas``)."""
    from lowbit.estimators import subset_coordinate_deltas

    generator = torch.Generator().manual_seed(0)
    coords = torch.randperm(objective.numel(), generator=generator)[:members]
    subset_coordinate_deltas(objective, (step,), coords[:1])  # warm-up
    start = time.perf_counter()
    subset_coordinate_deltas(objective, (step,), coords)
    return (time.perf_counter() - start) / len(coords)


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
