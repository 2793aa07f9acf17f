"""Estimators for binary weights: exact single flips, REINFORCE over flip probabilities, Bop's flip rule.

A binary weight b_i = sign(w_i) of a latent float weight w_i changes only by a
flip, w_i → −w_i (for XNOR weights α sign(w) with α = mean|w| over a channel,
the scale is unchanged by a flip since |−w_i| = |w_i|). The loss change of the
flip of coordinate i alone is

    ΔL_i = L(w − 2 w_i e_i) − L(w),

and these estimators report directions in the units of a latent gradient, so
that the probe compares them with the STE (cosines, line searches) as it does
CDG: the secant slope along the flip move Δw_i = −2w_i,

    ĝ_i = ΔL_i / (−2 w_i),

so that a step w − lr·ĝ moves the weights whose flip lowers the loss towards
their flip (ĝ_i has the sign of w_i when ΔL_i < 0). A coordinate with w_i = 0
has no flip (sign(0) = +1 = sign(−0)): ĝ_i = 0 there.

- ``flip_cdg``: ΔL_i exactly, for every coordinate (or a random subset of
  ``coords``), from ``objective.flip_deltas()`` where the objective has one
  (the binary-weight toy: all flips from the toy's CDG fast pass), else from
  ``coordinate_deltas`` with the per-coordinate step −2w_i (one loss
  evaluation per coordinate; on a network a :class:`GraphObjective` prunes
  members whose flip changes no activation).
- ``bernoulli_nes``: a search distribution over flips, each coordinate
  flipped independently with probability p (members w ⊙ (1 − 2m), m_i ~
  Bernoulli(p)); REINFORCE with the score of a Bernoulli,
  ∂/∂p_i log P(m) = (m_i − p) / (p(1 − p)), estimates
  D_i = ∂E_p[L]/∂p_i = E[L | m_i = 1] − E[L | m_i = 0]:

      D̂_i = Σ_k u_k (m_ki − p) / (p(1 − p)),   u_k = (L_k − L̄)/(N − 1)

  (unbiased: the mean baseline costs one member), or with ``shaping`` the
  rank-based weights of :func:`lowbit.estimators.nes.fitness_weights` (sign
  flipped: they are computed for fitness −L). As p → 0, D_i → ΔL_i: flip CDG
  is its limit; ĝ_i = D̂_i / (−2w_i). In the logit parameterisation
  θ = logit p of the notes' "logit NES", ∂E/∂θ_i = p(1 − p) D_i: the same
  direction. Williams, "Simple Statistical Gradient-Following Algorithms for
  Connectionist Reinforcement Learning", Machine Learning 1992.
- ``bop``: the flip rule of Bop (Helwegen et al., "Latent Weights Do Not
  Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019)
  as one step from zero momentum: m = γ g with g the STE gradient of the
  latent weights; flip every i with |m_i| > τ and sign(m_i) = sign(w_i).
  Returned as a displacement (``returns_displacement``): ĝ = 2w ⊙ 1{flip},
  so w − 1·ĝ is the flipped point. Deviation: Bop's g is ∂L/∂b of ±1
  weights; here it is the STE gradient of the latent weights (for XNOR
  weights α ∂L/∂b plus the gradient through α).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_choice,
    check_int,
    check_positive,
    register_estimator,
    validated,
)
from lowbit.estimators.budget import flatten, unflatten
from lowbit.estimators.nes import SHAPINGS, fitness_weights
from lowbit.estimators.objective import (
    GENERIC_CHUNK_NUMBERS,
    SurrogateSpec,
    _split_rows,
    resolve_surrogate,
    subset_coordinate_deltas,
)
from lowbit.estimators.ste import ste_gradient


def flip_steps(params: Params) -> Dict[str, torch.Tensor]:
    """The per-coordinate step that negates every weight: −2w (0 where w = 0, which has no flip)."""
    return {name: torch.where(w == 0, 0.0, -2.0 * w.detach().double()) for name, w in params.items()}


def flip_deltas(objective: Any, params: Optional[Params] = None) -> Params:
    """ΔL_i of negating each studied weight, name -> tensor of its shape (float64)."""
    method = getattr(objective, "flip_deltas", None)
    if method is not None:
        return method(params)
    from lowbit.estimators.cdg import coordinate_deltas

    point = objective.with_params(params)
    return {name: d[0] for name, d in coordinate_deltas(objective, [flip_steps(point)], params).items()}


def flip_slope(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ĝ = ΔL / (−2w), 0 where w = 0 (float64)."""
    w = weights.detach().double()
    return torch.where(w == 0, 0.0, deltas / torch.where(w == 0, 1.0, -2.0 * w))


