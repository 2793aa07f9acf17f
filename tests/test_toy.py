"""lowbit.probe.toy: the teacher–student task — determinism, equivalence with toy_mlp, validation, pretraining."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.estimators import get_estimator
from lowbit.probe.linesearch import line_search, notes_lr_grid
from lowbit.probe.toy import ToyTask, layer_name

ACTS = ["ste", "swish_sign", "none", "step01", {"name": "uniform_act", "levels": 2}, {"name": "uniform_act", "levels": 3}]


def test_batches_are_deterministic_per_seed_and_batch():
    a = ToyTask(5, batch_size=30, seed=7)
    b = ToyTask(5, batch_size=30, seed=7)
    xa, ya = a.batch(2)
    a.batch(0)  # drawing other batches first changes nothing
    xb, yb = b.batch(2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(1)[0], xa)
    assert not torch.equal(ToyTask(5, batch_size=30, seed=8).batch(2)[0], xa)
    assert torch.equal(a.objective(batch=2).x, xa)


def test_the_global_rng_is_left_alone():
    state = torch.get_rng_state()
    task = ToyTask(4, batch_size=10, seed=3)
    task.batch(0)
    task.pretrain(steps=2, batch_size=8)
    assert torch.equal(torch.get_rng_state(), state)


def test_teacher_student_and_data_are_shared_across_student_activations():
    tasks = [ToyTask(6, act=act, batch_size=20, seed=1) for act in ("ste", "none", "step01")]
    for task in tasks[1:]:
        for l in range(3):
            assert torch.equal(task.teacher.layers[l].weight, tasks[0].teacher.layers[l].weight)
            assert torch.equal(task.student.layers[l].weight, tasks[0].student.layers[l].weight)
        assert torch.equal(task.batch(0)[1], tasks[0].batch(0)[1])
    # teacher and student are initialised independently
    assert not torch.equal(tasks[0].teacher.layers[0].weight, tasks[0].student.layers[0].weight)


def test_labels_come_from_the_binary_teacher():
    task = ToyTask(4, act="none", batch_size=25, seed=2)
    x, y = task.batch(0)
    h = x
    for l, layer in enumerate(task.teacher.layers):
        h = h @ layer.weight.T
        if l < 2:
            h = torch.where(h >= 0, 1.0, -1.0)
    torch.testing.assert_close(y, h)
    same = ToyTask(4, act="none", batch_size=25, seed=2, teacher_act="same")
    torch.testing.assert_close(same.batch(0)[1], same.teacher(x))
    assert not torch.allclose(same.batch(0)[1], y)  # a linear teacher


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_objective_equals_the_toy_mlp_module(act, dtype):
    task = ToyTask(6, depth=3, act=act, batch_size=50, seed=4, dtype=dtype)
    objective = task.objective()
    with torch.no_grad():
        reference = F.mse_loss(task.student(objective.x), objective.y)
    assert torch.equal(objective.loss().detach(), reference)
    stacked = {k: v.unsqueeze(0) for k, v in objective.params.items()}
    torch.testing.assert_close(objective.losses(stacked), reference.double().reshape(1))
    assert set(objective.params) == {layer_name(l) for l in range(3)}
    assert list(task.objective(layers=[2, 0]).params) == ["layers.0.weight", "layers.2.weight"]


def test_gradients_flow_through_the_students_own_backward():
    task = ToyTask(5, act="ste_clipped", batch_size=40, seed=0, dtype=torch.float64)
    objective = task.objective()
    ours = get_estimator("ste", surrogate=None).estimate(objective)
    task.student.zero_grad()
    F.mse_loss(task.student(objective.x), objective.y).backward()
    for l, layer in enumerate(task.student.layers):
        torch.testing.assert_close(ours[layer_name(l)], layer.weight.grad)


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.5}, "2.5"),
        ({"dim": 4, "depth": 0}, "depth"),
        ({"dim": 4, "batch_size": 0}, "batch_size"),
        ({"dim": 4, "seed": -1}, "-1"),
        ({"dim": 4, "act": "stochastic_sign"}, "random"),
        ({"dim": 4, "act": "sgn"}, "sgn"),
    ],
)
def test_bad_task_settings_raise(kwargs, quoted):
    with pytest.raises(ValueError, match=quoted):
        ToyTask(**kwargs)


def test_every_bad_setting_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        ToyTask(0, depth=0, batch_size=-3)
    message = str(info.value)
    assert "dim" in message and "depth" in message and "-3" in message


@pytest.mark.parametrize("layers", [[3], [-1], [0, 5], "first", []])
def test_missing_layers_raise_with_the_valid_range(layers):
    task = ToyTask(4, depth=3, batch_size=5)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        task.objective(layers=layers)


def test_bad_batch_index_raises():
    with pytest.raises(ValueError, match="-2"):
        ToyTask(4, batch_size=5).objective(batch=-2)


def test_pretraining_lowers_the_loss_and_is_deterministic():
    a = ToyTask(6, act="ste", batch_size=256, seed=0)
    before = a.objective(batch=0)
    history = a.pretrain(steps=60, batch_size=128, lr=1e-2)
    assert len(history) == 60 and a.pretrained_steps == 60
    assert sum(history[-10:]) / 10 < sum(history[:10]) / 10
    assert float(a.objective(batch=0).loss()) < float(before.loss())
    # the objective built before pretraining is a snapshot
    assert torch.equal(before.params["layers.0.weight"], ToyTask(6, act="ste", batch_size=256, seed=0).student.layers[0].weight)
    b = ToyTask(6, act="ste", batch_size=256, seed=0)
    b.pretrain(steps=60, batch_size=128, lr=1e-2)
    for l in range(3):
        assert torch.equal(a.student.layers[l].weight, b.student.layers[l].weight)


@pytest.mark.parametrize("optimizer", ["sgd", "sgdm"])
def test_pretraining_with_other_estimators_and_optimizers(optimizer):
    task = ToyTask(3, act="step01", batch_size=64, seed=1)
    history = task.pretrain(steps=3, batch_size=32, estimator={"name": "ste", "surrogate": None}, optimizer=optimizer, lr=0.1)
    assert len(history) == 3
    task.pretrain(steps=2, batch_size=32, estimator=get_estimator("nes", population=8), layers=[0])
    assert task.pretrained_steps == 5


def test_pretrain_validates_its_arguments():
    task = ToyTask(3, batch_size=8)
    with pytest.raises(ValueError) as info:
        task.pretrain(steps=-1, optimizer="lbfgs", lr=0)
    message = str(info.value)
    assert "-1" in message and "lbfgs" in message and "lr" in message


def test_line_search_on_the_notes_grid():
    grid = notes_lr_grid()
    assert len(grid) == 10_000 and grid[0] == 1e-5 and float(grid[-1]) == pytest.approx(0.1, rel=1e-15)
    objective = ToyTask(4, batch_size=200, seed=0, dtype=torch.float64).objective(layers=[0])
    gradient = get_estimator("ste").estimate(objective)
    result = line_search(objective, gradient)
    assert result.losses.shape == grid.shape
    assert result.best_loss == float(result.losses.min()) and result.best_decrease >= float(result.decrease[0])
    length = float(gradient["layers.0.weight"].norm())
    moved = {"layers.0.weight": objective.params["layers.0.weight"] - result.best_lr * gradient["layers.0.weight"] / length}
    assert float(objective.loss(moved)) == pytest.approx(result.best_loss, rel=1e-12)
    with pytest.raises(ValueError, match="l3"):
        line_search(objective, gradient, norm="l3")
