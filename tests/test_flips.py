"""Estimators for binary weights and per-coordinate steps, against naive flip-and-evaluate loops,
exact enumerations and hand-checked rules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.estimators import CDG, GraphObjective, ModuleObjective, get_estimator, use_batch_statistics
from lowbit.estimators.objective import generic_coordinate_deltas
from lowbit.probe.toy import ToyTask
from lowbit.probe.toy_binary import BinaryWeightToyObjective, binarize
from lowbit.quant import xnor_weight

ACTS = ["ste", "step01", {"name": "uniform_act", "levels": 3}, "none"]


def binary_task(act="ste", dim=4, depth=3, batch=96, seed=1):
    return ToyTask(dim, depth=depth, act=act, batch_size=batch, seed=seed, dtype=torch.float64, weights="binary")


def naive_flips(task, names, batch=0):
    """ΔL of negating each latent weight, one forward of the student module (nn.Module) per flip."""
    x, y = task.batch(batch)
    params = dict(task.student.named_parameters())
    with torch.no_grad():
        base = float(F.mse_loss(task.student(x), y))
        out = {}
        for name in names:
            w = params[name]
            deltas = torch.empty_like(w, dtype=torch.float64)
            for i, j in itertools.product(range(w.shape[0]), range(w.shape[1])):
                old = w[i, j].clone()
                w[i, j] = -old
                deltas[i, j] = float(F.mse_loss(task.student(x), y)) - base
                w[i, j] = old
            out[name] = deltas
    return out


# --- the binary-weight toy ------------------------------------------------------------


def test_binary_weight_toy_is_the_xnor_student_module():
    task = binary_task()
    objective = task.objective()
    assert isinstance(objective, BinaryWeightToyObjective)
    x, y = task.batch(0)
    assert float(objective.loss().detach()) == pytest.approx(float(F.mse_loss(task.student(x), y).detach()), abs=1e-14)
    w = objective.params["layers.1.weight"]
    assert torch.equal(binarize(w), xnor_weight(w))  # the batched binarisation is the quantizer's
    # the latent weights are those of the real-weight student at the same seed, the teacher too
    real = ToyTask(4, depth=3, batch_size=96, seed=1, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(real.student_weights(), task.student_weights()))
    assert torch.equal(real.batch(0)[1], task.batch(0)[1])
    # population losses equal one loss per member
    stacked = {k: torch.stack([v, -v, 2 * v]) for k, v in objective.params.items()}
    singles = [float(objective.loss({k: s[i] for k, s in stacked.items()})) for i in range(3)]
    assert torch.allclose(objective.losses(stacked), torch.tensor(singles, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_single_flip_cdg_equals_a_naive_flip_and_evaluate_loop(act):
    task = binary_task(act)
    objective = task.objective()
    estimator = get_estimator("flip_cdg")
    g = estimator.estimate(objective)
    reference = naive_flips(task, objective.params)
    for name, w in objective.params.items():
        assert torch.allclose(estimator.last_deltas[name], reference[name], atol=1e-12, rtol=0), name
        assert torch.allclose(g[name].double(), reference[name] / (-2 * w), atol=1e-10, rtol=0)
    assert max(float(r.abs().max()) for r in reference.values()) > 1e-3  # not vacuous: flips change the loss


def test_flip_cdg_generic_path_equals_the_fast_path_and_a_subset():
    task = binary_task()
    objective = task.objective()
    fast = objective.flip_deltas()
    from lowbit.estimators.flips import flip_steps

    generic = generic_coordinate_deltas(objective, [flip_steps(objective.params)])
    for name in fast:
        assert torch.allclose(fast[name], generic[name][0], atol=1e-12, rtol=0)
    estimator = get_estimator("flip_cdg", coords=10)
    g = estimator.estimate(objective, torch.Generator().manual_seed(0))
    mask = estimator.last_subset
    assert sum(int(m.sum()) for m in mask.values()) == 10
    for name in g:
        assert torch.allclose(estimator.last_deltas[name][mask[name]], fast[name][mask[name]], atol=1e-12)
        assert torch.all(g[name][~mask[name]] == 0)


def test_a_zero_latent_weight_has_no_flip():
    task = binary_task(dim=3, depth=2)
    with torch.no_grad():
        task.student.layers[0].weight[1, 2] = 0.0
    objective = task.objective()
    deltas = objective.flip_deltas()
    assert deltas["layers.0.weight"][1, 2] == 0
    assert naive_flips(task, ["layers.0.weight"])["layers.0.weight"][1, 2] == 0
    assert get_estimator("flip_cdg").estimate(objective)["layers.0.weight"][1, 2] == 0


def test_flip_cdg_on_real_weights_negates_each_weight():
    task = ToyTask(3, depth=2, batch_size=64, seed=2, dtype=torch.float64)
    objective = task.objective()
    estimator = get_estimator("flip_cdg")
    estimator.estimate(objective)
    assert torch.allclose(estimator.last_deltas["layers.0.weight"], naive_flips(task, ["layers.0.weight"])["layers.0.weight"], atol=1e-12)


def test_flip_cdg_on_an_xnor_conv_layer_equals_a_naive_loop():
    from test_probe_network import tiny_cnn_batch

    model, (x, y) = tiny_cnn_batch()
    name = "conv1.weight"
    objective = GraphObjective(model, (x, y), params=[name])
    assert objective.folded, objective.fallback_reason
    estimator = get_estimator("flip_cdg", coords=40)
    estimator.estimate(objective, torch.Generator().manual_seed(1))
    w = dict(model.named_parameters())[name].detach()
    base = float(F.cross_entropy(model(x), y).detach())
    mask = estimator.last_subset[name]
    changed = 0
    with torch.no_grad():
        for index in torch.nonzero(mask.reshape(-1)).reshape(-1).tolist():
            moved = w.clone().reshape(-1)
            moved[index] = -moved[index]
            logits = torch.func.functional_call(model, {name: moved.reshape(w.shape)}, (x,))
            want = float(F.cross_entropy(logits, y)) - base
            assert float(estimator.last_deltas[name].reshape(-1)[index]) == pytest.approx(want, abs=1e-12)
            changed += abs(want) > 1e-9
    assert changed >= 10  # most flips change the loss: the comparison is not vacuous


# --- per-coordinate and per-layer steps -------------------------------------------------


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_toy_coordinate_deltas_take_per_coordinate_and_per_layer_steps(act):
    task = ToyTask(4, depth=3, act=act, batch_size=64, seed=3, dtype=torch.float64)
    objective = task.objective()
    g = torch.Generator().manual_seed(0)
    per_row = {k: (torch.rand(4, 1, generator=g, dtype=torch.float64) + 0.1) * torch.randn(4, 4, generator=g).sign().double()
               for k in objective.params}
    anything = {k: torch.randn(4, 4, generator=g, dtype=torch.float64) for k in objective.params}
    per_layer = {k: 0.1 * (i + 1) for i, k in enumerate(objective.params)}
    steps = [per_row, anything, per_layer, -0.2]
    fast = objective.coordinate_deltas(steps)
    x, y = task.batch(0)
    with torch.no_grad():
        base = float(F.mse_loss(task.student(x), y))
        params = dict(task.student.named_parameters())
        for si, step in enumerate(steps):
            for name in objective.params:
                value = step if isinstance(step, float) else step[name]
                for i, j in [(0, 0), (1, 3), (3, 2)]:
                    s = float(value if isinstance(value, float) else value[i, j])
                    params[name][i, j] += s
                    want = float(F.mse_loss(task.student(x), y)) - base
                    params[name][i, j] -= s
                    assert float(fast[name][si, i, j]) == pytest.approx(want, abs=1e-12), (si, name, i, j)


def test_relative_cdg_uses_eps_times_mean_abs_weight_per_layer():
    task = ToyTask(4, depth=3, batch_size=64, seed=0, dtype=torch.float64)
    objective = task.objective()
    relative = get_estimator("cdg", eps=0.2, relative=True).estimate(objective)
    for name, w in objective.params.items():
        eps = 0.2 * float(w.abs().mean())
        single = task.objective(layers=[int(name.split(".")[1])])
        assert torch.allclose(relative[name], CDG(eps=eps).estimate(single)[name], atol=1e-12, rtol=0), name
    with pytest.raises(ValueError, match="all zeros"):
        zero = ToyTask(2, depth=1, batch_size=8, dtype=torch.float64)
        with torch.no_grad():
            zero.student.layers[0].weight.zero_()
        get_estimator("cdg", relative=True).estimate(zero.objective())


def test_relative_cdg_on_a_network_subset_equals_the_absolute_step():
    from test_probe_network import tiny_cnn_batch

    model, batch = tiny_cnn_batch()
    objective = GraphObjective(model, batch, params=["conv2.weight"])
    eps = 0.5 * float(objective.params["conv2.weight"].abs().mean())
    rel = get_estimator("cdg", eps=0.5, relative=True, coords=12).estimate(objective, torch.Generator().manual_seed(4))
    ab = get_estimator("cdg", eps=eps, coords=12).estimate(objective, torch.Generator().manual_seed(4))
    assert torch.allclose(rel["conv2.weight"], ab["conv2.weight"], atol=1e-12, rtol=0)


# --- Bernoulli NES ------------------------------------------------------------------------


def test_bernoulli_nes_is_unbiased_for_the_exact_flip_derivative():
    """D_i = E[L | flip i] − E[L | no flip i] by enumerating all 2^6 flip patterns."""
    task = binary_task(dim=2, depth=1, batch=64, seed=4, act="ste")  # 4 weights, one layer
    task2 = binary_task(dim=2, depth=2, batch=64, seed=4)
    for t in (task, task2):
        objective = t.objective()
        w = torch.cat([v.reshape(-1) for v in objective.params.values()])
        n, p = w.numel(), 0.2
        patterns = torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.bool)  # (2^n, n)
        members = torch.where(patterns, -w, w)
        split = dict(zip(objective.params, members.split([v.numel() for v in objective.params.values()], dim=1)))
        losses = objective.losses({k: v.reshape(len(patterns), *objective.params[k].shape) for k, v in split.items()})
        prob = torch.where(patterns, p, 1 - p).prod(1).double()  # P(m)
        exact = torch.stack([
            (prob * losses * patterns[:, i]).sum() / p - (prob * losses * ~patterns[:, i]).sum() / (1 - p) for i in range(n)
        ])
        estimator = get_estimator("bernoulli_nes", population=4000, flip_prob=p)
        runs = torch.stack([
            torch.cat([v.reshape(-1) for v in estimator.estimate(objective, torch.Generator().manual_seed(s)).values()]).double()
            for s in range(40)
        ]) * (-2 * w)  # back to D̂
        mean, se = runs.mean(0), runs.std(0) / math.sqrt(len(runs))
        assert torch.all((mean - exact).abs() <= 4 * se + 1e-12), (mean, exact, se)
        assert exact.abs().max() > 10 * se.max()  # the check has power


def test_bernoulli_nes_tends_to_flip_cdg_as_p_goes_to_zero():
    task = binary_task(dim=3, depth=2)
    objective = task.objective()
    flip = get_estimator("flip_cdg").estimate(objective)
    nes = get_estimator("bernoulli_nes", population=20000, flip_prob=0.002).estimate(objective, torch.Generator().manual_seed(0))
    from lowbit.probe.measure import cosine

    assert cosine(flip, nes) > 0.9


# --- Bop --------------------------------------------------------------------------------


def test_bop_flips_where_the_momentum_passes_the_threshold_with_the_weights_sign():
    task = binary_task(dim=4, depth=3)
    objective = task.objective()
    grad = get_estimator("ste", surrogate="ste").estimate(objective)
    gamma = 1e-3
    threshold = gamma * float(torch.cat([g.abs().reshape(-1) for g in grad.values()]).median())
    bop = get_estimator("bop", gamma=gamma, threshold=threshold)
    g = bop.estimate(objective)
    flipped = 0
    for name, w in objective.params.items():
        want = (gamma * grad[name].abs() > threshold) & (grad[name].sign() == torch.where(w >= 0, 1.0, -1.0).double())
        assert torch.equal(bop.last_flips[name], want)
        # lr = 1 is the flipped point: the chosen latent weights negated, the others kept
        assert torch.allclose(w - g[name], torch.where(want, -w, w))
        flipped += int(want.sum())
    assert 0 < flipped < objective.numel()


def test_new_estimators_reject_bad_values():
    for name, params, quoted in [
        ("bernoulli_nes", {"flip_prob": 1.0}, "flip_prob"),
        ("bernoulli_nes", {"population": 1}, "population"),
        ("bop", {"threshold": 0}, "threshold"),
        ("flip_cdg", {"coords": 0}, "coords"),
        ("cdg", {"relative": "yes"}, "relative"),
        ("snes", {"final": "last"}, "last"),
        ("snes", {"population": 5}, "even"),
    ]:
        with pytest.raises(ValueError, match=quoted):
            get_estimator(name, **params)


def test_a_subset_seed_makes_estimators_measure_the_same_coordinates():
    objective = binary_task(dim=4).objective()
    cdg = get_estimator("cdg", eps=0.5, relative=True, coords=9, subset_seed=3)
    flip = get_estimator("flip_cdg", coords=9, subset_seed=3)
    cdg.estimate(objective, torch.Generator().manual_seed(0))
    flip.estimate(objective, torch.Generator().manual_seed(1))  # another generator, the same subset
    assert all(torch.equal(cdg.last_subset[k], flip.last_subset[k]) for k in objective.params)
    other = get_estimator("flip_cdg", coords=9)
    other.estimate(objective, torch.Generator().manual_seed(1))
    assert not all(torch.equal(other.last_subset[k], flip.last_subset[k]) for k in objective.params)
