"""Discrete greedy search (DG): move the best coordinates by ±step until the budget is spent.

One step from the point w_t (research notes 2021-06-16, "单步DG"):

1. score every studied coordinate i by the best loss change of a move of ±step,
   c_i = min(L(w_t + step e_i), L(w_t − step e_i)) − L(w_t), and remember the sign;
2. sort the coordinates by c_i, best (most negative) first, keep the improving
   ones (c_i < 0);
3. move them by ±step in that order while the step's budget allows: with a
   per-step budget b, at most ⌊(b/step)²⌋ coordinates under l2, ⌊b/step⌋ under
   l1, and every improving coordinate under linf (each moves by step <= b).

Multi-step DG (``steps`` = K > 1, "多步DG") splits the budget evenly, b = budget/K,
and repeats 1–3 K times, each time scoring from the moved point, so a coordinate
moved before is scored from its moved value. By the triangle inequality the
total displacement stays within ``budget`` in every norm.

It is a greedy coordinate search (a budgeted, discrete relative of
Gauss–Southwell coordinate descent: pick the coordinates with the best
improvement; Nutini et al., "Coordinate Descent Converges Faster with the
Gauss-Southwell Rule Than Random Selection", ICML 2015), proposed in the notes
as an upper reference for what a step of the given budget can achieve.

The scores come from ``objective.coordinate_deltas`` (exact fast paths on the
toy task). Returns ĝ = −Δw: w − 1·ĝ is the point DG chose. Ties in the scores
are broken by coordinate order (stable sort); the generator is not used.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_int,
    check_positive,
    raise_collected,
    register_estimator,
)
from lowbit.estimators.budget import check_norm, flatten, unflatten
from lowbit.estimators.cdg import coordinate_deltas


def max_moves(budget: float, step: float, norm: str, available: int) -> int:
    """How many coordinates can move by ``step`` within ``budget`` in ``norm`` (at most ``available``)."""
    if norm == "linf":
        return available if step <= budget else 0
    ratio = budget / step
    k = math.floor(ratio * ratio if norm == "l2" else ratio)
    # Guard against float rounding in the ratio: the chosen moves must fit exactly.
    while k > 0 and (step * math.sqrt(k) if norm == "l2" else step * k) > budget:
        k -= 1
    return min(k, available)


@register_estimator("dg")
class DG(GradientEstimator):
    """Greedy coordinate moves of ±step within a budget; ĝ = −Δw (see the module docstring).

    Args:
        step: the size of one coordinate move (> 0, at most budget/steps).
        budget: the radius of the budget ball (> 0); the notes use 0.1.
        steps: K >= 1 rounds, each with budget/K.
        norm: ``"l2"``, ``"l1"`` or ``"linf"``.
    """

    param_names = ("step", "budget", "steps", "norm")
    returns_displacement = True

    def __init__(self, step: float = 0.01, budget: float = 0.1, steps: int = 1, norm: str = "l2") -> None:
        errors = []
        for key, check in {
            "step": lambda: check_positive("step", step),
            "budget": lambda: check_positive("budget", budget),
            "steps": lambda: check_int("steps", steps, 1),
            "norm": lambda: check_norm(norm),
        }.items():
            try:
                setattr(self, key, check())
            except ValueError as error:
                errors.append(str(error))
        if not errors and self.step > self.budget / self.steps:
            errors.append(
                f"step must be <= budget/steps = {self.budget / self.steps:g} (no move would fit), "
                f"got step={step}, budget={budget}, steps={steps}"
            )
        raise_collected(errors)

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        w = {k: v.detach() for k, v in objective.params.items()}
        w_flat = flatten(w)
        displacement = torch.zeros_like(w_flat)  # (P,)
        per_step = self.budget / self.steps
        for _ in range(self.steps):
            point = unflatten(w_flat + displacement, w)
            deltas = coordinate_deltas(objective, (self.step, -self.step), point)
            stacked = torch.cat([d.reshape(2, -1) for d in deltas.values()], dim=1)  # (2, P) float64
            score, which = stacked.min(dim=0)  # best change and its sign (0: +step, 1: -step)
            order = torch.sort(score, stable=True).indices
            improving = int((score < 0).sum())
            chosen = order[: max_moves(per_step, self.step, self.norm, improving)]
            move = torch.where(which[chosen] == 0, self.step, -self.step).to(displacement.dtype)
            displacement[chosen] += move
        return {k: -v for k, v in unflatten(displacement, w).items()}


__all__ = ["DG", "max_moves"]
