"""Loss curves of iterative methods under one budget of loss evaluations.

The notes' "NES applied to a naive MLP" asks whether an iterative NES (μ and σ
updated by natural gradients) trains the toy as well as STE-SGD or multi-step
STE; the fair comparison gives every method the same number of loss
evaluations. From a unit's weights w_0 (the probe's batch, the studied
layers), each method of ``trajectory.methods`` repeats its step until it has
used ``trajectory.evaluations`` loss evaluations, counted by
:class:`lowbit.estimators.CountingObjective`:

- a gradient estimator (``ste``, ``nes``, ``cdg``, ``flip_cdg``, ...) steps
  w ← w − lr·ĝ with SGD (or ``optimizer: sgdm | adam``, the update rules of
  ``lowbit.estimators.multistep.Optimizer``), ĝ unit-normalised first with
  ``normalize: true``;
- a displacement estimator (``multistep_ste``, ``dg``, ``bop``, ``snes`` with
  ``iterations``) moves to the point it chose, w ← w − ĝ, and starts again
  from there;
- ``snes`` is iterated as one search: each step is one generation of the
  same μ and σ (``lowbit.estimators.snes.SNESSearch``); its curve is the loss
  at μ, and at the end the loss at a sample of the final distribution is
  recorded too (the notes' Q1).

Every method is charged what it asked for: an STE step is 1 evaluation (plus
its backward pass, about two more forwards' worth of compute, not counted),
multi-step STE with K steps K, NES N, SNES N per generation, CDG 2P + 1,
flip CDG P + 1. A method's last step may end past the budget by less than
one step. The curve records L(w) on the probe batch (the objective being
minimised) at ``points`` evenly spaced evaluation counts, and the loss on a
held-out batch of the same teacher (probe batch ``probe.batches + batch``,
never one the grid measures) at the same points; both evaluations are free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from lowbit.estimators import CountingObjective, get_estimator
from lowbit.estimators.multistep import OPTIMIZERS, make_optimizer
from lowbit.probe.config import TrajectoryConfig, expand_estimators
from lowbit.probe.measure import normalize_direction

METHOD_KEYS = ("lr", "optimizer", "normalize")  # how a method applies its estimate; the rest is the estimator's


@dataclass(frozen=True)
class MethodSpec:
    label: str
    name: str
    params: Dict[str, Any]  # the estimator's
    lr: Optional[float]
    optimizer: str
    normalize: bool


def expand_methods(entries: Sequence[Dict[str, Any]]) -> List[MethodSpec]:
    """``trajectory.methods`` as specs (list values expand as for ``estimators``); ValueError listing every problem."""
    import inspect

    from lowbit.estimators import ESTIMATORS

    specs, errors = [], []
    for spec in expand_estimators(list(entries)):
        params = dict(spec.params)
        try:
            signature = inspect.signature(ESTIMATORS.get(spec.name)).parameters
        except (KeyError, ValueError) as error:
            errors.append(f"trajectory method {spec.label!r}: {error}")
            continue
        named = {k for k, p in signature.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        # A key the estimator takes itself (multistep_ste's lr and optimizer) stays the estimator's.
        own = {key: params.pop(key) for key in METHOD_KEYS if key in params and key not in named}
        lr, optimizer, normalize = own.get("lr"), own.get("optimizer", "sgd"), own.get("normalize", False)
        try:
            estimator = get_estimator(spec.name, **params)
        except (ValueError, TypeError, KeyError) as error:
            errors.append(f"trajectory method {spec.label!r}: {error}")
            continue
        displacement = getattr(estimator, "returns_displacement", False)
        if not displacement and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
            errors.append(f"trajectory method {spec.label!r}: a gradient estimator needs a step size lr > 0, got {lr!r}")
        if optimizer not in OPTIMIZERS:
            errors.append(f"trajectory method {spec.label!r}: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if not isinstance(normalize, bool):
            errors.append(f"trajectory method {spec.label!r}: normalize must be true or false, got {normalize!r}")
        specs.append(MethodSpec(spec.label, spec.name, params, None if lr is None else float(lr), optimizer, normalize))
    if errors:
        raise ValueError("; ".join(errors))
    return specs


class _Iterate:
    """One method's state: its current weights, and what it needs between steps."""

    def __init__(self, spec: MethodSpec, start: Dict[str, torch.Tensor]) -> None:
        self.spec = spec
        self.estimator = get_estimator(spec.name, **spec.params)
        self.weights = {k: v.detach().clone() for k, v in start.items()}
        self.search = self.estimator.start(self.weights) if spec.name == "snes" else None
        self.optimizer = make_optimizer(spec.optimizer, spec.lr) if spec.lr is not None else None

    def step(self, objective: CountingObjective, generator: torch.Generator) -> None:
        if self.search is not None:  # one generation of the one SNES search
            self.search.step(objective, generator)
            self.weights = self.search.mean()
            return
        g = self.estimator.estimate(objective.at(self.weights), generator)
        if getattr(self.estimator, "returns_displacement", False):
            scale = self.spec.lr if self.spec.lr is not None else 1.0
            self.weights = {k: w - scale * g[k] for k, w in self.weights.items()}
            return
        if self.spec.normalize:
            g = normalize_direction(g, "global")
        self.optimizer.step(list(self.weights.values()), [g[k] for k in self.weights])


