"""lowbit.estimators: known answers, the return contract, budgets, determinism, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.estimators import (
    ModuleObjective,
    Objective,
    get_estimator,
    list_estimators,
    norm_of,
    project,
)
from lowbit.estimators.budget import flatten
from lowbit.probe.toy import ToyTask

# Small settings so that every registered estimator runs in well under a second.
SMALL = {
    "nes": {"population": 64},
    "multistep_ste": {"steps": 3},
    "dg": {"step": 0.02, "steps": 2},
}


def toy_objective(act="ste", dim=4, batch=64, layers="all", depth=3, seed=0, dtype=torch.float64):
    task = ToyTask(dim, depth=depth, act=act, batch_size=batch, seed=seed, dtype=dtype)
    return task.objective(layers=layers)


class Quadratic(Objective):
    """L(w) = ½ Σ a_i w_i² + b·w; its Gaussian smoothing has gradient a ⊙ μ + b and σ-gradient σ a."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> None:
        self.a, self.b = a, b
        self.params = {"w": w}

    def loss(self, params=None, surrogate=None):
        w = self.with_params(params)["w"]
        return 0.5 * (self.a * w * w).sum() + (self.b * w).sum()

    def losses(self, stacked):
        w = stacked["w"]  # (pop, n)
        return (0.5 * (self.a * w * w).sum(-1) + (w * self.b).sum(-1)).double()


def quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    return Quadratic(a, b, w)


# --- registry and contract -----------------------------------------------------------


def test_registry_lists_every_family():
    assert {"ste", "nes", "cdg", "dg", "multistep_ste"} <= set(list_estimators())


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match="nes"):
        get_estimator("nse")


@pytest.mark.parametrize("name", list_estimators())
def test_every_estimator_follows_the_contract(name):
    objective = toy_objective()
    estimator = get_estimator(name, **SMALL.get(name, {}))
    g1 = estimator.estimate(objective, generator=torch.Generator().manual_seed(3))
    g2 = estimator.estimate(objective, generator=torch.Generator().manual_seed(3))
    assert set(g1) == set(objective.params)
    for key, value in g1.items():
        assert value.shape == objective.params[key].shape
        assert value.dtype == objective.params[key].dtype
        assert torch.isfinite(value).all()
        assert torch.equal(value, g2[key]), "same generator seed must give the same estimate"
    assert estimator.config()["name"] == name


def test_estimators_leave_the_objective_unchanged():
    objective = toy_objective()
    before = {k: v.clone() for k, v in objective.params.items()}
    for name in list_estimators():
        get_estimator(name, **SMALL.get(name, {})).estimate(objective, torch.Generator().manual_seed(0))
    for k, v in before.items():
        assert torch.equal(objective.params[k], v)


@pytest.mark.parametrize(
    "name, params, quoted",
    [
        ("cdg", {"eps": 0}, "eps"),
        ("cdg", {"eps": -0.1}, "-0.1"),
        ("cdg", {"central": "yes"}, "yes"),
        ("nes", {"sigma": 0}, "sigma"),
        ("nes", {"population": 0}, "population"),
        ("nes", {"population": 5}, "5"),  # odd with antithetic pairs
        ("nes", {"shaping": "ranks"}, "ranks"),
        ("nes", {"chunk": 0}, "chunk"),
        ("dg", {"budget": 0}, "budget"),
        ("dg", {"step": -1}, "step"),
        ("dg", {"steps": 0}, "steps"),
        ("dg", {"norm": "l3"}, "l3"),
        ("dg", {"step": 0.5, "budget": 0.1}, "0.5"),
        ("multistep_ste", {"optimizer": "rmsprop"}, "rmsprop"),
        ("multistep_ste", {"steps": 0}, "steps"),
        ("multistep_ste", {"lr": 0}, "lr"),
        ("multistep_ste", {"budget": -1}, "-1"),
        ("multistep_ste", {"noise": 1.5}, "1.5"),
        ("multistep_ste", {"norm": "l0"}, "l0"),
        ("ste", {"surrogate": "not_a_surrogate"}, "not_a_surrogate"),
    ],
)
def test_bad_parameters_raise_at_construction(name, params, quoted):
    with pytest.raises(ValueError, match=quoted):
        get_estimator(name, **params)


def test_all_bad_parameters_are_reported_together():
    with pytest.raises(ValueError) as info:
        get_estimator("nes", sigma=-1.0, shaping="bogus")
    assert "-1.0" in str(info.value) and "bogus" in str(info.value)


