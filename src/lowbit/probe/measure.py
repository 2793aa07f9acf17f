"""Measurements of a gradient estimate ĝ on an Objective.

Every estimator returns ĝ with the contract "the step this method would take is
w − lr·ĝ" (displacement methods return ĝ = −Δw, so lr = 1 is their chosen point).

- loss decrease along ĝ:  ΔL(lr) = L(w) − L(w − lr·n(ĝ)), n(ĝ) = ĝ/‖ĝ‖ ("global"),
  per-layer ĝ_l/‖ĝ_l‖ ("per_layer") or ĝ ("none");
- cosine with a reference r (CDG): ⟨ĝ, r⟩ / (‖ĝ‖‖r‖), overall and per layer;
- normalised difference of two methods' best losses: (L_a − L_b) / L_a;
- the line search itself (:func:`line_search`): ΔL on an lr grid, the best lr
  and whether it sits on an edge of the grid; with ``auto`` the grid is
  widened by a decade at a time beyond the edge the best lr sits on, until the
  curve turns (the best lr is interior), then refined between the best lr's
  two neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Literal, Mapping, Optional

import torch

Params = Mapping[str, torch.Tensor]

NORM_ORDERS = {"l2": 2.0, "l1": 1.0, "linf": math.inf}


def flatten(params: Params) -> torch.Tensor:
    """All tensors of a parameter dict as one float64 vector (in key order)."""
    return torch.cat([p.detach().reshape(-1).double() for p in params.values()])


def vector_norm(params: Params, norm: str = "l2") -> float:
    return float(torch.linalg.vector_norm(flatten(params), ord=NORM_ORDERS[norm]))


def normalize_direction(
    direction: Params, mode: Literal["global", "per_layer", "none"] = "global", norm: str = "l2"
) -> Dict[str, torch.Tensor]:
    """Scale ĝ to unit norm overall (``global``), per tensor (``per_layer``) or not at all.

    A zero direction stays zero (no step), rather than becoming NaN.
    """
    if mode == "none":
        return {k: v.detach().clone() for k, v in direction.items()}
    order = NORM_ORDERS[norm]
    if mode == "global":
        total = float(torch.linalg.vector_norm(flatten(direction), ord=order))
        scale = 1.0 / total if total > 0 else 0.0
        return {k: v.detach() * scale for k, v in direction.items()}
    if mode == "per_layer":
        out = {}
        for k, v in direction.items():
            n = float(torch.linalg.vector_norm(v.detach().double(), ord=order))
            out[k] = v.detach() * (1.0 / n if n > 0 else 0.0)
        return out
    raise ValueError(f"normalize must be 'global', 'per_layer' or 'none', got {mode!r}")


def cosine(a: Params, b: Params) -> float:
    """cos(a, b) over all tensors jointly; NaN when either is the zero vector."""
    return _cos(flatten(a), flatten(b))


def cosine_per_layer(a: Params, b: Params) -> Dict[str, float]:
    return {k: _cos(a[k].detach().reshape(-1).double(), b[k].detach().reshape(-1).double()) for k in a}


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    denominator = float(x.norm() * y.norm())
    return float(x @ y) / denominator if denominator > 0 else math.nan


def lr_grid(lo: float, hi: float, num: int, scale: str = "log") -> torch.Tensor:
    """The lrs of the line search, float64, ascending."""
    if scale == "log":
        return torch.logspace(math.log10(lo), math.log10(hi), num, dtype=torch.float64)
    return torch.linspace(lo, hi, num, dtype=torch.float64)


def loss_decrease_curve(objective, direction: Params, lrs: torch.Tensor, base_loss: Optional[float] = None):
    """ΔL(lr) = L(w) − L(w − lr·d) for every lr, via the objective's (vectorised) line search."""
    if base_loss is None:
        base_loss = float(objective.loss(objective.params))
    losses = objective.line_losses(dict(direction), lrs).double()
    return base_loss - losses


