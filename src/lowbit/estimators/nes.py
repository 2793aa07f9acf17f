"""Natural evolution strategies: a search gradient from a Gaussian population.

Search distribution: separable Gaussian π = N(μ, σ²I) around the current
weights μ = w, all studied parameters sampled jointly; members
z_k = μ + σ s_k, s_k ~ N(0, I), k = 1..N (antithetic: s and −s in pairs);
fitness f_k = −L(z_k), turned into weights u_k by ``shaping``:

- ``"none"``: u_k = (f_k − f̄) / N' (mean baseline; N' = N with antithetic
  pairs, where the baseline cancels exactly, else N − 1, which keeps the
  estimate unbiased: E[Σ(f_k − f̄)s_k] = (N − 1)E[f s]);
- ``"centered_ranks"``: u_k = (rank_k / (N − 1) − 1/2) / N, rank 0 = worst
  (Salimans et al. 2017);
- ``"nes_utilities"``: u_(j) = max(0, log(N/2 + 1) − log j) / Σ_i max(0, log(N/2 + 1) − log i) − 1/N
  for the j-th best member (Wierstra et al. 2014, fitness shaping).

Search gradients of J(μ, σ) = E_π[f] (∇ log π: s/σ for μ, (s² − 1)/σ for σ):

    ∇_μ J ≈ (1/σ) Σ_k u_k s_k              natural (Fisher I/σ²):    σ Σ_k u_k s_k
    ∇_σ J ≈ (1/σ) Σ_k u_k (s_k² − 1)       natural (Fisher 2/σ²):    (σ/2) Σ_k u_k (s_k² − 1)

(per coordinate for σ: the separable NES, SNES). Sign convention: fitness is
−loss, and the estimator returns a gradient of the **loss**, ĝ = −∇_μ J, so
w − lr·ĝ moves towards lower loss. With ``shaping="none"`` and
``natural=False``, E[ĝ] = ∇_μ E[L(μ + σs)], the gradient of the
Gaussian-smoothed loss; ``natural=True`` (default) returns σ² times that.
``return_sigma=True`` adds the loss gradient for σ under keys
``"sigma:<name>"`` (σ is one scalar for all coordinates; the gradient is per
coordinate).

Members are evaluated in parallel through ``objective.losses`` in chunks of
``chunk`` parameter sets; the noise is drawn once from ``generator``, so the
result does not depend on the chunk size.

Wierstra, Schaul, Glasmachers, Sun, Peters & Schmidhuber, "Natural Evolution
Strategies", JMLR 2014; Salimans, Ho, Chen, Sidor & Sutskever, "Evolution
Strategies as a Scalable Alternative to Reinforcement Learning", 2017.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_bool,
    check_choice,
    check_int,
    check_positive,
    raise_collected,
    register_estimator,
)
from lowbit.estimators.budget import flatten, unflatten
from lowbit.estimators.objective import GENERIC_CHUNK_NUMBERS

SHAPINGS: Tuple[str, ...] = ("none", "centered_ranks", "nes_utilities")

SIGMA_PREFIX = "sigma:"


def fitness_weights(fitness: torch.Tensor, shaping: str, antithetic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weights for the μ gradient, weights for the σ gradient), both (N,) float64; see module docstring."""
    n = fitness.numel()
    f = fitness.double()
    if shaping == "none":
        centred = f - f.mean()
        # μ: antithetic pairs cancel any baseline, so 1/N is unbiased; otherwise 1/(N-1).
        # σ: s_k^2 is shared by a pair, so the baseline costs one pair: 1/(N-2); else 1/(N-1).
        n_mu = n if antithetic else n - 1
        n_sigma = n - 2 if antithetic else n - 1
        return centred / n_mu, centred / max(n_sigma, 1)
    ranks = torch.empty(n, dtype=torch.float64)
    order = torch.argsort(f, stable=True)  # ascending fitness: worst first
    ranks[order] = torch.arange(n, dtype=torch.float64)
    if shaping == "centered_ranks":
        u = (ranks / (n - 1) - 0.5) / n
        return u, u
    # nes_utilities: j = 1 for the best member.
    j = n - ranks  # (N,) in 1..N
    raw = (math.log(n / 2 + 1) - torch.log(j)).clamp_min(0.0)
    u = raw / raw.sum() - 1.0 / n
    return u, u