# --- known answers -------------------------------------------------------------------


def smooth_module_objective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randn(40, 2, dtype=torch.float64)
    return ModuleObjective(model, (x, y))


def autograd_gradient(objective):
    leaves = {k: v.clone().requires_grad_(True) for k, v in objective.params.items()}
    grads = torch.autograd.grad(objective.loss(leaves), list(leaves.values()))
    return dict(zip(leaves, grads))


def relative_error(a, b):
    return float((flatten(a) - flatten(b)).norm() / flatten(b).norm())


def test_cdg_converges_to_autograd_on_a_smooth_objective():
    objective = smooth_module_objective()
    exact = autograd_gradient(objective)
    errors = [relative_error(get_estimator("cdg", eps=eps).estimate(objective), exact) for eps in (1e-1, 1e-2, 1e-3)]
    assert errors[2] < 1e-5
    assert errors[0] > errors[1] > errors[2]  # central differences: error O(eps^2)
    forward = relative_error(get_estimator("cdg", eps=1e-3, central=False).estimate(objective), exact)
    assert errors[2] < forward < 1e-2


def test_cdg_is_exact_on_a_linear_network():
    # A deep linear network's loss is quadratic in every single weight: central differences are exact.
    objective = toy_objective(act="none", dim=5, batch=50)
    cdg = get_estimator("cdg", eps=0.5).estimate(objective)
    assert relative_error(cdg, autograd_gradient(objective)) < 1e-10


def test_nes_matches_the_smoothed_gradient_within_sampling_error():
    q = quadratic()
    sigma, population = 0.3, 4000
    mu = q.params["w"]
    g = q.a * mu + q.b  # gradient of the smoothed loss
    half = population // 2
    # Antithetic pairs on a quadratic: [L(μ+σs) − L(μ−σs)]/(2σ) = sᵀg exactly, so ĝ_i is the mean of
    # M = N/2 draws of s_i sᵀg, with variance ‖g‖² + g_i²: standard error sqrt((‖g‖² + g_i²)/M).
    se = ((g.square().sum() + g.square()) / half).sqrt()
    plain = get_estimator("nes", population=population, sigma=sigma, natural=False)
    estimate = plain.estimate(q, torch.Generator().manual_seed(1))["w"]
    assert ((estimate - g).abs() < 5 * se).all(), (estimate, g, se)
    natural = get_estimator("nes", population=population, sigma=sigma).estimate(q, torch.Generator().manual_seed(1))["w"]
    torch.testing.assert_close(natural, sigma**2 * estimate)  # natural gradient = σ² × plain


def test_nes_without_antithetic_pairs_is_unbiased_within_sampling_error():
    q = quadratic(seed=2)
    sigma, population = 0.3, 6000
    g = q.a * q.params["w"] + q.b
    # Per member: (sᵀg + σ/2 Σ_j a_j (s_j² − 1)) s_i, variance ‖g‖² + g_i² + σ²/4 (2 Σ_{j≠i} a_j² + 10 a_i²).
    a2 = q.a.square()
    var = g.square().sum() + g.square() + sigma**2 / 4 * (2 * (a2.sum() - a2) + 10 * a2)
    se = (var / population).sqrt()
    est = get_estimator("nes", population=population, sigma=sigma, natural=False, antithetic=False)
    estimate = est.estimate(q, torch.Generator().manual_seed(5))["w"]
    assert ((estimate - g).abs() < 5 * se).all()


