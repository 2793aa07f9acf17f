"""Separable natural evolution strategies (SNES): μ and σ of a Gaussian search updated by natural gradients.

The iterative NES of the notes' "NES applied to a naive MLP": a search
distribution N(μ, diag σ²) over the studied parameters, started at μ_0 = w,
σ_0 = ``sigma``; every generation t draws s_k ~ N(0, I) (k = 1..N, antithetic
pairs ±s by default), evaluates the members z_k = μ + σ ⊙ s_k, turns their
fitness f_k = −L(z_k) into weights u_k (``shaping``, as
:func:`lowbit.estimators.nes.fitness_weights`) and moves along the natural
gradients (Fisher metric of the Gaussian; Wierstra et al. 2014, §3.3 and
Alg. 6 "SNES"; Schaul, Glasmachers & Schmidhuber, "High Dimensions and
Heavy Tails for Natural Evolution Strategies", GECCO 2011):

    ∇_μ J = Σ_k u_k s_k,              μ ← μ + η_μ · σ ⊙ ∇_μ J
    ∇_σ J = Σ_k u_k (s_k² − 1),       σ ← σ ⊙ exp(η_σ/2 · ∇_σ J)

with the paper's defaults η_μ = 1, η_σ = (3 + ln P)/(5√P), N = 4 + ⌊3 ln P⌋
(rounded up to even with antithetic pairs), shaping = ``nes_utilities``.

**The expected dynamics on a quadratic.** For L(w) = ½ Σ a_i w_i² + b·w and
``shaping="none"`` (unbiased weights), E[f(μ + σs) s_i] = −σ_i (a_i μ_i + b_i)
(Stein's lemma) and E[f (s_i² − 1)] = −a_i σ_i², so one generation moves, in
expectation,

    μ_i ← μ_i − η_μ σ_i² (a_i μ_i + b_i),      σ_i ← σ_i exp(−η_σ a_i σ_i² / 2)

(the μ step exactly in expectation, the σ step up to the O(1/N) noise inside
the exponential): μ converges to the minimiser −b/a geometrically while σ
shrinks as σ_t² ≈ 1/(1/σ_0² + η_σ a t); tests/test_snes.py checks the
generations against this recursion.

**The notes' three questions** are options: Q1 the final weights (``final``:
``"mean"`` μ, ``"sample"`` one draw from N(μ, σ²), or ``"best"`` the best
member evaluated); Q2 the fitness (``shaping="none"``: the loss itself;
``"centered_ranks"`` / ``"nes_utilities"``: a rank-shaped reward); Q3
sequential or parallel sampling is the population per update at a fixed
number of loss evaluations (N = 2: one antithetic pair per update, sequential;
large N: few updates of a big parallel population). Members of a generation
are always evaluated in parallel through ``objective.losses``.

As an estimator (``snes``) it runs ``iterations`` generations from the
current weights and returns the displacement to the final weights,
ĝ = −(w_final − w) (``returns_displacement``); :class:`SNESSearch` is the
same search one generation at a time, for loss curves over iterations
(``lowbit.probe.trajectory``). Cost: ``iterations × population`` loss
evaluations (``final="best"`` returns a member already evaluated).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_bool,
    check_choice,
    check_int,
    check_positive,
    register_estimator,
    validated,
)
from lowbit.estimators.budget import flatten, unflatten
from lowbit.estimators.nes import SHAPINGS, evaluate_members, fitness_weights

FINALS: Tuple[str, ...] = ("mean", "sample", "best")


def default_population(n_params: int, antithetic: bool = True) -> int:
    """SNES's N = 4 + ⌊3 ln P⌋, rounded up to even for antithetic pairs."""
    n = 4 + int(math.floor(3 * math.log(max(n_params, 1))))
    return n + (n % 2) if antithetic else n


def default_lr_sigma(n_params: int) -> float:
    """SNES's η_σ = (3 + ln P) / (5 √P)."""
    return (3 + math.log(max(n_params, 1))) / (5 * math.sqrt(max(n_params, 1)))


