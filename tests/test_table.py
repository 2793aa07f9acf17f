"""`sweep_table` and `lowbit table`: rows over training runs, sorted by the keys that differ, as CSV and Markdown.

The run directories are written by hand (config.yaml, model.yaml, metrics.csv with chosen numbers), so every
expected figure is computed here from those numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from lowbit.cli import main
from lowbit.config import save_config
from lowbit.runs import RecordWriter
from lowbit.train import SweepTable, load_train_config, sweep_table, varied_keys
from lowbit.train.summary import write_stop_record


def make_run(root: Path, name: str, overrides, test_accs, epochs: int = 3, last_n: int = 2) -> Path:
    """A training run directory whose epochs had test accuracy ``test_accs`` (train_loss = 1 - acc, 2 s each)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = load_train_config(None, [f"run.name={name}", f"run.epochs={epochs}", f"run.summary_last_n={last_n}", *overrides])
    save_config(config, run_dir / "config.yaml")
    (run_dir / "model.yaml").write_text(yaml.safe_dump({"param_bytes": 2**20}))
    RecordWriter(run_dir / "metrics.csv").write_many(
        {"epoch": e + 1, "step": 10 * (e + 1), "lr": 0.1, "train_loss": 1 - acc, "train_acc": acc, "test_loss": 1 - acc,
         "test_acc": acc, "seconds": 2.0} for e, acc in enumerate(test_accs))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [
        make_run(root, "a", ["optim.lr=0.1", "optim.weight_decay=0"], [0.5, 0.7, 0.9]),
        make_run(root, "b", ["optim.lr=0.05", "optim.weight_decay=5e-4"], [0.6, 0.6, 0.3]),
        make_run(root, "c", ["optim.lr=0.05", "optim.weight_decay=0"], [0.2, 0.4, 0.8]),
    ]


def test_rows_are_sorted_by_the_keys_that_differ(runs):
    table = sweep_table(runs)  # run.name differs too, but it is bookkeeping
    assert isinstance(table, SweepTable) and isinstance(table, list)
    assert table.keys == ["optim.lr", "optim.weight_decay"]
    assert [r["run"] for r in table] == ["c", "b", "a"]  # lr 0.05 (wd 0, then 5e-4), then lr 0.1
    c = table[0]
    assert (c["optim.lr"], c["optim.weight_decay"], c["status"], c["epochs"], c["last_n"]) == (0.05, 0.0, "complete", 3, 2)
    assert c["test_acc"] == pytest.approx((0.4 + 0.8) / 2) and c["train_loss"] == pytest.approx((0.6 + 0.2) / 2)
    assert (c["best_test_acc"], c["best_epoch"], c["final_test_acc"]) == (0.8, 3, 0.8)
    assert table[1]["best_epoch"] == 1  # 0.6 at epochs 1 and 2: the earliest
    assert c["wall_seconds"] == pytest.approx(6.0) and c["param_mb"] == pytest.approx(1.0)
    assert c["path"] == str(runs[2]) and "config" not in c

    given = sweep_table(runs, keys=["optim.weight_decay"])  # rows with equal keys: by run name
    assert given.keys == ["optim.weight_decay"] and [r["run"] for r in given] == ["a", "c", "b"]
    assert varied_keys([{"run": {"name": "x", "seed": 1}}, {"run": {"name": "y", "seed": 1}}]) == []


def test_markdown_csv_and_files(runs, tmp_path):
    table = sweep_table(runs)
    text = str(table)
    assert text == table.markdown()
    lines = text.splitlines()
    assert lines[0].startswith("| run | optim.lr | optim.weight_decay | Training Loss | Training Accuracy | Validation Accuracy |")
    assert lines[2].startswith("| c | 0.05 | 0 | 0.4 | 0.6000 | 0.6000 | 0.8000 (3) | 6.0 | 1 |")
    assert "status" not in lines[0]  # every run complete
    csv_path, md_path = table.write(tmp_path / "out" / "lr-wd")
    assert (csv_path.name, md_path.name) == ("lr-wd.csv", "lr-wd.md") and md_path.read_text() == text + "\n"
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["run"] for r in rows] == ["c", "b", "a"] and rows[0]["optim.lr"] == "0.05"
    assert float(rows[0]["test_acc"]) == pytest.approx(0.6) and rows[2]["status"] == "complete"
    assert list(rows[0])[:4] == ["run", "optim.lr", "optim.weight_decay", "status"]
    assert str(sweep_table([])).count("\n") == 1  # no runs: the header alone


def test_status_of_stopped_runs(tmp_path):
    root = tmp_path / "runs"
    early = make_run(root, "early", ["optim.lr=0.1"], [0.5, 0.6])
    write_stop_record(early, 2, 3, 20, "plateau")
    cut = make_run(root, "cut", ["optim.lr=0.2"], [0.5])
    done = make_run(root, "done", ["optim.lr=0.3"], [0.5, 0.6, 0.7])
    table = sweep_table([done, cut, early])
    assert [r["status"] for r in table] == ["stopped early after 2 of 3 epochs", "stopped after 1 of 3 epochs", "complete"]
    assert "| run | optim.lr | status |" in table.markdown()


def test_frame(runs):
    pandas = pytest.importorskip("pandas")
    frame = sweep_table(runs).frame()
    assert isinstance(frame, pandas.DataFrame) and list(frame["run"]) == ["c", "b", "a"]
    assert frame["test_acc"].iloc[2] == pytest.approx(0.8)


def test_lowbit_table_command(runs, tmp_path, capsys):
    assert main(["table", *map(str, runs), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr()
    assert out.out == str(sweep_table(runs)) + "\n" and "wrote" in out.err
    assert (tmp_path / "t.csv").read_text() == sweep_table(runs).csv()

    # a sweep directory: its cells/, a probe run and an unfinished run beside them
    sweep = tmp_path / "sweep"
    make_run(sweep / "cells", "c0", ["optim.lr=0.1"], [0.5, 0.6, 0.7])
    make_run(sweep / "cells", "c1", ["optim.lr=0.2"], [0.4, 0.5, 0.6])
    (sweep / "cells" / "probe").mkdir()
    (sweep / "cells" / "probe" / "records.csv").write_text("unit\n")
    (sweep / "cells" / "probe" / "config.yaml").write_text("name: p\n")
    (sweep / "cells" / "new").mkdir()
    (sweep / "cells" / "new" / "config.yaml").write_text("run: {epochs: 3}\n")
    assert main(["table", str(sweep), "--format", "csv"]) == 0
    out = capsys.readouterr()
    rows = list(csv.DictReader(out.out.splitlines()))
    assert [(r["run"], r["optim.lr"]) for r in rows] == [("c0", "0.1"), ("c1", "0.2")]
    assert "skipped 1 run(s) without a finished epoch" in out.err and "new" in out.err

    assert main(["table", str(runs[0]), "--keys", "optim.lrr"]) == 2
    assert "--keys: no run's config.yaml has 'optim.lrr' (did you mean 'optim.lr'?)" in capsys.readouterr().err
    assert main(["table", str(sweep / "cells" / "new")]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