@register_estimator("flip_cdg")
class FlipCDG(GradientEstimator):
    """ĝ_i = [L(w − 2w_i e_i) − L(w)] / (−2w_i): exact single flips (module docstring).

    Args:
        coords: measure only this many coordinates, a uniform random subset
            (None: all); ĝ is 0 elsewhere and ``last_subset`` is the mask.
        subset_seed: draw that subset from this seed (as ``cdg``'s), so that
            CDG and flip CDG can measure the same coordinates.

    ``last_deltas`` holds the raw ΔL of the measured flips (name -> tensor, NaN
    where not measured). Deterministic without ``coords``.
    """

    param_names = ("coords", "subset_seed")

    def __init__(self, coords: Optional[int] = None, subset_seed: Optional[int] = None) -> None:
        v = validated({
            "coords": lambda: None if coords is None else check_int("coords", coords),
            "subset_seed": lambda: None if subset_seed is None else check_int("subset_seed", subset_seed, 0),
        })
        self.coords, self.subset_seed = v["coords"], v["subset_seed"]
        self.last_subset: Optional[Dict[str, torch.Tensor]] = None
        self.last_deltas: Optional[Dict[str, torch.Tensor]] = None

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        like = objective.params
        total = objective.numel()
        if self.coords is None or self.coords >= total:
            self.last_subset = None
            deltas = flip_deltas(objective)
            self.last_deltas = deltas
            return {k: flip_slope(deltas[k], like[k]).to(like[k].dtype) for k in like}
        from lowbit.estimators.cdg import random_subset

        chosen = random_subset(total, self.coords, generator, self.subset_seed)
        measured = subset_coordinate_deltas(objective, [flip_steps(like)], chosen)[0]  # (m,)
        flat = torch.full((total,), float("nan"), dtype=torch.float64)
        flat[chosen] = measured
        self.last_deltas = unflatten(flat, like)
        mask = torch.zeros(total, dtype=torch.bool)
        mask[chosen] = True
        self.last_subset = {k: v.bool() for k, v in unflatten(mask.double(), like).items()}
        return {
            k: flip_slope(torch.nan_to_num(self.last_deltas[k], nan=0.0), like[k]).to(like[k].dtype) for k in like
        }


@register_estimator("bernoulli_nes")
class BernoulliNES(GradientEstimator):
    """ĝ_i = D̂_i / (−2w_i), D̂ the REINFORCE estimate of ∂E_p[L]/∂p_i over independent flips (module docstring).

    Args:
        population: N >= 2 members, each flipping every coordinate with probability p.
        flip_prob: p in (0, 1).
        shaping: ``"none"`` (mean baseline, unbiased), ``"centered_ranks"`` or ``"nes_utilities"``.
        chunk: members per ``objective.losses`` call (default: by size).
    """

    param_names = ("population", "flip_prob", "shaping", "chunk")

    def __init__(self, population: int = 1000, flip_prob: float = 0.01, shaping: str = "none", chunk: Optional[int] = None) -> None:
        values = validated({
            "population": lambda: check_int("population", population, 2),
            "flip_prob": lambda: check_positive("flip_prob", flip_prob),
            "shaping": lambda: check_choice("shaping", shaping, SHAPINGS),
            "chunk": lambda: None if chunk is None else check_int("chunk", chunk, 1),
        })
        if not values["flip_prob"] < 1:
            raise ValueError(f"flip_prob must be in (0, 1), got {flip_prob!r}")
        for key, value in values.items():
            setattr(self, key, value)

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        like = objective.params
        w = flatten({k: v.detach() for k, v in like.items()})  # (P,)
        n, p = self.population, self.flip_prob
        flips = torch.rand(n, w.numel(), generator=generator, dtype=torch.float64) < p  # (N, P): m_ki
        losses = torch.empty(n, dtype=torch.float64)
        chunk = self.chunk or max(1, GENERIC_CHUNK_NUMBERS // max(1, w.numel()))
        for start in range(0, n, chunk):
            m = flips[start : start + chunk]
            members = torch.where(m, -w, w)  # (c, P): w ⊙ (1 − 2m)
            stacked = {k: v.reshape(len(m), *like[k].shape) for k, v in _split_rows(members, like).items()}
            losses[start : start + len(m)] = objective.losses(stacked).double()
        u, _ = fitness_weights(-losses, self.shaping, antithetic=False)  # for fitness −L
        score = (flips.double() - p) / (p * (1.0 - p))  # (N, P)
        d_hat = -(u @ score)  # (P,): Σ_k (L_k − L̄)/(N − 1) · score_k with shaping "none"
        return {k: flip_slope(v, like[k]).to(like[k].dtype) for k, v in unflatten(d_hat, like).items()}


@register_estimator("bop")
class BopFlips(GradientEstimator):
    """Bop's flip rule as one step: flip i iff |γ g_i| > τ and sign(g_i) = sign(w_i); ĝ = 2w ⊙ 1{flip}.

    Args:
        gamma: γ > 0, Bop's adaptivity rate (the momentum after one step from 0 is γ g); paper default 1e-4.
        threshold: τ > 0; paper default 1e-8. Only γ/τ matters here: flip iff |g_i| > τ/γ.
        surrogate: the STE's surrogate for sign activations (as ``ste``); ``**surrogate_params``.

    ``last_flips`` is the boolean flip mask. Deterministic.
    """

    param_names = ("gamma", "threshold", "surrogate")
    returns_displacement = True

    def __init__(self, gamma: float = 1e-4, threshold: float = 1e-8, surrogate: SurrogateSpec = "ste", **surrogate_params: Any) -> None:
        v = validated(
            {
                "gamma": lambda: check_positive("gamma", gamma),
                "threshold": lambda: check_positive("threshold", threshold),
                "surrogate": lambda: resolve_surrogate(surrogate, **surrogate_params),
            }
        )
        self.gamma, self.threshold, self._surrogate = v["gamma"], v["threshold"], v["surrogate"]
        self.surrogate = surrogate
        self.surrogate_params: Dict[str, Any] = dict(surrogate_params)
        self.last_flips: Optional[Dict[str, torch.Tensor]] = None

    def config(self) -> Dict[str, Any]:
        return {**super().config(), **self.surrogate_params}

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        grad = ste_gradient(objective, self._surrogate)
        out, self.last_flips = {}, {}
        for name, w in objective.params.items():
            m = self.gamma * grad[name].double()
            flip = (m.abs() > self.threshold) & (torch.sign(m) == torch.where(w >= 0, 1.0, -1.0).double())
            self.last_flips[name] = flip
            out[name] = torch.where(flip, 2.0 * w.detach(), torch.zeros_like(w))
        return out


__all__ = ["BernoulliNES", "BopFlips", "FlipCDG", "flip_deltas", "flip_slope", "flip_steps"]
