"""Bop against hand-computed updates and Larq's closed form; CaseOptimizer stepping and checkpoints."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lowbit.nn import BinaryLinear, binary_weights
from lowbit.optim import Bop, CaseOptimizer, case_optimizer


def one_step(w, g, gamma, threshold, m=None):
    p = nn.Parameter(torch.tensor(w, dtype=torch.float64))
    opt = Bop([p], gamma=gamma, threshold=threshold)
    if m is not None:
        opt.state[p]["m"] = torch.tensor(m, dtype=torch.float64)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    return p.detach().tolist(), opt.state[p]["m"].tolist(), opt


def test_bop_step_equals_the_hand_computed_update():
    # gamma = 1/2, tau = 1/4, m0 = 0, so m1 = g / 2; all numbers dyadic, hence exact in float64.
    w = [0.3, -0.7, 1.0, -1.0, 0.5, 0.0]
    g = [1.0, -1.0, -2.0, 0.5, 0.5, 0.375]
    new_w, m, opt = one_step(w, g, gamma=0.5, threshold=0.25)
    assert m == [0.5, -0.5, -1.0, 0.25, 0.25, 0.1875]
    assert new_w == [
        -1.0,  # sign +1, m = 0.5 > tau, same sign: flip
        1.0,  # sign -1, m = -0.5: |m| > tau, same sign: flip
        1.0,  # m opposes the weight: no flip (whatever |m|)
        -1.0,  # m = +0.25 opposes w = -1: no flip
        1.0,  # sign(w) m = 0.25 = tau exactly: the boundary does not flip
        1.0,  # sign(0) = +1; m = 0.1875 < tau: no flip
    ]
    # second step: m2 = m1 / 2 + g2 / 2; the last weight flips once the average has built up
    p = opt.param_groups[0]["params"][0]
    p.grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25, 0.375], dtype=torch.float64)
    opt.step()
    assert opt.state[p]["m"].tolist() == [0.25, -0.25, -0.5, 0.125, 0.25, 0.28125]
    assert p.detach().tolist() == [
        -1.0,  # now w = -1, m = 0.25 > 0 opposes it: stays
        1.0,
        1.0,
        -1.0,
        1.0,  # at the boundary again: stays
        -1.0,  # 0.28125 > 0.25: flip
    ]
    assert opt.param_groups[0]["step"] == 2


def test_bop_tau_boundary_just_above_and_below():
    tau = 0.25
    above = torch.nextafter(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)).item()
    below = torch.nextafter(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)).item()
    # m = g / 2 with gamma = 1/2: g = 0.5 gives m = tau exactly
    w, _, _ = one_step([1.0, 1.0, 1.0, -1.0, -1.0, -1.0], [below, 0.5, above, -below, -0.5, -above], 0.5, tau)
    assert w == [1.0, 1.0, -1.0, -1.0, -1.0, 1.0]


def test_bop_equals_larq_closed_form_off_the_boundary():
    # Larq: m <- m + gamma (g - m); w <- sign(-sign(w m - tau) w) with sign(0) = +1, on +-1 weights
    torch.manual_seed(0)
    w = torch.where(torch.rand(1000) < 0.5, -1.0, 1.0).double()
    m = torch.randn(1000, dtype=torch.float64) * 1e-3
    g = torch.randn(1000, dtype=torch.float64)
    gamma, tau = 1e-3, 1e-3
    m_larq = m + gamma * (g - m)
    larq_w = torch.sign(torch.sign(-torch.sign(w * m_larq - tau) * w) + 0.1)
    new_w, new_m, _ = one_step(w.tolist(), g.tolist(), gamma, tau, m=m.tolist())
    torch.testing.assert_close(torch.tensor(new_m, dtype=torch.float64), m_larq, rtol=1e-12, atol=1e-18)
    assert not torch.isclose(w * m_larq, torch.tensor(tau, dtype=torch.float64), rtol=0, atol=1e-15).any()
    assert torch.equal(torch.tensor(new_w, dtype=torch.float64), larq_w)
    assert 0 < int((torch.tensor(new_w) != w.float()).sum()) < 1000  # some flipped, not all


def test_bop_gamma_and_threshold_schedules():
    p = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = Bop([p], gamma=0.5, threshold=1.0, gamma_schedule=lambda t: 0.5**t, threshold_schedule=lambda t: 1.0 - 0.5 * t)
    p.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert opt.hyper_parameters(opt.param_groups[0]) == (0.5, 1.0)
    opt.step()  # gamma_0 = 0.5, tau_0 = 1: m = 0.5, no flip
    assert opt.state[p]["m"].tolist() == [0.5, 0.5] and p.detach().tolist() == [1.0, 1.0]
    assert opt.hyper_parameters(opt.param_groups[0]) == (0.25, 0.5)
    p.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    opt.step()  # gamma_1 = 0.25: m = [0.625, 0.125]; tau_1 = 0.5: the first flips
    assert opt.state[p]["m"].tolist() == [0.625, 0.125] and p.detach().tolist() == [-1.0, 1.0]


def test_bop_skips_parameters_without_gradient_and_binarizes_on_the_first_step():
    a, b = nn.Parameter(torch.tensor([0.3, -0.2])), nn.Parameter(torch.tensor([0.7]))
    opt = Bop([a, b])
    a.grad = torch.zeros(2)
    opt.step()
    assert a.detach().tolist() == [1.0, -1.0] and b.detach().tolist() == [pytest.approx(0.7)]
    assert b not in opt.state


@pytest.mark.parametrize("kw", [{"gamma": 0.0}, {"gamma": 1.5}, {"gamma": True}, {"threshold": -1e-8}, {"threshold": float("inf")}])
def test_bop_rejects_bad_hyper_parameters(kw):
    with pytest.raises(ValueError, match="gamma" if "gamma" in kw else "threshold"):
        Bop([nn.Parameter(torch.zeros(2))], **kw)


def test_bop_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3) for _ in range(6)]
    p = nn.Parameter(torch.randn(5, 3))
    opt = Bop([p], gamma=0.3, threshold=0.05)
    for g in grads[:3]:
        p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"w": p.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    q = nn.Parameter(saved["w"])
    resumed = Bop([q], gamma=0.3, threshold=0.05)
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["step"] == 3
    for g in grads[3:]:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    assert torch.equal(p, q) and torch.equal(opt.state[p]["m"], resumed.state[q]["m"])


# --- CaseOptimizer ------------------------------------------------------------------------------


def binary_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), BinaryLinear(8, 8, weight_quantizer="ste_sign"), nn.BatchNorm1d(8), nn.Linear(8, 3))


def _split(model):
    binary = [p for _, p in binary_weights(model)]
    rest = [p for p in model.parameters() if all(p is not b for b in binary)]
    return binary, rest


def _train(model, optimizer, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_case_optimizer_steps_each_case_as_it_would_alone():
    torch.manual_seed(0)
    model = binary_mlp()
    twin = binary_mlp()
    twin.load_state_dict(model.state_dict())
    binary, rest = _split(model)
    case = CaseOptimizer({"binary": Bop(binary, gamma=0.1, threshold=1e-4), "rest": torch.optim.Adam(rest, lr=1e-2)})
    t_binary, t_rest = _split(twin)
    alone = [Bop(t_binary, gamma=0.1, threshold=1e-4), torch.optim.Adam(t_rest, lr=1e-2)]

    class Both:
        def zero_grad(self):
            for o in alone:
                o.zero_grad()

        def step(self):
            for o in alone:
                o.step()

    _train(model, case, 5)
    _train(twin, Both(), 5)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), name
    assert set(model[2].weight.detach().unique().tolist()) == {-1.0, 1.0}  # Bop's weights are binary
    assert len(case.param_groups) == 2 and case.state[model[2].weight]["m"].shape == (8, 8)


def test_case_optimizer_state_round_trips_through_a_checkpoint():
    torch.manual_seed(0)
    model = binary_mlp()
    make = lambda m: case_optimizer(
        m, [("binary", ["binary"], lambda ps: Bop(ps, gamma=0.1, threshold=1e-4))], default=lambda ps: torch.optim.Adam(ps, lr=1e-2)
    )
    optimizer = make(model)
    _train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and values only
    resumed_model = binary_mlp()
    resumed_model.load_state_dict(saved["model"])
    resumed = make(resumed_model)
    resumed.load_state_dict(saved["optimizer"])
    _train(model, optimizer, 4, seed=1)
    _train(resumed_model, resumed, 4, seed=1)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="single optimizer's"):
        resumed.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())
    with pytest.raises(ValueError, match="cases"):
        CaseOptimizer({"other": torch.optim.SGD(model.parameters(), lr=0.1)}).load_state_dict(saved["optimizer"])


def test_overlapping_cases_are_an_error():
    model = binary_mlp()
    with pytest.raises(ValueError, match="'2.weight' is selected by cases 'binary' and 'weights'"):
        case_optimizer(model, [("binary", ["binary"], Bop), ("weights", ["*.weight"], lambda ps: torch.optim.SGD(ps, lr=0.1))])
    p = model[0].weight
    with pytest.raises(ValueError, match="updated twice"):
        CaseOptimizer({"a": torch.optim.SGD([p], lr=0.1), "b": torch.optim.SGD([p], lr=0.1)})
    with pytest.raises(ValueError, match="no default optimizer"):
        case_optimizer(model, [("binary", ["binary"], Bop)])


def test_case_optimizer_works_with_torch_lr_schedulers_and_refuses_new_groups():
    model = binary_mlp()
    binary, rest = _split(model)
    case = CaseOptimizer({"binary": Bop(binary), "rest": torch.optim.SGD(rest, lr=0.1)})
    scheduler = torch.optim.lr_scheduler.StepLR(case, step_size=1, gamma=0.5)
    _train(model, case, 1)
    scheduler.step()
    assert case.optimizers["rest"].param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(TypeError, match="one of the cases"):
        case.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_case_optimizer_param_groups_stay_the_cases_after_load_state_dict():
    """load_state_dict gives each case new group dicts; setting lr through the CaseOptimizer must still reach them."""
    model = binary_mlp()
    binary, rest = _split(model)
    case = CaseOptimizer({"binary": Bop(binary), "rest": torch.optim.SGD(rest, lr=0.1)})
    case.load_state_dict(case.state_dict())
    for group in case.param_groups:
        group["lr"] = 0.25
    assert case.optimizers["rest"].param_groups[0]["lr"] == 0.25
    assert case.param_groups[1] is case.optimizers["rest"].param_groups[0]