def test_nes_sigma_gradient_matches_the_closed_form():
    q = quadratic(seed=3)
    sigma, population = 0.5, 8000
    # d/dσ_i E[L(μ + σ s)] = σ a_i. Per antithetic pair the estimate is (σ/2) Σ_j a_j (s_j² − 1)(s_i² − 1),
    # variance (σ²/4)(4 Σ_{j≠i} a_j² + 60 a_i²) − σ² a_i².
    a2 = q.a.square()
    var = sigma**2 / 4 * (4 * (a2.sum() - a2) + 60 * a2) - sigma**2 * a2
    se = (var / (population // 2)).sqrt()
    est = get_estimator("nes", population=population, sigma=sigma, natural=False, return_sigma=True)
    out = est.estimate(q, torch.Generator().manual_seed(2))
    assert set(out) == {"w", "sigma:w"}
    assert ((out["sigma:w"] - sigma * q.a).abs() < 5 * se).all()


@pytest.mark.parametrize("shaping", ["centered_ranks", "nes_utilities"])
def test_nes_shaped_estimates_point_downhill(shaping):
    q = quadratic(n=8, seed=4)
    g = q.a * q.params["w"] + q.b
    estimate = get_estimator("nes", population=2000, sigma=0.1, shaping=shaping).estimate(q, torch.Generator().manual_seed(0))["w"]
    assert float(F.cosine_similarity(estimate, g, dim=0)) > 0.9


def test_nes_does_not_depend_on_the_chunk_size():
    objective = toy_objective(dim=3, batch=32)
    a = get_estimator("nes", population=40).estimate(objective, torch.Generator().manual_seed(9))
    b = get_estimator("nes", population=40, chunk=6).estimate(objective, torch.Generator().manual_seed(9))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)


def straight_through_loss(objective, params, surrogate_fn):
    """The student's loss written by hand with the straight-through trick h = s(z) + (sign(z) − s(z)).detach()."""
    h = objective.x
    ws = [params.get(f"layers.{l}.weight", w) for l, w in enumerate(objective.weights)]
    for l, w in enumerate(ws):
        h = h @ w.T
        if l < len(ws) - 1:
            sign = torch.where(h >= 0, 1.0, -1.0).to(h.dtype)
            s = surrogate_fn(h)
            h = s + (sign - s).detach()
    return F.mse_loss(h, objective.y)


@pytest.mark.parametrize(
    "surrogate, hand",
    [("ste", lambda z: z), (nn.Identity(), lambda z: z), ("ste_clipped", lambda z: z.clamp(-1.0, 1.0))],
)
def test_ste_equals_autograd_of_the_hand_written_straight_through_graph(surrogate, hand):
    # The student's own backward (swish_sign) differs: the surrogate must replace it.
    objective = toy_objective(act="swish_sign", dim=5, batch=80)
    estimate = get_estimator("ste", surrogate=surrogate).estimate(objective)
    leaves = {k: v.clone().requires_grad_(True) for k, v in objective.params.items()}
    grads = torch.autograd.grad(straight_through_loss(objective, leaves, hand), list(leaves.values()))
    for (key, _), grad in zip(leaves.items(), grads):
        torch.testing.assert_close(estimate[key], grad, rtol=1e-12, atol=1e-14)


def test_surrogate_changes_only_the_backward():
    objective = toy_objective(act="ste")
    assert torch.equal(objective.loss(surrogate="swish_sign"), objective.loss())


def test_surrogate_on_a_non_sign_activation_raises():
    objective = toy_objective(act="step01")
    with pytest.raises(ValueError, match="sign"):
        get_estimator("ste").estimate(objective)
    get_estimator("ste", surrogate=None).estimate(objective)  # its own backward is fine


def test_surrogate_has_no_effect_on_a_full_precision_network():
    objective = toy_objective(act="none")
    a = get_estimator("ste", surrogate="swish_sign").estimate(objective)
    b = autograd_gradient(objective)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_module_objective_agrees_with_the_toy_objective():
    task = ToyTask(4, depth=3, act="approx_sign", batch_size=50, seed=1, dtype=torch.float64)
    toy = task.objective(layers=[0, 2])
    module = ModuleObjective(task.student, (toy.x, toy.y), params=["layers.0.weight", "layers.2.weight"])
    torch.testing.assert_close(module.loss(), toy.loss())
    for surrogate in (None, "ste_clipped", "swish_sign"):
        a = get_estimator("ste", surrogate=surrogate).estimate(module)
        b = get_estimator("ste", surrogate=surrogate).estimate(toy)
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    stacked = {k: v[None] + 0.2 * torch.randn(5, *v.shape, dtype=v.dtype) for k, v in toy.params.items()}
    torch.testing.assert_close(module.losses(stacked), toy.losses(stacked))


# --- budgets -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("steps", [1, 3])
def test_dg_stays_inside_the_budget(norm, steps):
    objective = toy_objective(dim=5, batch=100)
    budget = 0.1
    estimate = get_estimator("dg", step=0.01, budget=budget, steps=steps, norm=norm).estimate(objective)
    length = norm_of(estimate, norm)
    assert 0 < length <= budget * (1 + 1e-9)
    moved = flatten(estimate).abs()
    multiples = moved[moved > 0] / 0.01  # every coordinate moved by a whole number of steps
    torch.testing.assert_close(multiples, multiples.round())


def test_dg_single_step_moves_the_best_coordinates():
    objective = toy_objective(dim=4, batch=200, layers=[0])
    step = 0.01
    estimate = get_estimator("dg", step=step, budget=0.02, norm="l2").estimate(objective)["layers.0.weight"]
    deltas = objective.coordinate_deltas((step, -step))["layers.0.weight"].reshape(2, -1)
    best, which = deltas.min(0)
    chosen = torch.nonzero(estimate.reshape(-1)).flatten()
    expected = torch.sort(best, stable=True).indices[: min(4, int((best < 0).sum()))]  # (0.02/0.01)^2 = 4 moves
    assert sorted(chosen.tolist()) == sorted(expected.tolist())
    signs = torch.where(which[expected] == 0, -step, step)  # ĝ = −Δw
    torch.testing.assert_close(estimate.reshape(-1)[expected], signs.to(estimate.dtype))


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("noise", [0.0, 0.7])
@pytest.mark.parametrize("optimizer", ["sgd", "sgdm", "adam"])
def test_multistep_ste_stays_inside_the_budget(norm, noise, optimizer):
    objective = toy_objective(dim=4, batch=100)
    budget = 0.05
    # lr large enough that the projection is active.
    estimator = get_estimator("multistep_ste", optimizer=optimizer, steps=4, lr=1.0, budget=budget, norm=norm, noise=noise)
    estimate = estimator.estimate(objective, torch.Generator().manual_seed(0))
    assert norm_of(estimate, norm) <= budget * (1 + 1e-9)


def test_multistep_ste_with_one_sgd_step_is_the_projected_ste_step():
    objective = toy_objective(dim=4, batch=100)
    lr, budget = 0.01, 10.0  # budget large: no projection
    ms = get_estimator("multistep_ste", optimizer="sgd", steps=1, lr=lr, budget=budget).estimate(objective)
    ste = get_estimator("ste").estimate(objective)
    for k in ms:
        torch.testing.assert_close(ms[k], lr * ste[k])  # ĝ = −Δw = lr·∇


@pytest.mark.parametrize("name", ["sgd", "sgdm", "adam"])
def test_optimizer_rules_match_torch_optim(name):
    from lowbit.estimators.multistep import make_optimizer

    g = torch.Generator().manual_seed(0)
    start = torch.randn(7, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(4)]
    mine = start.clone()
    opt = make_optimizer(name, 0.05)
    theirs = start.clone().requires_grad_(True)
    reference = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05), "sgdm": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                 "adam": lambda p: torch.optim.Adam(p, lr=0.05)}[name]([theirs])
    for grad in grads:
        opt.step([mine], [grad])
        theirs.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(mine, theirs.detach(), rtol=1e-12, atol=1e-14)


