"""Step budgets: norms of a parameter dict and exact Euclidean projection onto a norm ball.

All studied parameters are treated jointly as one vector δ (concatenated in
key order). ``project(δ, r, norm)`` returns argmin_{‖p‖ ≤ r} ‖p − δ‖₂:

- l2:   p = δ · min(1, r / ‖δ‖₂);
- linf: p = clamp(δ, −r, r) (coordinate-wise);
- l1:   p = sign(δ) · max(|δ| − θ, 0), with θ ≥ 0 the smallest value giving
  ‖p‖₁ ≤ r, found exactly by sorting |δ| (Duchi, Shalev-Shwartz, Singer &
  Chandra, "Efficient Projections onto the l1-Ball for Learning in High
  Dimensions", ICML 2008, Fig. 1): with u = |δ| sorted descending and
  ρ = max{j : u_j − (Σ_{i≤j} u_i − r)/j > 0}, θ = (Σ_{i≤ρ} u_i − r)/ρ.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import torch

NORMS: Tuple[str, ...] = ("l2", "l1", "linf")

_ORDERS = {"l2": 2.0, "l1": 1.0, "linf": math.inf}


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    return norm


def flatten(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One vector of every tensor in ``params`` (key order), in their common dtype."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Split ``vector`` back into tensors shaped like ``like`` (key order)."""
    out: Dict[str, torch.Tensor] = {}
    offset = 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = vector[offset : offset + n].reshape(ref.shape)
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {offset}")
    return out


def norm_of(params: Mapping[str, torch.Tensor], norm: str = "l2") -> float:
    """‖δ‖ of all tensors jointly, computed in float64."""
    check_norm(norm)
    return float(torch.linalg.vector_norm(flatten(params).double(), ord=_ORDERS[norm]))


def project(displacement: Mapping[str, torch.Tensor], radius: float, norm: str = "l2") -> Dict[str, torch.Tensor]:
    """The Euclidean projection of ``displacement`` onto {‖p‖_norm ≤ radius} (module docstring).

    Returns new tensors (same shapes and dtypes); a point already inside is
    returned unchanged (copied). ``radius`` must be finite and >= 0.
    """
    check_norm(norm)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < math.inf:
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    v = flatten({k: t.detach() for k, t in displacement.items()})
    return unflatten(project_vector(v, float(radius), norm), displacement)


def project_vector(v: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    """``project`` for one flat vector."""
    if norm == "linf":
        return v.clamp(-radius, radius)
    if norm == "l2":
        length = float(torch.linalg.vector_norm(v.double()))
        if length <= radius:
            return v.clone()
        return v * (radius / length)
    return _project_l1(v, radius)


def _project_l1(v: torch.Tensor, radius: float) -> torch.Tensor:
    magnitude = v.abs().double()
    if float(magnitude.sum()) <= radius:
        return v.clone()
    if radius == 0:
        return torch.zeros_like(v)
    u, _ = torch.sort(magnitude, descending=True)  # (n,)
    cumulative = torch.cumsum(u, 0)
    j = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    # ρ: the last j with u_j > (cumsum_j − r)/j; the condition holds on a prefix.
    rho = int(torch.nonzero(u * j > cumulative - radius).max()) + 1
    theta = (float(cumulative[rho - 1]) - radius) / rho
    return (torch.sign(v.double()) * (magnitude - theta).clamp_min(0.0)).to(v.dtype)


__all__ = ["NORMS", "check_norm", "flatten", "norm_of", "project", "project_vector", "unflatten"]
