"""The toy objective's fast paths against their naive references (small sizes, float64 unless stated).

- ``losses``: batched population evaluation vs one ``loss`` call per member;
- ``coordinate_deltas`` (CDG/DG): flip-only recomputation vs two full evaluations per coordinate;
- ``line_losses`` (lr scans): breakpoints / polynomial vs ``loss(w − lr·d)`` for every lr,
  including exact sign ties at 0 (sign(0) = +1).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import lowbit.probe.toy as toy
from lowbit.estimators import Objective, get_estimator
from lowbit.probe.toy import ToyActivation, ToyObjective, ToyTask

ACTS = ["ste", "none", "step01", {"name": "uniform_act", "levels": 2}, {"name": "ste_tern", "threshold": 0.2}]
DEPTHS = [1, 2, 3, 4]


def objective(act="ste", depth=3, dim=5, batch=120, layers="all", seed=0, dtype=torch.float64):
    return ToyTask(dim, depth=depth, act=act, batch_size=batch, seed=seed, dtype=dtype).objective(layers=layers)


def naive_losses(obj, stacked):
    pop = next(iter(stacked.values())).shape[0]
    with torch.no_grad():
        return torch.tensor([float(obj.loss({k: v[i] for k, v in stacked.items()})) for i in range(pop)], dtype=torch.float64)


def naive_deltas(obj, steps, params=None):
    """Two full loss evaluations per coordinate: L(w + s e_i) − L(w)."""
    point = obj.with_params(params)
    out = {}
    with torch.no_grad():
        base = float(obj.loss(point))
        for name, w in point.items():
            d = torch.empty(len(steps), w.numel(), dtype=torch.float64)
            for si, s in enumerate(steps):
                for i in range(w.numel()):
                    moved = w.clone().reshape(-1)
                    moved[i] += s
                    d[si, i] = float(obj.loss({**point, name: moved.reshape(w.shape)})) - base
            out[name] = d.reshape(len(steps), *w.shape)
    return out


def naive_line(obj, direction, lrs):
    with torch.no_grad():
        return torch.tensor(
            [float(obj.loss({k: obj.params[k] - float(lr) * direction.get(k, torch.zeros_like(p)) for k, p in obj.params.items()}))
             for lr in lrs],
            dtype=torch.float64,
        )


def random_like(params, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


# --- losses --------------------------------------------------------------------------


LAYER_CHOICES = [(1, "all"), (3, "all"), (3, [0]), (3, [1]), (3, [2]), (3, [0, 2])]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("depth, layers", LAYER_CHOICES)
def test_batched_losses_equal_the_member_loop(act, depth, layers):
    obj = objective(act, depth, layers=layers)
    stacked = {k: v[None] + torch.stack([random_like(obj.params, 0.3, 10 + i)[k] for i in range(7)]) for k, v in obj.params.items()}
    torch.testing.assert_close(obj.losses(stacked), naive_losses(obj, stacked), rtol=1e-12, atol=1e-14)


def test_batched_losses_do_not_depend_on_the_chunk_size(monkeypatch):
    obj = objective("ste", 3, dim=4, batch=300)
    stacked = {k: v[None] + 0.2 * torch.randn(33, *v.shape, dtype=v.dtype) for k, v in obj.params.items()}
    reference = obj.losses(stacked)
    for numbers, rows in ((64, 7), (1000, 50), (5000, 4096)):
        monkeypatch.setattr(toy, "CACHE_NUMBERS", numbers)
        monkeypatch.setattr(toy, "CHUNK_ROWS", rows)
        torch.testing.assert_close(obj.losses(stacked), reference, rtol=1e-12, atol=1e-14)


def test_float32_losses_agree_with_the_loop():
    obj = objective("ste", 3, dim=6, batch=200, dtype=torch.float32)
    stacked = {k: v[None] + 0.2 * torch.randn(9, *v.shape) for k, v in obj.params.items()}
    torch.testing.assert_close(obj.losses(stacked), naive_losses(obj, stacked), rtol=1e-5, atol=1e-6)


# --- coordinate_deltas ---------------------------------------------------------------


@pytest.mark.parametrize("act, depth", list(itertools.product(ACTS, DEPTHS)))
def test_coordinate_deltas_equal_two_full_evaluations_per_coordinate(act, depth):
    obj = objective(act, depth, dim=4, batch=150)
    steps = (0.3, -0.3, 0.05)
    fast = obj.coordinate_deltas(steps)
    slow = naive_deltas(obj, steps)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-9, atol=1e-13)


def test_coordinate_deltas_at_a_moved_point():
    obj = objective("ste", 3, dim=4, batch=150)
    point = {k: v + r for (k, v), r in zip(obj.params.items(), random_like(obj.params, 0.2, 3).values())}
    fast = obj.coordinate_deltas((0.1, -0.1), point)
    slow = naive_deltas(obj, (0.1, -0.1), point)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-9, atol=1e-13)


def test_generic_activation_falls_back_to_the_batched_path():
    obj = objective({"name": "ste_tern", "threshold_mode": "mean"}, 3, dim=3, batch=60)
    assert obj.activation.kind == "generic"
    fast = obj.coordinate_deltas((0.2, -0.2))
    slow = naive_deltas(obj, (0.2, -0.2))
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-9, atol=1e-13)


def test_cdg_fast_path_equals_the_generic_path():
    obj = objective("swish_sign", 3, dim=5, batch=200)
    fast = get_estimator("cdg", eps=0.1).estimate(obj)
    generic = {k: (d[0] - d[1]) / 0.2 for k, d in Objective.coordinate_deltas(obj, (0.1, -0.1)).items()}
    for k in fast:
        torch.testing.assert_close(fast[k], generic[k], rtol=1e-9, atol=1e-12)


def test_first_layer_sign_path_with_ties_at_zero():
    # Integer data and weights: pre-activations hit 0 exactly, before and after the move.
    x = torch.tensor([[1.0, -2.0, 0.0], [2.0, 1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    w0 = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, -1.0, 1.0]], dtype=torch.float64)
    w1 = torch.tensor([[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    w2 = torch.eye(3, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64).repeat(4, 1)
    obj = ToyObjective([w0, w1, w2], ToyActivation("ste"), x, y, [0, 1])
    steps = (1.0, -1.0, 2.0, -0.5)
    fast = obj.coordinate_deltas(steps)
    slow = naive_deltas(obj, steps)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=0, atol=1e-14)


# --- line_losses ---------------------------------------------------------------------

LRS = torch.cat(
    [torch.linspace(0.0, 0.6, 150, dtype=torch.float64), torch.tensor([0.05, 0.05, -0.2, 1.5, 0.0], dtype=torch.float64)]
)  # unsorted, duplicated, zero, negative


@pytest.mark.parametrize("act, depth", list(itertools.product(ACTS, DEPTHS)))
@pytest.mark.parametrize("which", ["first", "last", "all"])
def test_line_losses_equal_the_naive_scan(act, depth, which):
    obj = objective(act, depth, dim=4, batch=100)
    names = list(obj.params)
    chosen = {"first": names[:1], "last": names[-1:], "all": names}[which]
    direction = {k: v for k, v in random_like(obj.params, 1.0, 7).items() if k in chosen}
    torch.testing.assert_close(obj.line_losses(direction, LRS), naive_line(obj, direction, LRS), rtol=1e-10, atol=1e-13)


def test_line_losses_of_a_zero_direction_are_the_loss():
    obj = objective("ste", 3)
    zero = {k: torch.zeros_like(v) for k, v in obj.params.items()}
    torch.testing.assert_close(obj.line_losses(zero, LRS), naive_line(obj, zero, LRS))


def test_line_losses_with_exact_sign_ties():
    # z = a − lr·b hits 0 exactly on grid lrs (a = 1, b = 2, lr = 0.5 ...): sign(0) = +1 on both paths.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    w0 = torch.tensor([[1.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    d0 = torch.tensor([[2.0, 0.0], [0.5, 4.0]], dtype=torch.float64)
    w1 = torch.tensor([[1.0, -2.0], [0.5, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.5, -1.0]], dtype=torch.float64).repeat(4, 1)
    lrs = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, -0.5, -1.0], dtype=torch.float64)
    for act in ("ste", "step01"):
        obj = ToyObjective([w0, w1], ToyActivation(act), x, y, [0, 1])
        for direction in ({"layers.0.weight": d0}, {"layers.0.weight": d0, "layers.1.weight": d0.flip(0)}):
            torch.testing.assert_close(obj.line_losses(direction, lrs), naive_line(obj, direction, lrs), rtol=0, atol=1e-15)


def test_line_losses_split_rows_in_chunks(monkeypatch):
    obj = objective("ste", 3, dim=4, batch=90)
    direction = random_like(obj.params, 1.0, 1)
    reference = obj.line_losses(direction, LRS)
    monkeypatch.setattr(toy, "SEGMENT_ROWS", 7)
    torch.testing.assert_close(obj.line_losses(direction, LRS), reference, rtol=1e-12, atol=1e-14)


def test_float32_line_losses_are_the_exact_scan():
    # The scan runs in float64 whatever the objective's dtype: a float32 objective gets the same
    # values as a float64 copy of its weights and data, and agrees with a float32 naive scan to
    # float32 precision (with few samples, no pre-activation lies within rounding of 0).
    obj = objective("ste", 3, dim=5, batch=60, dtype=torch.float32)
    direction = {"layers.0.weight": torch.randn(5, 5), "layers.2.weight": torch.randn(5, 5)}
    lrs = torch.linspace(0, 0.3, 40, dtype=torch.float64)
    exact = ToyObjective([w.double() for w in obj.weights], obj.activation, obj.x.double(), obj.y.double(), obj.layers)
    ours = obj.line_losses(direction, lrs)
    torch.testing.assert_close(ours, exact.line_losses({k: v.double() for k, v in direction.items()}, lrs), rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, naive_line(obj, direction, lrs), rtol=2e-6, atol=1e-7)


def test_results_do_not_depend_on_the_number_of_workers(monkeypatch):
    for name, value in (("CACHE_NUMBERS", 256), ("CHUNK_ROWS", 50), ("SEGMENT_ROWS", 40), ("MASK_NUMBERS", 160)):
        monkeypatch.setattr(toy, name, value)  # many small chunks, so that both workers get some
    obj = objective("ste", 3, dim=4, batch=300)
    stacked = {k: v[None] + 0.2 * torch.randn(20, *v.shape, dtype=v.dtype) for k, v in obj.params.items()}
    direction = random_like(obj.params, 1.0, 2)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            runs.append((obj.losses(stacked), obj.coordinate_deltas((0.1, -0.1)), obj.line_losses(direction, LRS)))
        finally:
            torch.set_num_threads(1)
    (a_losses, a_deltas, a_line), (b_losses, b_deltas, b_line) = runs
    assert torch.equal(a_losses, b_losses) and torch.equal(a_line, b_line)
    assert all(torch.equal(a_deltas[k], b_deltas[k]) for k in a_deltas)
