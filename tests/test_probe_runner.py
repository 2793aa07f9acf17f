"""The probe's experiment runner, records, resume, report and CLI, on tiny grids."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.cli import main
from lowbit.config import ConfigError, from_dict, load_config
from lowbit.probe.config import ProbeConfig, expand_estimators
from lowbit.probe.measure import cosine, lr_grid, normalize_direction, normalized_difference
from lowbit.probe.runner import iter_units, prepare, run_grid, unit_id
from lowbit.probe.report import write_probe_report
from lowbit.runs import read_records, write_run_files

TINY = {
    "name": "tiny",
    "task": {"batch_size": 256},
    "probe": {"dims": [3, 4], "inits": 1, "batches": 2, "layers": "all"},
    "estimators": [
        {"name": "cdg", "eps": 0.1},
        {"name": "ste", "surrogate": "ste_clipped"},
        {"name": "nes", "population": 64, "sigma": 0.1},
        {"name": "dg", "step": 0.05, "budget": 0.1, "steps": [1, 2]},
        {"name": "multistep_ste", "optimizer": "sgdm", "steps": 3, "lr": 0.05, "budget": 0.1},
    ],
    "measure": {"lr_grid": {"num": 50}, "curve_points": 10, "compare": [["dg(steps=1)", "dg(steps=2)"]]},
}


def tiny_config(**changes) -> ProbeConfig:
    data = {**TINY, **changes}
    return from_dict(ProbeConfig, data)


def test_expand_estimators_labels():
    specs = expand_estimators([{"name": "nes", "population": [5, 50], "sigma": 0.1}, {"name": "ste", "surrogate": "steep"}])
    assert [s.label for s in specs] == ["nes(population=5)", "nes(population=50)", "ste(surrogate=steep)"]
    assert specs[1].params == {"population": 50, "sigma": 0.1}
    with pytest.raises(ValueError, match="unique"):
        expand_estimators([{"name": "cdg"}, {"name": "cdg"}])
    windows = expand_estimators([{"name": "ste", "surrogate": "ste_clipped"}, {"name": "ste", "surrogate": "ste_clipped", "clip": 0.2}])
    assert [s.label for s in windows] == ["ste(surrogate=ste_clipped)", "ste(surrogate=ste_clipped,clip=0.2)"]


def test_measure_helpers_against_hand_values():
    a = {"w": torch.tensor([3.0, 4.0])}
    b = {"w": torch.tensor([4.0, -3.0])}
    assert cosine(a, a) == pytest.approx(1.0) and cosine(a, b) == pytest.approx(0.0)
    assert torch.allclose(normalize_direction(a)["w"], torch.tensor([0.6, 0.8]))
    assert torch.equal(normalize_direction({"w": torch.zeros(2)})["w"], torch.zeros(2))  # no NaN for a zero step
    assert normalized_difference(2.0, 1.5) == pytest.approx(0.25)
    grid = lr_grid(1e-5, 1e-1, 10000, "linear")
    assert len(grid) == 10000 and grid[0] == pytest.approx(1e-5) and grid[-1] == pytest.approx(1e-1)


def test_bad_configs_fail_before_any_compute():
    with pytest.raises(ValueError, match="unknown estimator 'nse'.*Valid estimator names"):
        prepare(tiny_config(estimators=[{"name": "nse"}]))
    with pytest.raises(ValueError, match="sigma"):
        prepare(tiny_config(estimators=[{"name": "nes", "sigma": -1.0}]))
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist"):
        prepare(tiny_config(probe={**TINY["probe"], "layers": [5]}))
    with pytest.raises(ValueError, match="measure.reference"):
        prepare(tiny_config(estimators=[{"name": "ste"}]))
    with pytest.raises(ConfigError, match="dims must all be >= 1"):
        tiny_config(probe={**TINY["probe"], "dims": [0]})
    with pytest.raises(ConfigError, match="lr grid cannot be empty"):
        tiny_config(measure={"lr_grid": {"num": 0}})
    with pytest.raises(ConfigError, match="'probe.dims'"):
        from_dict(ProbeConfig, {"probe": {"dimz": [2]}})
    with pytest.raises(ValueError, match="unknown quantizer"):
        prepare(tiny_config(task={"act": "swish_sgn"}))


def test_grid_records_report(tmp_path):
    config = tiny_config()
    write_run_files(tmp_path, config)
    assert run_grid(config, tmp_path, progress=False) == 4
    records = read_records(tmp_path / "records.csv")
    assert {r["unit"] for r in records} == {unit_id(*u) for u in iter_units(config)}
    labels = {s.label for s in expand_estimators(config.estimators)}
    for metric in ("quick_decrease", "best_decrease", "best_lr", "best_loss", "seconds"):
        assert {r["estimator"] for r in records if r["metric"] == metric} == labels, metric
    cosines = [r for r in records if r["metric"] == "cosine" and r["layer"] == "all"]
    assert all(-1 <= r["value"] <= 1 for r in cosines)
    # Displacement methods stay inside the budget: their own step cannot beat... it is measured.
    assert any(r["metric"] == "step_decrease" for r in records)
    # best decrease is the max of the curve, which includes the kept points
    for r in records:
        if r["metric"] == "best_decrease":
            curve = [c["value"] for c in records if c["metric"] == "decrease" and c["unit"] == r["unit"] and c["estimator"] == r["estimator"]]
            assert r["value"] >= max(curve) - 1e-12
    nd = [r for r in records if r["metric"] == "normalized_difference"]
    assert len(nd) == 4 and all(math.isfinite(r["value"]) for r in nd)
    report = write_probe_report(tmp_path).read_text()
    assert "Best loss decrease" in report and "dim 3" in report and "plots/decrease_vs_lr.png" in report
    for plot in ("decrease_vs_lr.png", "best_decrease_vs_dim.png", "cosine_by_layer.png", "normalized_difference.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000, plot


def test_resume_equals_uninterrupted(tmp_path):
    config = tiny_config(estimators=TINY["estimators"][:3], measure={"lr_grid": {"num": 20}, "curve_points": 5})
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    run_grid(config, full, progress=False)

    # Interrupt after the second unit, the way Ctrl-C would.
    import lowbit.probe.runner as runner

    original, calls = runner.measure_unit, []

    def interrupting(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    runner.measure_unit = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            run_grid(config, part, progress=False)
    finally:
        runner.measure_unit = original
    assert len({r["unit"] for r in read_records(part / "records.csv")}) == 2
    assert run_grid(config, part, progress=False) == 2  # only the missing units are computed

    def key(r):
        return (r["unit"], r["estimator"], r["layer"], r["metric"], r["lr"])

    want = {key(r): r["value"] for r in read_records(full / "records.csv") if r["metric"] != "seconds"}
    got = {key(r): r["value"] for r in read_records(part / "records.csv") if r["metric"] != "seconds"}
    assert got == want


def test_cli_probe_and_report(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    import yaml

    data = {**TINY, "estimators": TINY["estimators"][:2], "measure": {"lr_grid": {"num": 20}, "curve_points": 5}}
    config.write_text(yaml.safe_dump(data))
    assert main(["probe", str(config), "probe.dims=[3]", "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_config(ProbeConfig, run_dir / "config.yaml").probe.dims == [3]
    assert (run_dir / "report.md").exists()
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.md").exists()
    # A bad key is one clear line, exit code 2, and no run directory is created.
    assert main(["probe", str(config), "probe.dimz=[3]", "--runs-dir", str(tmp_path / "runs2")]) == 2
    assert "did you mean 'probe.dims'" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()


def test_resume_verifies_the_units_it_finds(tmp_path):
    from lowbit.probe.plan import completed_units
    from lowbit.runs import RecordWriter

    path = tmp_path / "records.csv"
    writer = RecordWriter(path)
    for unit in ("dim=3,init=0,batch=0", "dim=3,init=0,batch=1"):
        writer.write_many([{"unit": unit, "metric": "m", "value": 1.0}] * 2)
    planned = ["dim=3,init=0,batch=0", "dim=3,init=0,batch=1", "dim=4,init=0,batch=0"]
    assert completed_units(path, planned) == set(planned[:2])
    with pytest.raises(ValueError, match="does not plan .*first: 'dim=3,init=0,batch=1'.*config.yaml was changed"):
        completed_units(path, planned[:1])
    writer.write_many([{"unit": "dim=3,init=0,batch=0", "metric": "m", "value": 1.0}])  # a second writer's copy
    with pytest.raises(ValueError, match="holds unit 'dim=3,init=0,batch=0' twice"):
        completed_units(path, planned)
