"""Tests for lowbit.optim.DessiLBI and its functional core.

The references are independent of the code under test: proximal maps and
one/two DessiLBI steps are written out by hand with plain arithmetic, and the
untracked update is compared with torch.optim.SGD / Adam.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from lowbit.optim import (
    DessiLBI,
    adam_direction,
    dessilbi_param_groups,
    dessilbi_step,
    group_shrink,
    prox,
    resolve_group_lasso,
    shrink,
)


def tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 2, 4, 4, generator=g), torch.randint(0, 4, (5,), generator=g)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, seeds) -> None:
    for s in seeds:
        x, y = batch(s)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# --- proximal maps -----------------------------------------------------------------------


def test_shrink_hand_values():
    z = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.75, 1.0, 2.5])
    assert torch.equal(shrink(z, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.equal(shrink(z, 0.5), torch.tensor([-2.5, -0.5, 0.0, 0.0, 0.25, 0.5, 2.0]))
    assert torch.equal(shrink(z, 0.0), z)


def test_group_shrink_hand_values():
    # Three "filters" of two entries, as a (3, 2, 1, 1) conv weight.
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4]]).reshape(3, 2, 1, 1)
    # ‖z_0‖ = 0 -> 0 (no NaN); ‖z_1‖ = 5 -> factor 1 - 1/5 = 0.8; ‖z_2‖ = 0.5 <= 1 -> 0.
    expected = torch.tensor([[0.0, 0.0], [2.4, 3.2], [0.0, 0.0]]).reshape(3, 2, 1, 1)
    torch.testing.assert_close(group_shrink(z, 1.0), expected)
    # λ = 2: factor 1 - 2/5 = 0.6.
    torch.testing.assert_close(group_shrink(z, 2.0)[1].flatten(), torch.tensor([1.8, 2.4]))
    # A filter is zero or keeps its direction: never partially zeroed.
    out = group_shrink(torch.randn(6, 4, 3, 3), 5.0).reshape(6, -1)
    assert all(bool(row.eq(0).all() or row.ne(0).all()) for row in out)
    # 1-D tensors have one-element groups: group_shrink = shrink.
    v = torch.tensor([-3.0, 0.5, 2.0])
    torch.testing.assert_close(group_shrink(v, 1.0), shrink(v, 1.0))


def test_prox_and_auto_mode():
    assert resolve_group_lasso("auto", torch.zeros(4, 3, 3, 3)) == "filter"
    assert resolve_group_lasso("auto", torch.zeros(4, 3)) == "elementwise"
    assert resolve_group_lasso("filter", torch.zeros(4, 3)) == "filter"
    z = torch.tensor([[3.0, 4.0], [0.5, -2.0]])
    torch.testing.assert_close(prox(z, 1.0, "elementwise"), torch.tensor([[2.0, 3.0], [0.0, -1.0]]))
    torch.testing.assert_close(prox(z, 1.0, "filter")[0], torch.tensor([2.4, 3.2]))
    with pytest.raises(ValueError, match="'rows'"):
        resolve_group_lasso("rows", z)
    with pytest.raises(ValueError, match="-1"):
        shrink(z, -1)


# --- hand-computed steps ------------------------------------------------------------------


def one_param_optimizer(w0, **kw):
    w = nn.Parameter(torch.tensor(w0))
    return w, DessiLBI([w], sparse=True, **kw)


def set_grad(w: torch.Tensor, g) -> None:
    w.grad = torch.tensor(g).reshape(w.shape)


def test_two_hand_computed_steps_elementwise():
    # lr = 0.5, κ = 2, μ = 0.25: lr·κ = 1, 1/μ = 4, lr/μ = 2; no momentum.
    w0 = [[1.0, -0.25], [0.75, 0.5]]
    g = [[0.5, 1.0], [-1.0, 0.25]]
    w, opt = one_param_optimizer(w0, lr=0.5, kappa=2.0, mu=0.25, momentum=0.0)
    assert torch.equal(opt.gamma(w), torch.zeros(2, 2))  # Z₀ = Γ₀ = 0
    set_grad(w, g)
    opt.step()
    # W₁ = W₀ − 1·(g + 4(W₀ − 0)) = −3W₀ − g
    assert torch.equal(w.detach(), torch.tensor([[-3.0 - 0.5, 0.75 - 1.0], [-2.25 + 1.0, -1.5 - 0.25]]))
    # Z₁ = 0 − 2(0 − W₀) = 2W₀ = [[2, −0.5], [1.5, 1]]
    assert torch.equal(opt.state[w]["z"], torch.tensor([[2.0, -0.5], [1.5, 1.0]]))
    # Γ₁ = 2·shrink(Z₁, 1) = 2·[[1, 0], [0.5, 0]]
    assert torch.equal(opt.gamma(w), torch.tensor([[2.0, 0.0], [1.0, 0.0]]))
    set_grad(w, g)
    opt.step()
    # W₂ = W₁ − (g + 4(W₁ − Γ₁)) = −3W₁ − g + 4Γ₁ with W₁ = [[−3.5, −0.25], [−1.25, −1.75]]
    assert torch.equal(w.detach(), torch.tensor([[10.5 - 0.5 + 8.0, 0.75 - 1.0], [3.75 + 1.0 + 4.0, 5.25 - 0.25]]))
    # Z₂ = Z₁ − 2(Γ₁ − W₁)
    assert torch.equal(opt.state[w]["z"], torch.tensor([[2.0 - 11.0, -0.5 - 0.5], [1.5 - 4.5, 1.0 - 3.5]]))
    # Γ₂ = 2·shrink(Z₂, 1) = 2·[[−8, 0], [−2, −1.5]]
    assert torch.equal(opt.gamma(w), torch.tensor([[-16.0, 0.0], [-4.0, -3.0]]))


def test_hand_computed_step_filter_grouping():
    # A (2, 2, 1, 1) conv weight: filter 0 = [0.5, 0], filter 1 = [3, 4].
    # lr = 0.5, κ = 2, μ = 0.5: lr·κ = 1, 1/μ = 2, lr/μ = 1; first momentum step (buffer = g).
    w0 = [[[[0.5]], [[0.0]]], [[[3.0]], [[4.0]]]]
    g = [0.5, -1.0, 1.0, 2.0]
    w, opt = one_param_optimizer(w0, lr=0.5, kappa=2.0, mu=0.5, momentum=0.9)
    assert opt.group_lasso_mode(w) == "filter"
    set_grad(w, g)
    opt.step()
    # W₁ = W₀ − (g + 2W₀) = −W₀ − g
    torch.testing.assert_close(w.detach().flatten(), torch.tensor([-0.5 - 0.5, 0.0 + 1.0, -3.0 - 1.0, -4.0 - 2.0]))
    # Z₁ = W₀; ‖Z₁,₀‖ = 0.5 ≤ 1 -> 0; ‖Z₁,₁‖ = 5 -> factor 0.8; Γ₁ = 2·[0, 0, 2.4, 3.2]
    torch.testing.assert_close(opt.state[w]["z"].flatten(), torch.tensor([0.5, 0.0, 3.0, 4.0]))
    torch.testing.assert_close(opt.gamma(w).flatten(), torch.tensor([0.0, 0.0, 4.8, 6.4]))
    assert opt.sparsity() == {"param0": 0.5}  # one of two filters is zero

    # The same weight with elementwise grouping forced: Γ₁ = 2·shrink(W₀, 1) = [0, 0, 4, 6].
    w2, opt2 = one_param_optimizer(w0, lr=0.5, kappa=2.0, mu=0.5, momentum=0.9, group_lasso="elementwise")
    set_grad(w2, g)
    opt2.step()
    torch.testing.assert_close(opt2.gamma(w2).flatten(), torch.tensor([0.0, 0.0, 4.0, 6.0]))


def test_adam_direction_two_steps_by_hand():
    b1, b2, eps = 0.9, 0.999, 1e-8
    g1, g2 = [0.5, -2.0], [1.0, 3.0]
    lr, kappa, mu = 0.1, 2.0, 4.0
    w, opt = one_param_optimizer([1.0, -1.0], lr=lr, kappa=kappa, mu=mu, adam=True, betas=(b1, b2), eps=eps)
    w_ref, gamma_ref, z_ref = [1.0, -1.0], [0.0, 0.0], [0.0, 0.0]
    m, v = [0.0, 0.0], [0.0, 0.0]
    for t, g in ((1, g1), (2, g2)):
        set_grad(w, g)
        opt.step()
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        d = [(mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps) for mi, vi in zip(m, v)]
        w_old = w_ref
        w_ref = [wi - lr * kappa * (di + (wi - gm) / mu) for wi, di, gm in zip(w_old, d, gamma_ref)]
        z_ref = [zi - (lr / mu) * (gm - wi) for zi, gm, wi in zip(z_ref, gamma_ref, w_old)]
        gamma_ref = [kappa * math.copysign(max(abs(zi) - 1, 0.0), zi) for zi in z_ref]
        torch.testing.assert_close(w.detach(), torch.tensor(w_ref), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[w]["z"], torch.tensor(z_ref), rtol=1e-6, atol=1e-7)
    # The first Adam direction is g/(|g| + eps) = ±1 (up to eps).
    ea, eas = torch.zeros(2), torch.zeros(2)
    d1 = adam_direction(torch.tensor(g1), ea, eas, 1, betas=(b1, b2), eps=eps)
    torch.testing.assert_close(d1, torch.tensor([1.0, -1.0]))


# --- equivalence with torch.optim when Γ is not tracked --------------------------------------


@pytest.mark.parametrize(
    "momentum,dampening,nesterov,weight_decay",
    [(0.9, 0.0, False, 1e-3), (0.9, 0.0, True, 5e-4), (0.5, 0.3, False, 0.0), (0.0, 0.0, False, 1e-2)],
)
@pytest.mark.parametrize("untracked", [{"track_gamma": False}, {"mu": math.inf}])
def test_untracked_update_equals_sgd_with_lr_times_kappa(momentum, dampening, nesterov, weight_decay, untracked):
    lr, kappa = 0.05, 3.0
    a, b = tiny_net(), tiny_net()
    opt_a = DessiLBI(
        a.parameters(), lr=lr, kappa=kappa, momentum=momentum, dampening=dampening, nesterov=nesterov,
        weight_decay=weight_decay, **untracked,
    )
    opt_b = torch.optim.SGD(
        b.parameters(), lr=lr * kappa, momentum=momentum, dampening=dampening, nesterov=nesterov,
        weight_decay=weight_decay,
    )
    for s in range(6):
        train_steps(a, opt_a, [s])
        train_steps(b, opt_b, [s])
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb), f"step {s}"


def test_untracked_adam_flavour_equals_torch_adam_with_lr_times_kappa():
    lr, kappa = 0.01, 2.0
    a, b = tiny_net(), tiny_net()
    opt_a = DessiLBI(
        a.parameters(), lr=lr, kappa=kappa, adam=True, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3, track_gamma=False
    )
    opt_b = torch.optim.Adam(b.parameters(), lr=lr * kappa, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3)
    train_steps(a, opt_a, range(5))
    train_steps(b, opt_b, range(5))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_unregistered_params_take_the_plain_step():
    a, b = tiny_net(), tiny_net()
    opt_a = DessiLBI(a.parameters(), lr=0.1, kappa=2.0, mu=5.0)  # sparse="auto": weights registered, biases not
    opt_b = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9)
    for s in range(3):  # the same fixed gradients for both, so only the update rule differs
        g = torch.Generator().manual_seed(s)
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a[0].bias, b[0].bias) and torch.equal(a[3].bias, b[3].bias)
    assert not torch.equal(a[0].weight, b[0].weight)  # the coupling (W − Γ)/μ acts on registered weights


# --- the functional core ------------------------------------------------------------------------


def test_functional_step_matches_the_optimizer():
    a, b = tiny_net(), tiny_net()
    opt = DessiLBI(a.parameters(), lr=0.1, kappa=1.5, mu=2.0, weight_decay=1e-3)
    train_steps(a, opt, [0])
    x, y = batch(0)
    nn.functional.cross_entropy(b(x), y).backward()
    params = list(b.parameters())
    states = [({"z": torch.zeros_like(p), "gamma": torch.zeros_like(p)} if p.dim() >= 2 else {}) for p in params]
    with torch.no_grad():
        dessilbi_step(
            params, [p.grad for p in params], states, lr=0.1, kappa=1.5, mu=2.0, momentum=0.9, dampening=0.0,
            nesterov=False, weight_decay=1e-3, adam=False, betas=(0.9, 0.999), eps=1e-8,
        )
    for pa, pb, st in zip(a.parameters(), params, states):
        assert torch.equal(pa, pb)
        if "gamma" in st:
            assert torch.equal(opt.state[pa]["gamma"], st["gamma"])


# --- state, names, inspection ---------------------------------------------------------------------


@pytest.mark.parametrize("adam", [False, True])
def test_state_dict_round_trip_continues_identically(adam):
    a = tiny_net()
    with torch.no_grad():  # larger weights so that Z crosses the threshold within a few steps
        for p in a.parameters():
            p.mul_(5)
    kw = dict(lr=0.2 if not adam else 0.05, kappa=1.0, mu=0.25, adam=adam)
    opt_a = DessiLBI(dessilbi_param_groups(a), **kw)
    train_steps(a, opt_a, range(4))
    assert any(bool(g.ne(0).any()) for _, _, g in opt_a.named_gammas()), "test needs a non-trivial Γ"
    buffer = io.BytesIO()
    torch.save({"model": a.state_dict(), "optim": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert {"z", "gamma"} <= set(saved["optim"]["state"][0])

    b = tiny_net(seed=123)
    b.load_state_dict(saved["model"])
    opt_b = DessiLBI(dessilbi_param_groups(b), **kw)
    opt_b.load_state_dict(saved["optim"])
    train_steps(a, opt_a, [7])
    train_steps(b, opt_b, [7])
    for (name, wa, ga), (name_b, wb, gb) in zip(opt_a.named_gammas(), opt_b.named_gammas()):
        assert name == name_b
        assert torch.equal(wa, wb) and torch.equal(ga, gb)
        assert torch.equal(opt_a.state[wa]["z"], opt_b.state[wb]["z"])
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_param_groups_names_and_inspection():
    model = tiny_net()
    groups = dessilbi_param_groups(model)
    assert [g["sparse"] for g in groups] == [True, False]
    opt = DessiLBI(groups, lr=0.1, mu=3.0)
    assert [name for name, _, _ in opt.named_gammas()] == ["0.weight", "3.weight"]
    assert opt.gamma("0") is opt.gamma("0.weight") is opt.gamma(model[0].weight)
    assert opt.group_lasso_mode("0.weight") == "filter" and opt.group_lasso_mode("3.weight") == "elementwise"
    assert opt.sparsity() == {"0.weight": 1.0, "3.weight": 1.0}  # Γ₀ = 0
    with pytest.raises(KeyError, match="not registered"):
        opt.gamma("0.bias")
    with pytest.raises(KeyError, match="Did you mean"):
        opt.gamma("0.weigth")
    train_steps(model, opt, range(3))
    for name, w, g in opt.named_gammas():
        expected = float(((w.detach() - g) ** 2).sum()) / (2 * 3.0)
        assert opt.residue()[name] == pytest.approx(expected)

    only_linear = dessilbi_param_groups(tiny_net(), sparse=["3.*"], exclude=["3.bias"], group_lasso="filter", mu=7.0)
    assert only_linear[0]["params"][0][0] == "3.weight" and only_linear[0]["mu"] == 7.0
    assert only_linear[0]["group_lasso"] == "filter"
    # Without group_lasso the optimizer-wide default applies to the sparse group.
    opt_rows = DessiLBI(dessilbi_param_groups(tiny_net()), lr=0.1, group_lasso="filter")
    assert opt_rows.group_lasso_mode("3.weight") == "filter"
    with pytest.raises(ValueError, match="conv9"):
        dessilbi_param_groups(tiny_net(), sparse=["conv9.weight"])


def test_register_by_list_of_parameters():
    model = tiny_net()
    opt = DessiLBI(model.parameters(), lr=0.1, sparse_params=[model[3].weight])
    assert [name for name, _, _ in opt.named_gammas()] == ["param2"]
    with pytest.raises(ValueError, match="not among"):
        DessiLBI(model[0].parameters(), lr=0.1, sparse_params=[model[3].weight])
    with pytest.raises(ValueError, match="not both"):
        DessiLBI([{"params": model.parameters(), "sparse": True}], lr=0.1, sparse_params=[model[3].weight])


@pytest.mark.parametrize(
    "kw,fragment",
    [
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": 0.1, "kappa": -1}, "kappa must be a finite number > 0, got -1"),
        ({"lr": 0.1, "mu": 0}, "mu must be > 0"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"lr": 0.1, "weight_decay": -0.5}, "got -0.5"),
        ({"lr": 0.1, "betas": (0.9, 1.2)}, "betas must be two numbers in [0, 1)"),
        ({"lr": 0.1, "eps": 0}, "eps must be > 0, got 0"),
        ({"lr": 0.1, "group_lasso": "rows"}, "'rows'"),
        ({"lr": 0.1, "sparse": "yes"}, "'yes'"),
        ({"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"lr": 0.1, "adam": True, "nesterov": True}, "cannot be combined"),
    ],
)
def test_invalid_options_quote_the_value(kw, fragment):
    with pytest.raises(ValueError) as info:
        DessiLBI(tiny_net().parameters(), **kw)
    assert fragment in str(info.value)


def test_all_invalid_options_reported_together_and_group_overrides_checked():
    with pytest.raises(ValueError) as info:
        DessiLBI(tiny_net().parameters(), lr=-1.0, kappa=0.0, mu=-2.0)
    assert all(k in str(info.value) for k in ("lr", "kappa", "mu"))
    with pytest.raises(ValueError, match="param group 1: mu must be > 0"):
        net = tiny_net()
        DessiLBI([{"params": net[0].parameters()}, {"params": net[3].parameters(), "mu": -1.0}], lr=0.1)


def test_closure_and_missing_grads():
    model = tiny_net()
    opt = DessiLBI(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.state_dict())
    assert opt.step() is None  # no gradients: nothing moves, no error
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and torch.isfinite(loss)
