"""`lowbit train` with a quant: section: gradient statistics, storage, the float baseline, exact resume."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest
import torch

from lowbit.runs import read_records
from lowbit.train import TrainingInterrupted, load_checkpoint, load_train_config, train
from lowbit.train.loop import INTERRUPT_ENV

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")  # LeNet-5's Conv2d/Linear layers
STEPS = 4  # 2 epochs x 2 steps of 32 images


def tiny(**extra: object):
    """LeNet-5 on 64 digits images, 2 epochs of 2 steps: well under a second a run."""
    base = {
        "model.name": "lenet5",
        "data.image_size": 32,
        "data.train_subset": 64,
        "data.test_subset": 32,
        "data.batch_size": 32,
        "run.epochs": 2,
        "run.tensorboard": False,
        "run.threads": 1,
        "schedule.warmup_epochs": 0.5,
    }
    base.update(extra)
    return load_train_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.fixture
def no_plots(monkeypatch):
    """Reports without drawing (matplotlib costs ~1 s a figure on a loaded CPU); the plots are tested once, above."""
    import lowbit.nn
    import lowbit.train.summary

    monkeypatch.setattr(lowbit.train.summary, "plot_curves", lambda records, plots_dir: [])
    monkeypatch.setattr(lowbit.nn, "plot_gradient_histograms", lambda rows, path, **kw: Path(path))


def quantized(baseline: Path, **extra: object):
    """8-8-8-8 (stochastic G) with stats on every step, compared with ``baseline``."""
    return tiny(**{"quant.w_bits": 8, "run.grad_stats_every": 1, "run.baseline": str(baseline), **extra})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A float run and the same recipe 8-8-8-8 with it as baseline (the loss/accuracy curves not drawn)."""
    import lowbit.train.summary

    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lowbit.train.summary, "plot_curves", lambda records, plots_dir: [])
        float_run = train(tiny(), run_dir=root / "float")
        quant_run = train(quantized(float_run), run_dir=root / "int8")
    return float_run, quant_run


def _metrics_without_time(run_dir: Path) -> list:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_records(run_dir / "metrics.csv")]


def _csv_rows(path: Path) -> list:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_quantized_run_writes_stats_storage_and_report_sections(runs):
    float_run, run = runs
    stats = read_records(run / "grad_stats.csv")
    assert len(stats) == STEPS * len(LAYERS) * 2  # every step, every layer, G and E
    assert {r["step"] for r in stats} == set(range(STEPS))
    assert {(r["step"], r["epoch"]) for r in stats} == {(0, 1), (1, 1), (2, 2), (3, 2)}
    assert all(r["quantized"] for r in stats)
    assert len(read_records(run / "grad_hist.csv")) == len(stats) * 64  # GradientStats' 64 bins
    storage = read_records(run / "storage.csv")
    assert [r["layer"] for r in storage] == [*LAYERS, "(total)"] and storage[0]["w_bits"] == 8

    report = (run / "report.md").read_text()
    assert "### Storage per layer" in report
    assert "| conv1 | QuantConv2d | 156 | 8/8/8/8 | 174 | 624 | 72.1% | 3.59x |" in report
    for kind in ("G", "E"):
        assert f"![{kind} histograms per layer](plots/grad_hist_{kind}.png)" in report
        assert (run / "plots" / f"grad_hist_{kind}.png").stat().st_size > 1000
        assert f"### Entries of {kind} that round to zero" in report
    assert "| layer | tensor | kurtosis | max/std |" in report
    # the float baseline next to this run
    assert "## Against the baseline" in report
    base_acc = read_records(float_run / "metrics.csv")[-1]["test_acc"]
    acc = read_records(run / "metrics.csv")[-1]["test_acc"]
    assert "| baseline `float` | float32 |" in report and "| this run `int8` | 8-8-8-8, G stochastic |" in report
    delta = 100 * (acc - base_acc)
    assert f"Final test accuracy {acc:.4f} against {base_acc:.4f} for the baseline: **{delta:+.2f} points**" in report
    assert "Besides `quant:` the configs are the same" in report


def test_zero_fraction_table_matches_grad_stats_csv(runs):
    _, run = runs
    rows = [r for r in _csv_rows(run / "grad_stats.csv") if r["kind"] == "G"]
    report = (run / "report.md").read_text()
    table = report.split("### Entries of G that round to zero")[1].split("###")[0]

    def cell(layer: str, key: str, fmt) -> str:
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: int(r["step"]))
        values = [float(r[key]) for r in mine]
        return f"{fmt(sum(values) / len(values))} ({fmt(values[0])} → {fmt(values[-1])})"

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    sci = lambda x: f"{x:.1e}"  # noqa: E731
    for layer in LAYERS:
        expected = [layer, "8-bit maxabs, stochastic"] + [
            cell(layer, key, pct)
            for key in ("frac_exact_zero", "frac_zero_nearest", "frac_zero_stochastic", "frac_zero_quantized")
        ]
        expected.append(cell(layer, "cos_distance", sci))
        assert "| " + " | ".join(expected) + " |" in table, layer
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == [*LAYERS, "(mean of layers)"]  # model order