def _loss_at(objective: Any, weights: Dict[str, torch.Tensor]) -> float:
    return float(objective.losses({k: v.unsqueeze(0) for k, v in weights.items()})[0])


def trajectory_records(
    config: TrajectoryConfig,
    objective: Any,
    heldout: Optional[Any],
    base_row: Dict[str, Any],
    seed_of: Any,
) -> List[Dict[str, Any]]:
    """The curves of every method from ``objective``'s weights (module docstring), as records.

    ``seed_of(label)`` gives each method's generator seed; ``heldout`` is the same
    task on another batch (None: not recorded).
    """
    rows: List[Dict[str, Any]] = []
    marks = torch.linspace(0, config.evaluations, config.points + 1).round().long().tolist()
    for spec in expand_methods(config.methods):
        counter = CountingObjective(objective)
        method = _Iterate(spec, objective.params)
        generator = torch.Generator().manual_seed(seed_of(spec.label))
        row = {**base_row, "estimator": spec.label, "layer": "all"}

        def record(evaluations: int) -> None:
            rows.append({**row, "metric": "trajectory_loss", "evaluations": evaluations, "value": _loss_at(objective, method.weights)})
            if heldout is not None:
                rows.append({**row, "metric": "trajectory_heldout", "evaluations": evaluations,
                             "value": _loss_at(heldout, method.weights)})

        record(0)
        start, steps, following = time.perf_counter(), 0, 1
        while counter.evaluations < config.evaluations:
            before = counter.evaluations
            method.step(counter, generator)
            steps += 1
            if counter.evaluations == before:
                raise ValueError(f"trajectory method {spec.label!r} used no loss evaluation in a step; it cannot be budgeted")
            if following < len(marks) and counter.evaluations >= marks[following]:
                record(counter.evaluations)
                while following < len(marks) and counter.evaluations >= marks[following]:
                    following += 1
        seconds = time.perf_counter() - start
        final = _loss_at(objective, method.weights)
        rows += [
            {**row, "metric": "trajectory_final_loss", "evaluations": counter.evaluations, "value": final},
            {**row, "metric": "trajectory_steps", "value": steps},
            {**row, "metric": "trajectory_seconds", "value": seconds},
        ]
        if heldout is not None:
            rows.append({**row, "metric": "trajectory_final_heldout", "evaluations": counter.evaluations,
                         "value": _loss_at(heldout, method.weights)})
        if method.search is not None:
            sample = method.search.sample(generator)
            rows += [
                {**row, "metric": "trajectory_final_sample_loss", "value": _loss_at(objective, sample)},
                {**row, "metric": "trajectory_final_sigma", "value": float(method.search.sigma.mean())},
            ]
    return rows


def time_trajectories(config: TrajectoryConfig, objective: Any) -> Any:
    """(seconds, number of methods): every method's budget at the time and cost of one step, timed here."""
    total, specs = 0.0, expand_methods(config.methods)
    for spec in specs:
        counter = CountingObjective(objective)
        method = _Iterate(spec, objective.params)
        start = time.perf_counter()
        method.step(counter, torch.Generator().manual_seed(0))
        per_step = time.perf_counter() - start
        total += per_step * math.ceil(config.evaluations / max(1, counter.evaluations))
    return total, len(specs)


__all__ = ["METHOD_KEYS", "MethodSpec", "expand_methods", "time_trajectories", "trajectory_records"]