@register_estimator("nes")
class NES(GradientEstimator):
    """ĝ = −σ Σ_k u_k s_k (natural) or −(1/σ) Σ_k u_k s_k; see the module docstring.

    Args:
        population: N >= 2 members (even with ``antithetic``).
        sigma: σ > 0, the search distribution's standard deviation.
        antithetic: sample s and −s in pairs (mirrored sampling).
        shaping: ``"none"``, ``"centered_ranks"`` or ``"nes_utilities"``.
        natural: natural gradient (σ² × the plain search gradient) or plain.
        return_sigma: also return the σ gradient under ``"sigma:<name>"``.
        chunk: members per ``objective.losses`` call (default: by size).
    """

    param_names = ("population", "sigma", "antithetic", "shaping", "natural", "return_sigma", "chunk")

    def __init__(
        self,
        population: int = 5000,
        sigma: float = 0.1,
        antithetic: bool = True,
        shaping: str = "none",
        natural: bool = True,
        return_sigma: bool = False,
        chunk: Optional[int] = None,
    ) -> None:
        errors = []
        checks = {
            "population": lambda: check_int("population", population, 2),
            "sigma": lambda: check_positive("sigma", sigma),
            "antithetic": lambda: check_bool("antithetic", antithetic),
            "shaping": lambda: check_choice("shaping", shaping, SHAPINGS),
            "natural": lambda: check_bool("natural", natural),
            "return_sigma": lambda: check_bool("return_sigma", return_sigma),
            "chunk": lambda: None if chunk is None else check_int("chunk", chunk, 1),
        }
        for key, check in checks.items():
            try:
                setattr(self, key, check())
            except ValueError as error:
                errors.append(str(error))
        if not errors and antithetic and population % 2:
            errors.append(f"population must be even with antithetic=True (pairs s, -s), got {population}")
        if not errors and return_sigma and shaping == "none" and antithetic and population < 4:
            errors.append(f"population must be >= 4 for an unbiased sigma gradient with antithetic pairs, got {population}")
        raise_collected(errors)

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        mu = flatten({k: v.detach() for k, v in objective.params.items()})  # (P,)
        n_params = mu.numel()
        half = self.population // 2 if self.antithetic else self.population
        noise = torch.randn(half, n_params, generator=generator, dtype=mu.dtype)  # (M, P)
        losses = self._evaluate(objective, mu, noise)  # (N,) float64
        w_mu, w_sigma = fitness_weights(-losses, self.shaping, self.antithetic)
        if self.antithetic:
            # Σ_k u_k s_k over the pairs (s, −s) = Σ_m (u_m+ − u_m−) s_m; s² is shared.
            c_mu = w_mu[:half] - w_mu[half:]
            c_sigma = w_sigma[:half] + w_sigma[half:]
        else:
            c_mu, c_sigma = w_mu, w_sigma
        sum_us = _weighted_rows(c_mu, noise)  # (P,) float64: Σ u_k s_k
        scale_mu = self.sigma if self.natural else 1.0 / self.sigma
        grad = unflatten((-scale_mu * sum_us).to(mu.dtype), objective.params)
        if self.return_sigma:
            sum_us2 = _weighted_rows(c_sigma, noise, square=True) - float(c_sigma.sum())  # Σ u (s² − 1)
            scale_sigma = self.sigma / 2.0 if self.natural else 1.0 / self.sigma
            sigma_grad = unflatten((-scale_sigma * sum_us2).to(mu.dtype), objective.params)
            grad.update({SIGMA_PREFIX + k: v for k, v in sigma_grad.items()})
        return grad

    def _evaluate(self, objective: Any, mu: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """L at μ + σs for every row of ``noise`` (and μ − σs with antithetic), (N,) float64."""
        return evaluate_members(objective, mu, self.sigma, noise, self.antithetic, self.chunk)


def evaluate_members(
    objective: Any, mu: torch.Tensor, sigma: Any, noise: torch.Tensor, antithetic: bool, chunk: Optional[int] = None
) -> torch.Tensor:
    """L at μ + σ⊙s for every row s of ``noise`` (M, P), then at μ − σ⊙s with ``antithetic``; (N,) float64.

    ``sigma``: a number or a (P,) tensor (separable NES). Members are evaluated
    ``chunk`` at a time through ``objective.losses`` (default: by size); the
    result does not depend on the chunk size.
    """
    half, n_params = noise.shape
    chunk = chunk or max(2, GENERIC_CHUNK_NUMBERS // max(1, n_params))
    per_call = max(1, chunk // 2) if antithetic else chunk
    plus = torch.empty(half, dtype=torch.float64)
    minus = torch.empty(half, dtype=torch.float64) if antithetic else None
    for start in range(0, half, per_call):
        offset = sigma * noise[start : start + per_call]  # (m, P)
        rows = [mu + offset]
        if antithetic:
            rows.append(mu - offset)
        members = torch.cat(rows).to(mu.dtype)  # (m or 2m, P)
        stacked = {k: v.reshape(members.shape[0], *objective.params[k].shape)
                   for k, v in _columns(members, objective.params).items()}
        values = objective.losses(stacked).double()
        m = offset.shape[0]
        plus[start : start + m] = values[:m]
        if minus is not None:
            minus[start : start + m] = values[m:]
    return plus if minus is None else torch.cat([plus, minus])


def _weighted_rows(weights: torch.Tensor, noise: torch.Tensor, square: bool = False) -> torch.Tensor:
    """Σ_k weights_k · noise_k (or noise_k²), accumulated in float64 chunk by chunk; (P,)."""
    out = torch.zeros(noise.shape[1], dtype=torch.float64)
    rows = max(1, (1 << 20) // max(1, noise.shape[1]))  # ~8 MiB of float64 per chunk
    for start in range(0, noise.shape[0], rows):
        block = noise[start : start + rows].double()
        if square:
            block = block * block
        out += weights[start : start + rows] @ block
    return out


def _columns(rows: torch.Tensor, like) -> Params:
    out = {}
    offset = 0
    for name, ref in like.items():
        out[name] = rows[:, offset : offset + ref.numel()]
        offset += ref.numel()
    return out


__all__ = ["NES", "SHAPINGS", "SIGMA_PREFIX", "evaluate_members", "fitness_weights"]
