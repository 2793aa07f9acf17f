"""Loss curves under a budget of loss evaluations: the counting, the methods' steps, records and report."""

from __future__ import annotations

import pytest
import torch

from lowbit.config import ConfigError, from_dict
from lowbit.estimators import CountingObjective, get_estimator, ste_gradient
from lowbit.probe.command import run_probe
from lowbit.probe.config import ProbeConfig, TrajectoryConfig
from lowbit.probe.plan import prepare
from lowbit.probe.toy import ToyTask
from lowbit.probe.trajectory import expand_methods, trajectory_records
from lowbit.runs import read_records


def toy(weights="real", dim=3):
    return ToyTask(dim, depth=2, batch_size=128, seed=0, dtype=torch.float64, weights=weights).objective()


@pytest.mark.parametrize(
    "name, params, cost",
    [
        ("ste", {}, lambda p: 1),
        ("nes", {"population": 10}, lambda p: 10),
        ("cdg", {}, lambda p: 2 * p + 1),
        ("cdg", {"coords": 5}, lambda p: 2 * 5 + 1),
        ("multistep_ste", {"steps": 4}, lambda p: 4),
        ("flip_cdg", {}, lambda p: p + 1),
        ("bernoulli_nes", {"population": 12}, lambda p: 12),
        ("snes", {"population": 8, "iterations": 3}, lambda p: 24),
        ("dg", {"step": 0.02, "steps": 2}, lambda p: 2 * (2 * p + 1)),
        ("bop", {}, lambda p: 1),
    ],
)
@pytest.mark.parametrize("weights", ["real", "binary"])
def test_counting_objective_charges_every_loss_value(name, params, cost, weights):
    objective = toy(weights)
    counting = CountingObjective(objective)
    g = get_estimator(name, **params).estimate(counting, torch.Generator().manual_seed(0))
    assert counting.evaluations == cost(objective.numel())
    reference = get_estimator(name, **params).estimate(objective, torch.Generator().manual_seed(0))
    assert all(torch.equal(g[k], reference[k]) for k in g)  # counting changes nothing


def test_ste_sgd_curve_is_a_hand_written_sgd_loop():
    objective = toy()
    config = TrajectoryConfig(evaluations=30, points=3, heldout=False,
                              methods=[{"name": "ste", "surrogate": "ste_clipped", "lr": 0.1, "label": "sgd"}])
    rows = trajectory_records(config, objective, None, {}, lambda label: 0)
    w = {k: v.clone() for k, v in objective.params.items()}
    curve = {0: float(objective.loss(w))}
    for step in range(1, 31):
        g = ste_gradient(objective.at(w), "ste_clipped")
        w = {k: v - 0.1 * g[k] for k, v in w.items()}
        curve[step] = float(objective.loss(w))
    recorded = {r["evaluations"]: r["value"] for r in rows if r["metric"] == "trajectory_loss"}
    assert sorted(recorded) == [0, 10, 20, 30]
    for x, value in recorded.items():
        assert value == pytest.approx(curve[x], abs=1e-12)
    (steps,) = [r["value"] for r in rows if r["metric"] == "trajectory_steps"]
    assert steps == 30


def test_snes_curve_is_one_search_and_displacement_methods_restart_from_their_point():
    objective = toy(dim=2)
    methods = [
        {"name": "snes", "population": 6, "sigma": 0.1, "label": "snes"},
        {"name": "multistep_ste", "steps": 3, "lr": 0.05, "budget": 0.2, "label": "multi"},
    ]
    config = TrajectoryConfig(evaluations=18, points=3, heldout=False, methods=methods)
    seeds = {"snes": 5, "multi": 6}
    rows = trajectory_records(config, objective, None, {}, lambda label: seeds[label])
    estimator = get_estimator("snes", population=6, sigma=0.1)
    search = estimator.start(objective.params)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        search.step(objective, generator)
    (final,) = [r["value"] for r in rows if r["metric"] == "trajectory_final_loss" and r["estimator"] == "snes"]
    assert final == pytest.approx(float(objective.loss(search.mean())), abs=1e-12)
    multi = get_estimator("multistep_ste", steps=3, lr=0.05, budget=0.2)
    w = dict(objective.params)
    for _ in range(6):  # 18 evaluations of 3 each
        g = multi.estimate(objective.at(w))
        w = {k: v - g[k] for k, v in w.items()}
    (final,) = [r["value"] for r in rows if r["metric"] == "trajectory_final_loss" and r["estimator"] == "multi"]
    assert final == pytest.approx(float(objective.loss(w)), abs=1e-12)
    assert final < float(objective.loss())  # six projected rounds of 0.2 lower the loss