def snes_update(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    losses: torch.Tensor,
    lr_mu: float,
    lr_sigma: float,
    shaping: str,
    antithetic: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One SNES generation (module docstring): the new (μ, σ), float64 (P,) each.

    ``noise`` (M, P) are the s_k (with antithetic, the members are +s then −s);
    ``losses`` (N,) their losses, N = 2M with antithetic pairs, else M.
    """
    w_mu, w_sigma = fitness_weights(-losses.double(), shaping, antithetic)
    s = noise.double()
    half = s.shape[0]
    if antithetic:  # Σ_k u_k s_k over pairs (s, −s) = Σ_m (u_m+ − u_m−) s_m; s² is shared by a pair
        c_mu, c_sigma = w_mu[:half] - w_mu[half:], w_sigma[:half] + w_sigma[half:]
    else:
        c_mu, c_sigma = w_mu, w_sigma
    grad_mu = c_mu @ s  # (P,)
    grad_sigma = c_sigma @ (s * s - 1.0)  # (P,)
    return mu + lr_mu * sigma * grad_mu, sigma * torch.exp(0.5 * lr_sigma * grad_sigma)


class SNESSearch:
    """The state of one SNES run on an objective's studied parameters: μ, σ and what it has evaluated.

    ``step(objective, generator)`` runs one generation (N loss evaluations);
    ``mean``/``sample``/``best`` give parameter dicts; ``history`` lists each
    generation's mean population loss.
    """

    def __init__(self, estimator: "SNES", params: Params) -> None:
        self.config = estimator
        self.like = {k: v.detach() for k, v in params.items()}
        self.mu = flatten(self.like).double()  # (P,)
        self.sigma = torch.full_like(self.mu, estimator.sigma)
        p = self.mu.numel()
        self.population = estimator.population or default_population(p, estimator.antithetic)
        self.lr_sigma = estimator.lr_sigma if estimator.lr_sigma is not None else default_lr_sigma(p)
        self.generations = 0
        self.evaluations = 0
        self.history: list = []
        self.best_loss = math.inf
        self.best_point: Optional[torch.Tensor] = None

    def step(self, objective: Any, generator: Optional[torch.Generator] = None) -> None:
        c = self.config
        half = self.population // 2 if c.antithetic else self.population
        noise = torch.randn(half, self.mu.numel(), generator=generator, dtype=torch.float64)  # (M, P)
        dtype = next(iter(self.like.values())).dtype
        losses = evaluate_members(objective, self.mu.to(dtype), self.sigma.to(dtype), noise.to(dtype), c.antithetic, c.chunk)
        best = int(torch.argmin(losses))
        if float(losses[best]) < self.best_loss:
            sign = 1.0 if best < half or not c.antithetic else -1.0
            self.best_loss = float(losses[best])
            self.best_point = self.mu + sign * self.sigma * noise[best % half]
        self.mu, self.sigma = snes_update(self.mu, self.sigma, noise, losses, c.lr_mu, self.lr_sigma, c.shaping, c.antithetic)
        self.generations += 1
        self.evaluations += len(losses)
        self.history.append(float(losses.mean()))

    def mean(self) -> Params:
        return self._as_params(self.mu)

    def sample(self, generator: Optional[torch.Generator] = None) -> Params:
        noise = torch.randn(self.mu.numel(), generator=generator, dtype=torch.float64)
        return self._as_params(self.mu + self.sigma * noise)

    def best(self) -> Params:
        return self._as_params(self.best_point if self.best_point is not None else self.mu)

    def final(self, generator: Optional[torch.Generator] = None) -> Params:
        """The weights the search hands back: ``final`` of its estimator (Q1)."""
        kind = self.config.final
        return self.mean() if kind == "mean" else self.sample(generator) if kind == "sample" else self.best()

    def _as_params(self, flat: torch.Tensor) -> Params:
        return {k: v.to(self.like[k].dtype) for k, v in unflatten(flat, self.like).items()}


@register_estimator("snes")
class SNES(GradientEstimator):
    """``iterations`` SNES generations from w; ĝ = −(w_final − w) (see the module docstring).

    Args:
        population: N members per generation (None: 4 + ⌊3 ln P⌋, even with antithetic pairs).
        iterations: generations T >= 1 (cost T·N loss evaluations).
        sigma: σ_0 > 0, the initial standard deviation of every coordinate.
        lr_mu: η_μ > 0 (SNES: 1).
        lr_sigma: η_σ > 0 (None: (3 + ln P)/(5√P)).
        shaping: ``"nes_utilities"`` (SNES), ``"centered_ranks"`` or ``"none"`` (the loss itself).
        antithetic: mirrored pairs s, −s.
        final: ``"mean"`` (μ), ``"sample"`` (a draw from the final distribution) or ``"best"``.
        chunk: members per ``objective.losses`` call (default: by size).
    """

    param_names = ("population", "iterations", "sigma", "lr_mu", "lr_sigma", "shaping", "antithetic", "final", "chunk")
    returns_displacement = True

    def __init__(
        self,
        population: Optional[int] = None,
        iterations: int = 10,
        sigma: float = 0.1,
        lr_mu: float = 1.0,
        lr_sigma: Optional[float] = None,
        shaping: str = "nes_utilities",
        antithetic: bool = True,
        final: str = "mean",
        chunk: Optional[int] = None,
    ) -> None:
        values = validated({
            "population": lambda: None if population is None else check_int("population", population, 2),
            "iterations": lambda: check_int("iterations", iterations, 1),
            "sigma": lambda: check_positive("sigma", sigma),
            "lr_mu": lambda: check_positive("lr_mu", lr_mu),
            "lr_sigma": lambda: None if lr_sigma is None else check_positive("lr_sigma", lr_sigma),
            "shaping": lambda: check_choice("shaping", shaping, SHAPINGS),
            "antithetic": lambda: check_bool("antithetic", antithetic),
            "final": lambda: check_choice("final", final, FINALS),
            "chunk": lambda: None if chunk is None else check_int("chunk", chunk, 1),
        })
        if antithetic and population is not None and population % 2:
            raise ValueError(f"population must be even with antithetic=True (pairs s, -s), got {population}")
        if shaping == "none" and antithetic and population is not None and population < 4:
            raise ValueError(f"population must be >= 4 for an unbiased sigma gradient with antithetic pairs, got {population}")
        for key, value in values.items():
            setattr(self, key, value)

    def start(self, params: Params) -> SNESSearch:
        """A search at μ = ``params``, σ = ``sigma`` (no evaluation yet)."""
        return SNESSearch(self, params)

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        search = self.start(objective.params)
        for _ in range(self.iterations):
            search.step(objective, generator)
        final = search.final(generator)
        return {k: (objective.params[k].detach() - final[k]).to(objective.params[k].dtype) for k in objective.params}


__all__ = ["FINALS", "SNES", "SNESSearch", "default_lr_sigma", "default_population", "snes_update"]