def test_stats_draw_no_random_numbers_and_float_runs_can_ask_for_them(runs, tmp_path, no_plots):
    float_run, run = runs
    # the same quantized run without statistics: identical numbers (stochastic rounding included)
    silent = train(quantized(float_run, **{"run.grad_stats_every": 0}), run_dir=tmp_path / "silent")
    assert _metrics_without_time(silent) == _metrics_without_time(run) and _same_weights(silent, run)
    assert not (silent / "grad_stats.csv").exists() and (silent / "storage.csv").exists()
    # a float run with statistics asked for: sampled on steps 0 and 2, against the reference 8-bit grid
    measured = train(tiny(**{"run.grad_stats_every": 2}), run_dir=tmp_path / "float-stats")
    assert _metrics_without_time(measured) == _metrics_without_time(float_run) and _same_weights(measured, float_run)
    stats = read_records(measured / "grad_stats.csv")
    assert {r["step"] for r in stats} == {0, 2} and not any(r["quantized"] for r in stats)
    report = (measured / "report.md").read_text()
    assert "## Gradient statistics" in report and "float (ref. 8-bit maxabs)" in report
    assert "### Storage per layer" not in report and not (measured / "storage.csv").exists()


def test_float_run_without_stats_is_unchanged(runs):
    float_run, _ = runs
    assert not any((float_run / name).exists() for name in ("grad_stats.csv", "grad_hist.csv", "storage.csv"))
    report = (float_run / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("#")]
    summary = "## Summary (mean of the last 2 epochs)"
    assert headings == ["# Training run `float`", summary, "## Curves", "## Per epoch", "## Evidence"]


def test_missing_baseline_is_an_error_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.baseline=.*no such directory"):
        train(quantized(tmp_path / "missing"), run_dir=tmp_path / "run")
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        train(quantized(tmp_path / "not-a-run"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_resume_of_quantized_run_is_exact_and_does_not_duplicate_stats(runs, tmp_path, monkeypatch, no_plots):
    float_run, reference = runs
    run_dir = tmp_path / "run"
    monkeypatch.setenv(INTERRUPT_ENV, "3")  # a real SIGINT after step 3: epoch 2, batch 1 of 2
    with pytest.raises(TrainingInterrupted):
        train(quantized(float_run), run_dir=run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["position"], state["step"]) == (1, 1, 3)
    assert {r["step"] for r in read_records(run_dir / "grad_stats.csv")} == {0, 1, 2}  # flushed with the checkpoint
    # a stop between a flush and its checkpoint (a crash): rows of step 3 are on disk, the checkpoint is before them
    for name in ("grad_stats.csv", "grad_hist.csv"):
        with (run_dir / name).open("a", newline="") as out:
            ahead = [r for r in _csv_rows(reference / name) if r["step"] == "3"]
            csv.DictWriter(out, fieldnames=list(ahead[0])).writerows(ahead)
    monkeypatch.delenv(INTERRUPT_ENV)
    train(resume=run_dir)
    assert _metrics_without_time(run_dir) == _metrics_without_time(reference) and _same_weights(run_dir, reference)
    for name in ("grad_stats.csv", "grad_hist.csv"):
        assert _csv_rows(run_dir / name) == _csv_rows(reference / name), name  # same rows, none twice


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_resume_continues_the_periodic_clip_schedule(tmp_path, monkeypatch, no_plots):
    """Direction-sensitive clipping searched every 3rd pass: the checkpoint carries the schedule."""
    config = tiny(**{"quant.w_bits": 8, "quant.g_clip": "direction", "quant.e_clip": "direction", "quant.clip_interval": 3,
                     "run.grad_stats_every": 0})
    reference = train(config, run_dir=tmp_path / "reference")
    monkeypatch.setenv(INTERRUPT_ENV, "2")  # stop after step 2: pass 2 of the 3-pass interval
    with pytest.raises(TrainingInterrupted):
        train(config, run_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["quantizer_schedules"] and all(s["calls"] == 2 for s in state["quantizer_schedules"].values())
    monkeypatch.delenv(INTERRUPT_ENV)
    train(resume=tmp_path / "run")
    assert _metrics_without_time(tmp_path / "run") == _metrics_without_time(reference)
    assert _same_weights(tmp_path / "run", reference)
    final = [load_checkpoint(d / "checkpoints" / "last.pt")["quantizer_schedules"] for d in (tmp_path / "run", reference)]
    assert final[0] == final[1]  # the schedule went on from pass 2, not from 0