def brute_l1_projection(v: torch.Tensor, r: float) -> torch.Tensor:
    """Reference: bisection on θ for ‖sign(v) max(|v| − θ, 0)‖₁ = r (a different algorithm from Duchi's sort)."""
    if v.abs().sum() <= r:
        return v.clone()
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((v.abs() - mid).clamp_min(0).sum()) > r:
            lo = mid
        else:
            hi = mid
    return torch.sign(v) * (v.abs() - hi).clamp_min(0)


@pytest.mark.parametrize("seed", range(5))
def test_projection_onto_norm_balls(seed):
    g = torch.Generator().manual_seed(seed)
    params = {"a": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(5, generator=g, dtype=torch.float64)}
    v = flatten(params)
    r = 0.3 * float(v.abs().sum()) / (1 + seed)
    l1 = flatten(project(params, r, "l1"))
    torch.testing.assert_close(l1, brute_l1_projection(v, r), rtol=0, atol=1e-12)
    assert float(l1.abs().sum()) == pytest.approx(r, rel=1e-12)
    r2 = 0.5 * float(v.norm())
    torch.testing.assert_close(flatten(project(params, r2, "l2")), v * (r2 / v.norm()))
    torch.testing.assert_close(flatten(project(params, 0.4, "linf")), v.clamp(-0.4, 0.4))
    # Optimality: no random point of the ball is closer to v than the projection.
    for norm, radius, p in (("l1", r, l1), ("l2", r2, flatten(project(params, r2, "l2")))):
        candidates = torch.randn(2000, v.numel(), generator=g, dtype=torch.float64)
        order = 1.0 if norm == "l1" else 2.0
        candidates = candidates / torch.linalg.vector_norm(candidates, ord=order, dim=1, keepdim=True)
        candidates = candidates * radius * torch.rand(2000, 1, generator=g, dtype=torch.float64)
        assert float((candidates - v).norm(dim=1).min()) >= float((p - v).norm()) - 1e-12


