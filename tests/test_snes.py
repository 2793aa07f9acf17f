"""Iterative separable NES against its closed-form expected dynamics on a quadratic."""

from __future__ import annotations

import math

import pytest
import torch

from test_estimators import Quadratic  # L(w) = ½ Σ a_i w_i² + b·w, minimised at w* = −b/a

from lowbit.estimators import SNES, get_estimator, snes_update
from lowbit.estimators.snes import default_lr_sigma, default_population


A = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
B = torch.tensor([0.3, -0.4, 0.2], dtype=torch.float64)
W0 = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


def expected_trajectory(mu, sigma, lr_mu, lr_sigma, steps):
    """The module docstring's recursion: μ ← μ − η_μ σ²(aμ + b), σ ← σ exp(−η_σ a σ² / 2)."""
    out = [(mu.clone(), sigma.clone())]
    for _ in range(steps):
        mu, sigma = mu - lr_mu * sigma**2 * (A * mu + B), sigma * torch.exp(-0.5 * lr_sigma * A * sigma**2)
        out.append((mu.clone(), sigma.clone()))
    return out


def test_generations_follow_the_closed_form_expected_dynamics():
    sigma0, lr_mu, lr_sigma, steps = 0.8, 0.6, 0.5, 25
    estimator = SNES(population=20000, sigma=sigma0, lr_mu=lr_mu, lr_sigma=lr_sigma, shaping="none", iterations=steps)
    search = estimator.start({"w": W0.clone()})
    objective = Quadratic(A, B, W0.clone())
    generator = torch.Generator().manual_seed(0)
    want = expected_trajectory(W0.clone(), torch.full((3,), sigma0, dtype=torch.float64), lr_mu, lr_sigma, steps)
    start_gap = (W0 + B / A).abs()
    for t in range(1, steps + 1):
        search.step(objective, generator)
        mu, sigma = want[t]
        # μ: within 2% of the initial distance to the optimum; σ: within 2% relative
        assert torch.allclose(search.mu, mu, atol=0.02 * float(start_gap.max()), rtol=0), (t, search.mu, mu)
        assert torch.allclose(search.sigma, sigma, rtol=0.02, atol=0), (t, search.sigma, sigma)
    assert search.evaluations == steps * 20000
    # Towards the fixed point μ* = −b/a, σ = 0: with σ_t² ≈ 1/(1/σ_0² + η_σ a t) the gap |μ_t − μ*| shrinks
    # like Π_t (1 − η_μ a σ_t²) ~ t^(−η_μ/η_σ): polynomially, not geometrically, once σ has adapted.
    gap = (search.mu + B / A).abs()
    assert torch.all(gap < 0.5 * start_gap)
    asymptotic = 1 / (1 / sigma0**2 + lr_sigma * A * steps)
    assert torch.allclose(search.sigma**2, asymptotic, rtol=0.25)
    assert torch.all(search.sigma < sigma0 / 2)


def test_the_recursion_is_the_expectation_of_one_update():
    """One generation from a fixed (μ, σ), averaged over independent draws: E[μ'] matches exactly within sampling error."""
    mu, sigma = W0.clone(), torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
    estimator = SNES(population=8, sigma=1.0, lr_mu=1.0, lr_sigma=0.1, shaping="none")
    objective = Quadratic(A, B, W0)
    generator = torch.Generator().manual_seed(1)
    draws = []
    for _ in range(4000):
        noise = torch.randn(4, 3, generator=generator, dtype=torch.float64)
        members = torch.cat([mu + sigma * noise, mu - sigma * noise])
        new_mu, _ = snes_update(mu, sigma, noise, objective.losses({"w": members}), 1.0, 0.1, "none", True)
        draws.append(new_mu)
    draws = torch.stack(draws)
    expected = mu - sigma**2 * (A * mu + B)
    se = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - expected).abs() < 4 * se), (draws.mean(0), expected, se)


def test_with_utilities_snes_finds_the_minimum():
    objective = Quadratic(A, B, W0.clone())
    estimator = SNES(sigma=0.5, iterations=200)  # SNES defaults: N = 4 + 3 ln 3 -> 8, η_σ, nes_utilities
    g = estimator.estimate(objective, torch.Generator().manual_seed(2))
    final = W0 - g["w"]
    assert torch.allclose(final, -B / A, atol=1e-3)
    assert default_population(3) == 8 and default_lr_sigma(3) == pytest.approx((3 + math.log(3)) / (5 * math.sqrt(3)))


def test_final_weights_mean_sample_best():
    objective = Quadratic(A, B, W0.clone())
    results = {}
    for final in ("mean", "sample", "best"):
        estimator = SNES(population=16, sigma=0.3, iterations=5, final=final)
        g1 = estimator.estimate(objective, torch.Generator().manual_seed(3))
        g2 = estimator.estimate(objective, torch.Generator().manual_seed(3))
        assert torch.equal(g1["w"], g2["w"])  # pure w.r.t. the generator
        results[final] = W0 - g1["w"]
    search = SNES(population=16, sigma=0.3).start({"w": W0.clone()})
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        search.step(objective, generator)
    assert torch.allclose(results["mean"], search.mu, atol=1e-14, rtol=0)
    assert float(objective.loss({"w": results["best"]})) == pytest.approx(search.best_loss)
    assert not torch.equal(results["sample"], results["mean"])


def test_snes_is_a_displacement_estimator_on_the_toy():
    from lowbit.probe.toy import ToyTask

    objective = ToyTask(4, batch_size=256, seed=0).objective()
    estimator = get_estimator("snes", population=20, iterations=8, sigma=0.05)
    g = estimator.estimate(objective, torch.Generator().manual_seed(0))
    assert estimator.returns_displacement
    moved = float(objective.line_losses(g, torch.tensor([1.0], dtype=torch.float64))[0])
    assert moved < float(objective.loss().detach())  # eight generations lower the loss
