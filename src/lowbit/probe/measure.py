"""Measurements of a gradient estimate ĝ on an Objective.

Every estimator returns ĝ with the contract "the step this method would take is
w − lr·ĝ" (displacement methods return ĝ = −Δw, so lr = 1 is their chosen point).

- loss decrease along ĝ:  ΔL(lr) = L(w) − L(w − lr·n(ĝ)), n(ĝ) = ĝ/‖ĝ‖ ("global"),
  per-layer ĝ_l/‖ĝ_l‖ ("per_layer") or ĝ ("none");
- cosine with a reference r (CDG): ⟨ĝ, r⟩ / (‖ĝ‖‖r‖), overall and per layer;
- normalised difference of two methods' best losses: (L_a − L_b) / L_a.
"""

from __future__ import annotations

import math
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