def test_projection_keeps_points_inside_and_shapes():
    params = {"a": torch.tensor([[0.01, -0.02]]), "b": torch.tensor([0.03])}
    for norm in ("l1", "l2", "linf"):
        out = project(params, 1.0, norm)
        assert out["a"].shape == (1, 2) and torch.equal(out["a"], params["a"]) and torch.equal(out["b"], params["b"])
    assert float(flatten(project(params, 0.0, "l1")).abs().sum()) == 0.0
    with pytest.raises(ValueError, match="-1"):
        project(params, -1, "l2")
    with pytest.raises(ValueError, match="l3"):
        project(params, 1.0, "l3")


def test_generator_determinism_and_difference():
    objective = toy_objective(dim=3, batch=40)
    est = get_estimator("multistep_ste", noise=0.5, steps=2)
    a = est.estimate(objective, torch.Generator().manual_seed(1))
    b = est.estimate(objective, torch.Generator().manual_seed(1))
    c = est.estimate(objective, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert math.isfinite(norm_of(c))


# --- your own nn.Module: what ModuleObjective refuses and when a surrogate warns (docs/api.md) ------------


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).double()


def test_module_objective_refuses_train_mode_batchnorm_as_graph_objective_does():
    from lowbit.estimators import GraphObjective, use_batch_statistics

    model = _bn_model()
    batch = (torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 2, (32,)))
    with pytest.raises(ValueError) as module_error:
        ModuleObjective(model, batch, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError) as graph_error:
        GraphObjective(model, batch, loss_fn=F.cross_entropy)
    message = str(module_error.value)
    assert message == str(graph_error.value)
    assert "['1']" in message and "training mode" in message and "use_batch_statistics" in message and "eval()" in message

    # why: in training mode one evaluation of the loss moves the running statistics
    before = model[1].running_mean.clone()
    torch.func.functional_call(model, dict(model.named_parameters()) | dict(model.named_buffers()), (batch[0],))
    assert not torch.equal(model[1].running_mean, before)

    # both ways out leave the module untouched by any number of evaluations
    frozen = _bn_model().eval()
    stats = frozen[1].running_mean.clone()
    objective = ModuleObjective(frozen, batch, loss_fn=F.cross_entropy)
    objective.losses({name: p.unsqueeze(0).repeat(3, *[1] * p.dim()) for name, p in objective.params.items()})
    assert torch.equal(frozen[1].running_mean, stats)
    ModuleObjective(use_batch_statistics(_bn_model()), batch, loss_fn=F.cross_entropy).loss()  # train mode, no buffers


class _MySign(nn.Module):
    """A user's sign module: forward sign(x) (sign(0) = +1), no gradient of its own (d sign/dx = 0)."""

    def forward(self, x):
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _sign_net(sign: nn.Module):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4, bias=False), sign, nn.Linear(4, 1, bias=False)).double()


def test_a_surrogate_that_finds_no_sign_activation_warns_once_and_changes_nothing():
    from lowbit.estimators import SurrogateUnusedWarning, ste_gradient

    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    objective = ModuleObjective(_sign_net(_MySign()), (x, y))
    with pytest.warns(SurrogateUnusedWarning, match="forward_is_sign = True") as caught:
        g = ste_gradient(objective, "ste_clipped")
        ste_gradient(objective, "ste_clipped")
    assert len(caught) == 1  # once per objective
    assert torch.equal(g["0.weight"], torch.zeros_like(g["0.weight"]))  # the module's own (zero) sign derivative


def test_forward_is_sign_on_a_users_module_gets_the_surrogate_backward():
    """With ``forward_is_sign = True`` the surrogate applies, and matches the chain rule written out by hand."""
    import warnings

    from lowbit.estimators import ste_gradient

    class MarkedSign(_MySign):
        forward_is_sign = True

    model = _sign_net(MarkedSign())
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no SurrogateUnusedWarning
        g = ste_gradient(ModuleObjective(model, (x, y)), "ste_clipped")["0.weight"]
    # by hand: L = mean((W2 sign(W1 x) - y)^2); with d sign(z)/dz := 1{|z| <= 1}
    W1, W2 = model[0].weight.detach(), model[2].weight.detach()
    z = x @ W1.T  # (16, 4)
    residual = 2 * (torch.where(z >= 0, 1.0, -1.0).double() @ W2.T - y) / len(y)  # (16, 1)
    expected = ((residual @ W2) * (z.abs() <= 1).double()).T @ x  # (4, 3)
    torch.testing.assert_close(g, expected)
    assert g.abs().sum() > 0
