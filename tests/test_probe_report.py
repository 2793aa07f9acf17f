"""Regression tests of the probe's report and runner fixes (issue 16): every table filled, every
edge flagged, one colour per estimator, the lr axis named by the normalisation, one figure for the
normalised differences, NES with its σ gradient, quiet progress into a log, the automatic lr grid."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from lowbit.config import from_dict, load_config
from lowbit.probe.command import run_probe
from lowbit.probe.config import LrGridConfig, ProbeConfig
from lowbit.probe.measure import line_search
from lowbit.probe.plan import prepare
from lowbit.probe.toy import ToyTask
from lowbit.runs import read_records

matplotlib.use("Agg")

BASE = {
    "name": "report-fixes",
    "task": {"batch_size": 128},
    "probe": {"dims": [3], "inits": 1, "batches": 1},
    "estimators": [
        {"name": "cdg", "eps": 0.1},
        {"name": "ste", "surrogate": "ste_clipped", "label": "a"},
        {"name": "multistep_ste", "steps": 2, "lr": 0.05, "budget": 0.1, "label": "b"},
    ],
    "measure": {"lr_grid": {"num": 30}, "curve_points": 8, "compare": [["a", "b"]]},
}


def run(tmp_path, name="run", **changes):
    config = from_dict(ProbeConfig, {**BASE, **changes})
    return run_probe(config, run_dir=tmp_path / name, progress=False, estimate=False)


def section(report: str, title: str) -> str:
    """The text from ``title`` to the next heading."""
    start = report.index(title)
    rest = report[start + len(title):]
    ends = [i for i in (rest.find("\n#"),) if i >= 0]
    return rest[: ends[0]] if ends else rest


def test_normalised_difference_table_lists_the_compared_pairs(tmp_path):
    run_dir = run(tmp_path)
    report = (run_dir / "report.md").read_text()
    table = section(report, "### Normalised difference")
    assert "`a vs b`" in table, table  # the row the old helper dropped
    values = [r["value"] for r in read_records(run_dir / "records.csv") if r["metric"] == "normalized_difference"]
    assert len(values) == 1 and math.isfinite(values[0])


def test_nes_with_return_sigma_runs_and_records_the_sigma_gradient(tmp_path):
    estimators = [{"name": "cdg"}, {"name": "nes", "population": 64, "sigma": 0.1, "return_sigma": True, "label": "nes"}]
    run_dir = run(tmp_path, estimators=estimators, measure={"lr_grid": {"num": 20}})
    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))
    sigma = [r for r in records if r["metric"] == "sigma_gradient" and r["layer"] == "all"]
    assert len(sigma) == 1 and math.isfinite(sigma[0]["value"])
    per_layer = [r["value"] for r in records if r["metric"] == "sigma_gradient" and r["layer"] != "all"]
    assert len(per_layer) == 3 and sum(per_layer) == pytest.approx(sigma[0]["value"])  # 3 layers, their sum
    assert any(r["metric"] == "cosine" and r["estimator"] == "nes" for r in records)
    assert "Loss gradient for NES's σ" in (run_dir / "report.md").read_text()


def test_the_shipped_multistep_dg_config_validates():
    config = load_config(ProbeConfig, "configs/probe-dg-multistep.yaml")
    labels = [s.label for s in prepare(config)]
    assert "dg(steps=10)" in labels


def test_best_lr_on_the_grid_edge_is_flagged(tmp_path):
    # A grid that stops far below the best step: every estimator's best lr is its top.
    run_dir = run(tmp_path, measure={"lr_grid": {"min": 1e-5, "max": 1e-4, "num": 10}, "curve_points": 4})
    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))
    edges = {r["estimator"]: r["value"] for r in records if r["metric"] == "best_lr_edge"}
    assert edges == {"cdg": 1, "a": 1, "b": 1}
    report = (run_dir / "report.md").read_text()
    assert "Best lr on an edge of the lr grid" in report and "measure.lr_grid: auto" in report
    best = section(report, "### Best loss decrease over the lr grid")
    assert best.count("↑") == 3, best


def test_budget_edge_is_noted_as_the_budget_binding(tmp_path):
    run_dir = run(tmp_path, budget={"radius": 1e-3, "norm": "l2"}, measure={"lr_grid": {"min": 1e-5, "max": 1.0, "num": 10}})
    report = (run_dir / "report.md").read_text()
    assert "the budget binds" in report and "↑" not in report


def test_auto_grid_brackets_the_optimum_of_a_quadratic():
    """L(w − lr·d) = (1 − lr)² on a linear 1-layer toy along d = w: the best lr is 1, far above the grid."""
    task = ToyTask(4, depth=1, act="none", batch_size=64, seed=0, dtype=torch.float64)
    objective = task.objective()
    x, y = task.batch(0)
    # Exact minimiser along the negative residual gradient direction: a known interior optimum.
    gradient = {k: v for k, v in zip(objective.params, [torch.autograd.functional.jacobian(
        lambda w: torch.nn.functional.mse_loss(x @ w.T, y), objective.params["layers.0.weight"])])}
    base = float(objective.loss())
    lrs = torch.logspace(-5, -4, 10, dtype=torch.float64)
    fixed = line_search(objective, gradient, lrs, base)
    assert fixed.edge == 1 and fixed.widened == 0
    auto = line_search(objective, gradient, lrs, base, auto=True)
    assert auto.edge == 0 and auto.widened >= 3
    # The quadratic's exact minimiser along d: lr* = <g, ∇L> / (g^T H g), here from two more evaluations.
    g = gradient["layers.0.weight"]
    h = 2 * (x @ g.T).square().sum() / y.numel()  # d²L/dlr²
    slope = -(g * g).sum()  # dL/dlr at 0
    lr_star = float(-slope / h)
    best = float(auto.lrs[auto.best])
    assert best == pytest.approx(lr_star, rel=0.05)
    assert float(auto.decrease[auto.best]) >= float(fixed.decrease.max())


def test_auto_grid_is_accepted_as_a_word_and_saved_as_a_mapping(tmp_path):
    config = from_dict(ProbeConfig, {**BASE, "measure": {"lr_grid": "auto"}})
    assert config.measure.lr_grid == LrGridConfig(auto=True)
    run_dir = run_probe(from_dict(ProbeConfig, {**BASE, "measure": {"lr_grid": "auto", "curve_points": 8}}),
                        run_dir=tmp_path / "auto", progress=False, estimate=False)
    again = load_config(ProbeConfig, run_dir / "config.yaml")
    assert again.measure.lr_grid.auto is True
    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))
    assert {r["value"] for r in records if r["metric"] == "best_lr_edge"} == {0}
    assert any(r["metric"] == "lr_grid_widened" for r in records)


class FigureSpy:
    """Record the colours of every line and bar, and the x labels, of each figure saved."""

    def __init__(self, monkeypatch):
        from matplotlib.figure import Figure

        self.saved = {}
        original = Figure.savefig

        def savefig(figure, path, *args, **kwargs):
            colours, labels, ticks = {}, [], []
            for ax in figure.axes:
                for line in ax.get_lines():
                    if not line.get_label().startswith("_"):
                        colours[line.get_label()] = matplotlib.colors.to_hex(line.get_color())
                for container in ax.containers:
                    label = container.get_label()
                    patches = getattr(container, "patches", None)
                    if patches and not label.startswith("_"):
                        colours[label] = matplotlib.colors.to_hex(patches[0].get_facecolor())
                    lines = getattr(container, "lines", None)
                    if lines and lines[0] is not None and not label.startswith("_"):
                        colours[label] = matplotlib.colors.to_hex(lines[0].get_color())
                labels.append(ax.get_xlabel())
                ticks.append([t.get_window_extent(figure.canvas.get_renderer()) for t in ax.get_xticklabels() if t.get_text()])
            self.saved[str(path).rsplit("/", 1)[-1]] = {"colours": colours, "xlabels": labels, "ticks": ticks}
            return original(figure, path, *args, **kwargs)

        monkeypatch.setattr(Figure, "savefig", savefig)


def test_one_colour_per_estimator_across_figures(tmp_path, monkeypatch):
    spy = FigureSpy(monkeypatch)
    run(tmp_path)
    seen = {}
    for name, figure in spy.saved.items():
        for label, colour in figure["colours"].items():
            seen.setdefault(label, set()).add(colour)
    assert {"cdg", "a", "b"} <= set(seen)
    assert all(len(colours) == 1 for colours in seen.values()), seen
    assert len({next(iter(c)) for c in seen.values()}) == len(seen)  # and different estimators differ


@pytest.mark.parametrize("normalize, words", [("global", "unit-normalised"), ("none", "raw estimate"), ("per_layer", "per layer")])
def test_lr_axis_names_the_normalisation(tmp_path, monkeypatch, normalize, words):
    spy = FigureSpy(monkeypatch)
    run(tmp_path, measure={**BASE["measure"], "normalize": normalize})
    (xlabel,) = {x for x in spy.saved["decrease_vs_lr.png"]["xlabels"] if x}
    assert words in xlabel and ("normalised" not in xlabel or normalize != "none")


def test_one_normalised_difference_figure_for_every_condition(tmp_path, monkeypatch):
    spy = FigureSpy(monkeypatch)
    probe = {**BASE["probe"], "sweep": {"act": ["ste", "none"], "batch_size": [64, 128]}}
    run_dir = run(tmp_path, probe=probe)
    difference_plots = sorted(p.name for p in (run_dir / "plots").iterdir() if p.name.startswith("normalized_difference"))
    assert difference_plots == ["normalized_difference.png"]
    report = (run_dir / "report.md").read_text()
    assert report.count("plots/normalized_difference.png") == 1 and "Normalised difference across conditions" in report
    assert report.count("### Normalised difference") == 4  # one table per condition


@pytest.mark.parametrize("keys", [["act"], ["act", "batch_size"]])
def test_condition_tick_labels_do_not_overlap(tmp_path, monkeypatch, keys):
    """The conditions of configs/probe-act-precision.yaml (and a two-key sweep) as bar categories."""
    from lowbit.probe.report import _colour_map, _plot_cosine_by_condition

    spy = FigureSpy(monkeypatch)
    rows = [
        {"metric": "cosine", "layer": "all", "estimator": e, "value": 0.5, "act": act, "batch_size": 8192}
        for act in ["ste_clipped", "uniform_act(levels=2)", "uniform_act(levels=3)", "none"]
        for e in ["STE", "ste(surrogate=swish_sign)"]
    ]
    _plot_cosine_by_condition(rows, keys, tmp_path / "cosine_by_condition.png", _colour_map(["STE", "ste(surrogate=swish_sign)"]))
    (boxes,) = [t for t in spy.saved["cosine_by_condition.png"]["ticks"] if t]
    assert len(boxes) == 4
    for first, second in zip(boxes, boxes[1:]):
        assert not first.overlaps(second), (first, second)


def test_progress_into_a_log_is_not_redrawn_per_unit(tmp_path, capfd):
    # stderr is captured (not a terminal): the bar is drawn at its start and end only.
    config = from_dict(ProbeConfig, {**BASE, "probe": {**BASE["probe"], "dims": [2, 3], "batches": 3}})
    run_probe(config, run_dir=tmp_path / "log", progress=True, estimate=False)
    err = capfd.readouterr().err
    assert err.count("\r") <= 3, err
