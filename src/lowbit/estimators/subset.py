"""Comparisons on a random subset of coordinates, with their sampling error.

When CDG measures only m of a layer's n coordinates (a uniform sample S drawn
without replacement), the comparison with another direction b is estimated
from S:

    inner product   T = Σ_i a_i b_i,     T̂ = (n/m) Σ_{i∈S} a_i b_i           (unbiased)
                    Var(T̂) = n² (1 − m/n) s²_x / m,   x_i = a_i b_i
    cosine          R = T / (‖a‖ ‖b‖),   R̂ = Σ_S a_i b_i / sqrt(Σ_S a_i² Σ_S b_i²)

R̂ is the ratio of three unbiased totals (consistent, with a bias of order
1/m); its standard error is the delta-method one: with A, B, C the subset
means of x_i, y_i = a_i², v_i = b_i²,

    u_i = (x_i − A)/sqrt(BC) − R̂ (y_i − B)/(2B) − R̂ (v_i − C)/(2C),
    SE(R̂) ≈ sqrt((1 − m/n) s²_u / m).

Cochran, "Sampling Techniques", 3rd ed., §2.8 (finite population correction)
and §6.4 (ratio estimators).
"""

from __future__ import annotations

import math
from typing import Mapping, Tuple

import torch


def _gather(values: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([values[k].detach().double().reshape(-1)[mask[k].reshape(-1)] for k in mask])


def _total(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(m.numel() for m in mask.values())


def subset_inner(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> Tuple[float, float]:
    """(T̂, SE(T̂)): the unbiased estimate of Σ_i a_i b_i over all coordinates from the masked ones."""
    x = _gather(a, mask) * _gather(b, mask)
    n, m = _total(mask), x.numel()
    if m == 0:
        raise ValueError("the subset mask selects no coordinates")
    estimate = n / m * float(x.sum())
    variance = n * n * (1 - m / n) * (float(x.var()) if m > 1 else float("nan")) / m
    return estimate, math.sqrt(variance) if variance == variance else float("nan")


def subset_cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> Tuple[float, float]:
    """(R̂, SE(R̂)): the cosine of a and b on the masked coordinates and its delta-method standard error."""
    av, bv = _gather(a, mask), _gather(b, mask)
    n, m = _total(mask), av.numel()
    if m == 0:
        raise ValueError("the subset mask selects no coordinates")
    x, y, v = av * bv, av * av, bv * bv
    A, B, C = float(x.mean()), float(y.mean()), float(v.mean())
    if B == 0 or C == 0:
        return float("nan"), float("nan")
    root = math.sqrt(B * C)
    r = A / root
    if m < 2:
        return r, float("nan")
    u = (x - A) / root - r * (y - B) / (2 * B) - r * (v - C) / (2 * C)
    return r, math.sqrt(max(0.0, (1 - m / n) * float(u.var()) / m))


__all__ = ["subset_cosine", "subset_inner"]