def normalized_difference(loss_a: float, loss_b: float) -> float:
    """(L_a − L_b) / L_a: positive when b reaches a lower loss than a."""
    return (loss_a - loss_b) / loss_a if loss_a != 0 else math.nan


def subsample_indices(n: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)`` (both ends kept)."""
    if n <= k:
        return torch.arange(n)
    return torch.unique(torch.linspace(0, n - 1, k).round().long())


# Limits of the automatic widening: 1e-12 is below any step that changes a float32 weight of
# order 1; 1e6 far above any useful step along a unit direction (‖w‖ of the toy is about √dim).
AUTO_LR_FLOOR = 1e-12
AUTO_LR_CEILING = 1e6
AUTO_MAX_WIDEN = 12  # decades added at most (each a line search of a few dozen points)


@dataclass
class LineSearch:
    """ΔL(lr) = L(w) − L(w − lr·d) on ascending ``lrs``; the best point and where it sits.

    ``edge``: −1 when the best lr is the grid's smallest, +1 its largest, 0 inside
    (or when no lr decreases the loss, where there is no best to bracket).
    ``widened``: decades the automatic search added.
    """

    lrs: torch.Tensor
    decrease: torch.Tensor
    widened: int = 0

    @property
    def best(self) -> int:
        return int(torch.argmax(self.decrease))

    @property
    def edge(self) -> int:
        b = self.best
        if len(self.lrs) < 2 or not float(self.decrease[b]) > 0:
            return 0
        return -1 if b == 0 else 1 if b == len(self.lrs) - 1 else 0


def line_search(
    objective,
    direction: Params,
    lrs: torch.Tensor,
    base_loss: float,
    auto: bool = False,
    floor: float = AUTO_LR_FLOOR,
    ceiling: float = AUTO_LR_CEILING,
) -> LineSearch:
    """ΔL on the grid ``lrs`` (ascending); with ``auto``, widen and refine it (module docstring).

    Widening keeps the grid's density (points per decade, at least 10) and stays
    within [``floor``, ``ceiling``] (the ceiling is the common budget's radius when
    there is one). The refinement adds ``max(20, len(lrs) // 10)`` evenly spaced
    lrs between the best lr's neighbours. All lrs are evaluated exactly by
    ``objective.line_losses``.
    """
    lrs = lrs.double()
    search = LineSearch(lrs, base_loss - objective.line_losses(dict(direction), lrs).double())
    if not auto:
        return search
    decades = max(math.log10(float(lrs[-1]) / float(lrs[0])), 1.0) if float(lrs[0]) > 0 else 1.0
    per_decade = max(10, math.ceil(len(lrs) / decades))

    def add(new: torch.Tensor) -> None:
        new = new[(new > 0) & torch.isfinite(new)]
        if len(new) == 0:
            return
        values = base_loss - objective.line_losses(dict(direction), new).double()
        merged = torch.cat([search.lrs, new])
        order = torch.argsort(merged, stable=True)
        search.lrs, search.decrease = merged[order], torch.cat([search.decrease, values])[order]

    for _ in range(AUTO_MAX_WIDEN):
        edge = search.edge
        if edge == 1 and float(search.lrs[-1]) < ceiling:
            top = float(search.lrs[-1])
            add(torch.logspace(math.log10(top), math.log10(min(10 * top, ceiling)), per_decade + 1, dtype=torch.float64)[1:])
        elif edge == -1 and float(search.lrs[0]) > floor:
            bottom = float(search.lrs[0])
            add(torch.logspace(math.log10(max(bottom / 10, floor)), math.log10(bottom), per_decade + 1, dtype=torch.float64)[:-1])
        else:
            break
        search.widened += 1
    b = search.best
    if 0 < b < len(search.lrs) - 1 and float(search.decrease[b]) > 0:
        lo, hi = float(search.lrs[b - 1]), float(search.lrs[b + 1])
        add(torch.linspace(lo, hi, max(20, len(lrs) // 10) + 2, dtype=torch.float64)[1:-1])
    return search