def test_method_specs_are_checked_before_any_compute():
    with pytest.raises(ValueError, match="needs a step size lr"):
        expand_methods([{"name": "ste"}])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        expand_methods([{"name": "ste", "lr": 0.1, "optimizer": "rmsprop"}])
    specs = expand_methods([{"name": "multistep_ste", "lr": [0.01, 0.02], "optimizer": "adam"}])
    assert [s.params["lr"] for s in specs] == [0.01, 0.02] and all(s.params["optimizer"] == "adam" for s in specs)
    base = {"probe": {"dims": [2], "inits": 1, "batches": 1}, "estimators": [{"name": "cdg"}]}
    with pytest.raises(ValueError, match="needs a step size"):
        prepare(from_dict(ProbeConfig, {**base, "trajectory": {"evaluations": 10, "methods": [{"name": "nes"}]}}))
    with pytest.raises(ConfigError, match="methods is empty"):
        from_dict(ProbeConfig, {**base, "trajectory": {"evaluations": 10}})
    with pytest.raises(ConfigError, match="runs on the toy"):
        from_dict(ProbeConfig, {**base, "network": {}, "trajectory": {"evaluations": 10, "methods": [{"name": "snes"}]}})


def test_probe_run_records_and_reports_the_curves(tmp_path):
    config = from_dict(ProbeConfig, {
        "name": "curves", "threads": 1,
        "task": {"batch_size": 128, "weights": "binary"},
        "probe": {"dims": [3], "inits": 1, "batches": 2},
        "estimators": [{"name": "flip_cdg"}, {"name": "ste", "surrogate": "ste_clipped"}],
        "measure": {"reference": "flip_cdg", "lr_grid": {"num": 20}},
        "trajectory": {"evaluations": 60, "points": 4, "methods": [
            {"name": "ste", "surrogate": "ste_clipped", "lr": 0.05, "label": "STE-SGD"},
            {"name": "snes", "population": 10, "sigma": 0.05, "label": "SNES"},
            {"name": "flip_cdg", "lr": 0.01, "normalize": True, "label": "flip-SGD"},
        ]},
    })
    run_dir = run_probe(config, run_dir=tmp_path / "a", progress=False, estimate=False)
    again = run_probe(config, run_dir=tmp_path / "b", progress=False, estimate=False)
    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))
    curves = [r for r in records if r["metric"] == "trajectory_loss"]
    assert {r["estimator"] for r in curves} == {"STE-SGD", "SNES", "flip-SGD"}
    assert {r["unit"] for r in curves} == {"dim=3,init=0,batch=0", "dim=3,init=0,batch=1"}
    assert all(r["evaluations"] < 60 + 28 for r in curves)  # less than one step (flip CDG: 27 + 1) past the budget
    heldout = [r for r in records if r["metric"] == "trajectory_heldout"]
    assert len(heldout) == len(curves)

    def key(r):
        return (r["unit"], r["estimator"], r["metric"], r.get("evaluations"), r.get("lr"))

    numbers = {key(r): r["value"] for r in records if "seconds" not in r["metric"]}
    repeat = {key(r): r["value"] for r in read_records(again / "records.csv", text_columns=("unit", "estimator", "layer"))
              if "seconds" not in r["metric"]}
    assert numbers == repeat  # same config and seed, same numbers
    report = (run_dir / "report.md").read_text()
    assert "Loss curves under a budget of 60 loss evaluations" in report and "SNES: loss at a sample" in report
    assert (run_dir / "plots" / "trajectories.png").stat().st_size > 1000
