"""lowbit sweep: specs, cells, the local and Ray executors, failures, kills, resume, locks, the report.

Real processes throughout: local cells run in worker processes, Ray cells in a
real local Ray instance (127.0.0.1, 2 CPUs, shut down after), kills are real
SIGKILLs and Ctrl-C is a real SIGINT to a real `lowbit sweep` process.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lowbit.config import ConfigError
from lowbit.runs import DirectoryInUse, DirectoryLock, read_records
from lowbit.sweep import SweepConfigError, load_sweep_spec, plan_sweep, read_cells, run_sweep, write_sweep_report
from lowbit.sweep.worker import FAULT_ENV

# A training cell of about a second: LeNet-5 on 256 digits, 2 epochs.
TINY_TRAIN = ["run.epochs=2", "data.train_subset=256", "data.test_subset=128", "run.tensorboard=false"]
TINY_PROBE = {
    "task.batch_size": 256,
    "probe.dims": [3, 4],
    "probe.inits": 2,
    "probe.batches": 2,
    "estimators": [{"name": "cdg", "eps": 0.1}, {"name": "ste", "surrogate": "ste_clipped"},
                   {"name": "nes", "population": 32, "sigma": 0.1}],
    "measure.lr_grid.num": 40,
    "measure.curve_points": 8,
}
TABLE = {"rows": "optim.lr", "cols": "optim.weight_decay", "value": "val_acc", "reduce": "last"}


def write_spec(folder: Path, **fields) -> Path:
    data = {"name": "t", "command": "train", "base": "train-digits", "overrides": TINY_TRAIN, "threads": 1, **fields}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep(folder: Path, overrides=(), **kwargs) -> Path:
    spec = load_sweep_spec(folder / "spec.yaml", overrides)
    kwargs.setdefault("workers", 2)
    return run_sweep(spec, spec_dir=folder, runs_dir=folder / "runs", progress=False, log=lambda line: None, **kwargs)


def table_rows(sweep_dir: Path, name: str = "table1.csv"):
    with (sweep_dir / "tables" / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def states(sweep_dir: Path):
    return {s.cell: s for s in read_cells(sweep_dir)}


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 2 x 2 digits training sweep (lr x weight decay) on the local executor."""
    folder = tmp_path_factory.mktemp("grid")
    write_spec(folder, grid={"optim.lr": [0.05, 0.1], "optim.weight_decay": [0.0, 5.0e-4]}, table=TABLE)
    return sweep(folder)


@pytest.fixture(scope="module")
def ray_session():
    """A real local Ray instance on loopback with 2 CPUs, shut down after the module's tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


# ---- spec and cells: everything checked before anything runs


def test_spec_errors_name_the_key_and_the_fix(tmp_path):
    write_spec(tmp_path, grd={"optim.lr": [0.1]})
    with pytest.raises(ConfigError, match="unknown key 'grd'; did you mean 'grid'"):
        load_sweep_spec(tmp_path / "spec.yaml")
    write_spec(tmp_path, command="analyse landscape")
    with pytest.raises(ConfigError, match="command must be one of train, probe, analyze.*did you mean 'analyze'"):
        load_sweep_spec(tmp_path / "spec.yaml")
    write_spec(tmp_path, command="analyze landscap")
    with pytest.raises(ConfigError, match="did you mean 'analyze landscape'"):
        load_sweep_spec(tmp_path / "spec.yaml")
    write_spec(tmp_path, zip={"optim.lr": [0.1, 0.2], "schedule.name": ["cosine"]})
    with pytest.raises(ConfigError, match="same length"):
        load_sweep_spec(tmp_path / "spec.yaml")
    write_spec(tmp_path, grid={"optim.lr": [0.1]}, table={**TABLE, "reduce": "lats10"})
    with pytest.raises(ConfigError, match="lastN.*did you mean 'last10'"):
        load_sweep_spec(tmp_path / "spec.yaml")
    write_spec(tmp_path, split=["dims"])
    with pytest.raises(ConfigError, match="split divides a probe"):
        load_sweep_spec(tmp_path / "spec.yaml")


def test_an_invalid_key_in_one_cell_fails_before_any_cell_runs(tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.05, -1.0], "optim.momentum": [0.9]})
    with pytest.raises(SweepConfigError, match=r"(?s)1 of 2 cells.*cell optim\.lr=-1, optim\.momentum=0\.9: .*optim\.lr must be > 0"):
        sweep(tmp_path)
    write_spec(tmp_path, grid={"optim.lrr": [0.05, 0.1]})
    with pytest.raises(SweepConfigError, match=r"(?s)every cell: .*unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        sweep(tmp_path)
    write_spec(tmp_path, grid={"model.name": ["lenet5", "lenet55"]})
    with pytest.raises(SweepConfigError, match="cell model.name=lenet55: .*unknown model 'lenet55'"):
        sweep(tmp_path)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_cells_expand_grid_zip_and_seeds_in_order(tmp_path):
    write_spec(tmp_path, grid={"optim.momentum": [0.9, 0.5]}, zip={"optim.lr": [0.1, 0.01], "optim.name": ["sgd", "adam"]},
               seeds=[0, 1])
    _, base_file, _, cells = plan_sweep(load_sweep_spec(tmp_path / "spec.yaml"), tmp_path)
    assert base_file.endswith("train-digits.yaml")
    assert len(cells) == 2 * 2 * 2
    assert cells[0].varied == {"optim.momentum": 0.9, "optim.lr": 0.1, "optim.name": "sgd", "seed": 0}
    assert cells[3].varied == {"optim.momentum": 0.9, "optim.lr": 0.01, "optim.name": "adam", "seed": 1}
    assert cells[3].config.run.seed == 1 and cells[3].config.optim.name == "adam" and cells[3].config.run.epochs == 2
    assert cells[7].config.optim.momentum == 0.5
    # grid.KEY=[...] on the command line changes the grid; any other override applies to every cell
    spec = load_sweep_spec(tmp_path / "spec.yaml", ["grid.optim.momentum=[0.25]", "run.epochs=3", "seeds=[5]"])
    _, _, _, cells = plan_sweep(spec, tmp_path)
    assert [c.varied for c in cells] == [
        {"optim.momentum": 0.25, "optim.lr": 0.1, "optim.name": "sgd", "seed": 5},
        {"optim.momentum": 0.25, "optim.lr": 0.01, "optim.name": "adam", "seed": 5},
    ]
    assert all(c.config.run.epochs == 3 for c in cells)


def test_cli_dry_run_and_unknown_base(tmp_path, capsys):
    from lowbit.cli import main

    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1]})
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells of `lowbit train`" in out and "c001  optim.lr=0.1" in out
    write_spec(tmp_path, base="train-digits-xnr", grid={"optim.lr": [0.05]})
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--dry-run"]) == 2
    assert "did you mean 'train-digits-xnor'" in capsys.readouterr().err


# ---- a training sweep: cells are the runs the command makes; the report's tables


def test_train_sweep_cells_are_the_commands_runs(grid_sweep):
    cells = states(grid_sweep)
    assert [s.status for s in cells.values()] == ["done"] * 4
    assert all(s.attempts == 1 for s in cells.values())
    c002 = cells["c002"]
    run_dir = grid_sweep / c002.run_dir
    for name in ("config.yaml", "meta.yaml", "metrics.csv", "report.md", "cell.log", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["optim"]["lr"] == 0.1 and config["optim"]["weight_decay"] == 0.0 and config["run"]["epochs"] == 2
    assert "lowbit train" in c002.reproduce and "optim.lr=0.1" in c002.reproduce


def test_a_cell_reproduced_by_hand_gives_the_same_numbers(grid_sweep, tmp_path):
    from lowbit.config import load_config
    from lowbit.train import TrainConfig, train

    cell_dir = grid_sweep / states(grid_sweep)["c001"].run_dir
    config = load_config(TrainConfig, cell_dir / "config.yaml")
    by_hand = train(config, run_dir=tmp_path / "by-hand")
    assert read_records(by_hand / "metrics.csv")[-1]["test_acc"] == read_records(cell_dir / "metrics.csv")[-1]["test_acc"]
    assert _numbers(read_records(by_hand / "metrics.csv")) == _numbers(read_records(cell_dir / "metrics.csv"))


def _numbers(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_report_tables_overlays_and_rebuild(grid_sweep):
    rows = table_rows(grid_sweep)
    assert [(r["optim.lr"], r["optim.weight_decay"], r["n"]) for r in rows] == [
        ("0.05", "0.0", "1"), ("0.05", "0.0005", "1"), ("0.1", "0.0", "1"), ("0.1", "0.0005", "1")]
    for r in rows:  # each value is the last epoch's test accuracy of its cell
        cell = next(s for s in read_cells(grid_sweep) if s.values == {"optim.lr": float(r["optim.lr"]), "optim.weight_decay": float(r["optim.weight_decay"])})
        assert float(r["mean"]) == read_records(grid_sweep / cell.run_dir / "metrics.csv")[-1]["test_acc"]
    report = (grid_sweep / "report.md").read_text()
    assert "## val_acc (last) by optim.lr × optim.weight_decay" in report and "| optim.lr \\ optim.weight_decay |" in report
    for metric in ("train_loss", "test_acc", "lr"):
        assert (grid_sweep / "plots" / f"overlay_{metric}.png").stat().st_size > 5000
    (grid_sweep / "report.md").unlink()
    from lowbit.cli import main

    assert main(["report", str(grid_sweep)]) == 0
    assert (grid_sweep / "report.md").read_text() == report


def test_seeds_give_mean_and_standard_error(tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.1]}, seeds=[0, 1, 2],
               tables=[{"rows": "optim.lr", "value": "train_loss", "reduce": "last2"}])
    sweep_dir = sweep(tmp_path)
    finals = [sum(r["train_loss"] for r in read_records(sweep_dir / s.run_dir / "metrics.csv")[-2:]) / 2
              for s in read_cells(sweep_dir)]
    (row,) = table_rows(sweep_dir)
    mean = sum(finals) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in finals) / 2 / 3)
    assert row["n"] == "3" and float(row["mean"]) == pytest.approx(mean, rel=1e-12) and float(row["se"]) == pytest.approx(se, rel=1e-9)
    assert len({round(x, 12) for x in finals}) == 3  # the seeds really differ


def test_ray_executor_equals_local(grid_sweep, ray_session, tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1], "optim.weight_decay": [0.0, 5.0e-4]}, table=TABLE)
    ray_dir = sweep(tmp_path, executor="ray")
    assert [s.status for s in read_cells(ray_dir)] == ["done"] * 4
    assert table_rows(ray_dir) == table_rows(grid_sweep)
    for a, b in zip(read_cells(ray_dir), read_cells(grid_sweep)):  # the cells' files came back to the driver
        assert _numbers(read_records(ray_dir / a.run_dir / "metrics.csv")) == _numbers(read_records(grid_sweep / b.run_dir / "metrics.csv"))
        assert (ray_dir / a.run_dir / "checkpoints" / "last.pt").is_file()
        for cell_dir in (ray_dir / a.run_dir, grid_sweep / b.run_dir):  # lowbit.allocator's policy in both kinds of worker
            assert yaml.safe_load((cell_dir / "meta.yaml").read_text())["malloc"] == "keep"


# ---- GPUs on one machine: the local executor's slots


def test_gpu_slots_share_out_the_gpus_as_asked():
    from lowbit.sweep.spec import ResourcesSpec

    assert ResourcesSpec().gpu_slots(visible=8) == []  # num_gpus 0: no slots, cells on the CPU
    assert ResourcesSpec(num_gpus=1).gpu_slots(visible=3) == ["0", "1", "2"]
    assert ResourcesSpec(num_gpus=1, gpu_ids=[5, 7]).gpu_slots(visible=0) == ["5", "7"]
    assert ResourcesSpec(num_gpus=2, gpu_ids=[0, 1, 2, 3, 4]).gpu_slots(visible=0) == ["0,1", "2,3"]
    assert ResourcesSpec(num_gpus=0.5, gpu_ids=[0, 1]).gpu_slots(visible=0) == ["0", "1", "0", "1"]
    for resources, message in [({"num_gpus": 1}, "torch sees no CUDA device here"),
                               ({"num_gpus": 1.5, "gpu_ids": [0, 1]}, "a whole number of GPUs"),
                               ({"num_gpus": 3, "gpu_ids": [0, 1]}, "a whole number of GPUs up to the 2"),
                               ({"num_gpus": 0.3, "gpu_ids": [0]}, "must be 1/k")]:
        with pytest.raises(ValueError, match=message):
            ResourcesSpec(**resources).gpu_slots(visible=0)
    with pytest.raises(ValueError, match="distinct GPU indices"):
        ResourcesSpec(num_gpus=1, gpu_ids=[1, 1])


def test_resources_can_be_set_on_the_command_line(tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.05]})
    spec = load_sweep_spec(tmp_path / "spec.yaml", ["resources.num_gpus=0.5", "resources.gpu_ids=[2,3]", "run.device=cuda"])
    assert (spec.resources.num_gpus, spec.resources.gpu_ids) == (0.5, [2, 3])
    assert "run.device=cuda" in spec.overrides  # a cell's key: for every cell


def test_each_local_cell_gets_its_own_gpu_slot(tmp_path):
    """3 cells, 3 workers asked, 2 GPU slots: 2 cells at a time, each with its CUDA_VISIBLE_DEVICES (the cells
    themselves train on the CPU: this machine has no GPU; the variable is what a cell on cuda would see)."""
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1, 0.02]}, workers=3, resources={"num_gpus": 1, "gpu_ids": [5, 7]})
    lines = []
    spec = load_sweep_spec(tmp_path / "spec.yaml")
    sweep_dir = run_sweep(spec, spec_dir=tmp_path, runs_dir=tmp_path / "runs", progress=False, log=lines.append)
    assert "2 worker process(es), one GPU slot each (5, 7)" in lines[0], lines[0]
    assert [s.status for s in read_cells(sweep_dir)] == ["done"] * 3
    seen = []
    for state in read_cells(sweep_dir):
        first = (sweep_dir / state.run_dir / "cell.log").read_text().splitlines()[0]
        seen.append(first.rsplit("CUDA_VISIBLE_DEVICES=", 1)[1])
    assert sorted(seen[:2]) == ["5", "7"] and seen[2] in ("5", "7")  # the first two at once; the third reuses one


def test_gpu_settings_that_cannot_work_fail_before_the_sweep_directory(tmp_path):
    runs = tmp_path / "runs"
    import torch

    no_gpu = [] if torch.cuda.is_available() else [({"num_gpus": 1}, "local", "torch sees no CUDA device here")]
    for resources, executor, message in no_gpu + [({"gpu_ids": [0]}, "local", "resources.num_gpus is 0"),
                                         ({"num_gpus": 1, "gpu_ids": [0]}, "ray", "gpu_ids is for the local executor")]:
        if executor == "ray":
            pytest.importorskip("ray")
        write_spec(tmp_path, grid={"optim.lr": [0.05]}, resources=resources, executor=executor)
        with pytest.raises(ValueError, match=message):
            run_sweep(load_sweep_spec(tmp_path / "spec.yaml"), spec_dir=tmp_path, runs_dir=runs, progress=False,
                      log=lambda line: None)
        assert not runs.exists()


# ---- failures, kills, resume


def test_a_failing_cell_is_recorded_and_never_stops_the_others(tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.05, 1.0e12]}, table={"rows": "optim.lr", "value": "test_acc"})
    sweep_dir = sweep(tmp_path)
    cells = states(sweep_dir)
    assert cells["c000"].status == "done"
    assert cells["c001"].status == "failed" and cells["c001"].error.startswith("TrainingDiverged: ")
    report = (sweep_dir / "report.md").read_text()
    assert "## Failed cells" in report and "c001" in report and "TrainingDiverged" in report
    assert "[1 failed]" in report  # the table marks the missing place
    assert "Traceback" in (sweep_dir / cells["c001"].run_dir / "cell.log").read_text()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_worker_is_retried_once_then_marked_failed(tmp_path, monkeypatch, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_session")
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1, 0.02]})
    monkeypatch.setenv(FAULT_ENV, "c000:1;c001:1,2")  # c000: killed once; c001: killed on both attempts
    sweep_dir = sweep(tmp_path, executor=executor)
    cells = states(sweep_dir)
    assert (cells["c000"].status, cells["c000"].attempts) == ("done", 2)
    assert (cells["c001"].status, cells["c001"].attempts) == ("failed", 2)
    assert "killed" in cells["c001"].error or "died" in cells["c001"].error
    assert "no retries left" in cells["c001"].error
    assert (cells["c002"].status, cells["c002"].attempts) == ("done", 1)


def test_resume_runs_only_what_is_not_done(tmp_path, monkeypatch):
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1]})
    monkeypatch.setenv(FAULT_ENV, "c001:1,2")
    sweep_dir = sweep(tmp_path)
    assert [s.status for s in read_cells(sweep_dir)] == ["done", "failed"]
    done_metrics = sweep_dir / states(sweep_dir)["c000"].run_dir / "metrics.csv"
    before = (done_metrics.stat().st_mtime_ns, done_metrics.read_bytes())
    monkeypatch.delenv(FAULT_ENV)
    left_by_a_kill = sweep_dir / ".cells.csv.k1ll3d.tmp"  # what a driver killed mid-write leaves
    left_by_a_kill.write_text("half a row")
    run_sweep(resume=sweep_dir, workers=2, progress=False, log=lambda line: None)
    assert not left_by_a_kill.exists()
    cells = states(sweep_dir)
    assert [s.status for s in cells.values()] == ["done", "done"]
    assert (done_metrics.stat().st_mtime_ns, done_metrics.read_bytes()) == before  # not recomputed
    assert cells["c000"].attempts == 1 and cells["c001"].attempts == 3


def test_ctrl_c_stops_cleanly_and_resume_equals_an_uninterrupted_sweep(tmp_path, grid_sweep):
    """A real SIGINT to a real `lowbit sweep` while a cell trains; --resume continues that cell from its checkpoint."""
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1], "optim.weight_decay": [0.0, 5.0e-4]}, table=TABLE)
    process = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "sweep", str(tmp_path / "spec.yaml"), "--workers", "1", "--quiet",
         "--runs-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a pytest started in the background of a script inherits SIGINT ignored (POSIX
        # shells do that to background jobs), and so would this sweep, which then ran on to the end
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    sweep_dir = _wait_for(lambda: next((p for p in (tmp_path / "runs").glob("sweep-*")), None), process)
    # the first cell's first checkpoint (after epoch 1 of 2): the signal lands while a cell trains, three to go
    cells = _wait_for(lambda: read_cells(sweep_dir) if (sweep_dir / "cells.csv").exists() else None, process)
    first = sweep_dir / cells[0].run_dir / "checkpoints" / "last.pt"
    _wait_for(lambda: first.exists() or None, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"lowbit sweep --resume {sweep_dir}" in err
    after = read_cells(sweep_dir)
    assert not any(s.status in ("running", "failed") for s in after)
    assert sum(s.status == "queued" for s in after) >= 3
    run_sweep(resume=sweep_dir, progress=False, log=lambda line: None)
    assert [s.status for s in read_cells(sweep_dir)] == ["done"] * 4
    assert table_rows(sweep_dir) == table_rows(grid_sweep)
    for a, b in zip(read_cells(sweep_dir), read_cells(grid_sweep)):
        assert _numbers(read_records(sweep_dir / a.run_dir / "metrics.csv")) == _numbers(read_records(grid_sweep / b.run_dir / "metrics.csv"))


def test_a_worker_killed_from_outside_mid_cell_is_retried(tmp_path):
    """SIGKILL the worker process of a running cell (its pid is the first line of the cell's log)."""
    write_spec(tmp_path, grid={"optim.lr": [0.05]}, overrides=TINY_TRAIN[1:] + ["run.epochs=30"])
    process = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "sweep", str(tmp_path / "spec.yaml"), "--workers", "1", "--quiet",
         "--runs-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = _wait_for(lambda: next((p for p in (tmp_path / "runs").glob("sweep-*/cells/*/metrics.csv")), None), process)
    pid = int((log.parent / "cell.log").read_text().split(" pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    (state,) = read_cells(log.parents[2])
    assert (state.status, state.attempts) == ("done", 2)
    assert len(read_records(log)) == 30  # the second attempt finished the run (resumed from its checkpoint)


def _wait_for(probe, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("timed out")


def test_a_second_driver_on_one_sweep_directory_refuses(grid_sweep, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lowbit.runs import DirectoryLock; "
         f"DirectoryLock({str(grid_sweep)!r}, 'sweep').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUse, match=rf"sweep directory .* is in use by pid {holder.pid} on host"):
            run_sweep(resume=grid_sweep, progress=False, log=lambda line: None)
        with pytest.raises(DirectoryInUse):
            write_sweep_report(grid_sweep)
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(grid_sweep, "sweep"):  # the holder's death released it: taken over
        pass


# ---- probe sweeps: split along the probe's own axes, merged records equal a single run


def test_probe_split_merged_records_equal_a_single_run(tmp_path):
    from lowbit.config import from_dict
    from lowbit.probe import ProbeConfig
    from lowbit.probe.command import run_probe

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "p", "command": "probe", "overrides": TINY_PROBE, "split": ["dims", "inits"], "threads": 1,
        "tables": [{"rows": "estimator", "cols": "dim", "value": "best_decrease"}],
    }))
    sweep_dir = sweep(tmp_path)
    cells = read_cells(sweep_dir)
    assert [s.values for s in cells] == [{"dim": 3, "init": 0}, {"dim": 3, "init": 1}, {"dim": 4, "init": 0}, {"dim": 4, "init": 1}]
    merged = sweep_dir / "merged"
    single = run_probe(from_dict(ProbeConfig, yaml.safe_load((merged / "config.yaml").read_text())),
                       run_dir=tmp_path / "single", progress=False, estimate=False)
    assert (single / "records.csv").open().readline() == (merged / "records.csv").open().readline()  # the same header
    assert _probe_rows(merged) == _probe_rows(single) and len(_probe_rows(single)) > 100
    assert "# Gradient probe" in (merged / "report.md").read_text()
    assert "merged/report.md" in (sweep_dir / "report.md").read_text()
    assert len(table_rows(sweep_dir)) == 3 * 2  # 3 estimators x 2 dims


def _probe_rows(run_dir):
    """Records without the timings, NaN made comparable."""
    rows = [r for r in read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer")) if r["metric"] != "seconds"]
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def test_probe_split_needs_the_probes_own_axes(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "p", "command": "probe", "overrides": TINY_PROBE, "split": ["layers"]}))
    with pytest.raises(SweepConfigError, match="split 'layers' is not an axis of this toy probe"):
        plan_sweep(load_sweep_spec(tmp_path / "spec.yaml"), tmp_path)


def test_probe_sweep_prints_a_time_estimate(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "p", "command": "probe", "overrides": TINY_PROBE, "grid": {"seed": [0, 1]}, "threads": 1}))
    lines = []
    spec = load_sweep_spec(tmp_path / "spec.yaml")
    run_sweep(spec, spec_dir=tmp_path, runs_dir=tmp_path / "runs", workers=2, progress=False, log=lines.append)
    assert any(line.startswith("estimated ") and "of cell time for 2 cells" in line for line in lines), lines


# ---- the shipped sweep configs


SWEEP_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("sweep-*.yaml"))


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=[p.stem for p in SWEEP_CONFIGS])
def test_every_shipped_sweep_config_validates_every_cell(path):
    spec = load_sweep_spec(path)
    _, base_file, _, cells = plan_sweep(spec, path.parent)
    assert cells and (base_file is None or Path(base_file).is_file())
    keys = set(spec.varied_keys) | {"dim", "init", "batch", "layer"}
    for table in spec.tables:  # tables are laid out by keys the cells have
        assert all(k in keys or k in ("estimator", "probed_layer") or k.count(".") for k in table.rows + table.cols), table
    if "-digits" in path.stem or path.stem.endswith("-small"):
        assert spec.executor == "local"  # the CPU variants run here as they are


# ---- the other commands and modes


def test_analyze_sweep_cells_are_analysis_runs(tmp_path):
    tiny = ["model.width_mult=0.0625", "train.steps=2", "probe.every=2", "probe.num_steps=2", "lr_band.lrs=[1e-3]",
            "lr_band.steps=1", "data.batch_size=16", "data.train_subset=32"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "a", "command": "analyze bn-smoothness", "overrides": tiny, "seeds": [0, 1], "threads": 1,
        "tables": [{"rows": "seed", "value": "seconds_total"}]}))
    sweep_dir = sweep(tmp_path)
    cells = read_cells(sweep_dir)
    assert [s.status for s in cells] == ["done", "done"]
    for s in cells:
        run_dir = sweep_dir / s.run_dir
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == s.values["seed"]
        assert (run_dir / "summary.yaml").is_file() and (run_dir / "report.md").is_file()
        assert "lowbit analyze bn-smoothness" in s.reproduce
    assert [r["seed"] for r in table_rows(sweep_dir)] == ["0", "1"]
    write_spec(tmp_path, command="analyze weights", seeds=[0, 1])
    with pytest.raises(SweepConfigError, match="analyze weights has no seed of its own"):
        plan_sweep(load_sweep_spec(tmp_path / "spec.yaml"), tmp_path)


def test_a_probe_cell_resumes_from_its_saved_records(tmp_path, monkeypatch):
    """The probe adapter continues a cell's run directory: only the missing units are measured."""
    import lowbit.probe.runner as runner
    from lowbit.config import from_dict, set_dotted
    from lowbit.probe import ProbeConfig
    from lowbit.probe.command import ProbeInterrupted, run_probe
    from lowbit.sweep.commands import ProbeAdapter

    data = {}
    for key, value in TINY_PROBE.items():
        set_dotted(data, key, value)
    config = from_dict(ProbeConfig, data)
    full = run_probe(config, run_dir=tmp_path / "full", progress=False, estimate=False)
    original, calls = runner.measure_unit, []

    def interrupting(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "measure_unit", interrupting)
    with pytest.raises(ProbeInterrupted):
        run_probe(config, run_dir=tmp_path / "cell", progress=False, estimate=False)
    calls.clear()
    monkeypatch.setattr(runner, "measure_unit", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    ProbeAdapter().run(config, tmp_path / "cell", log=None)
    assert len(calls) == 8 - 3  # 2 dims x 2 inits x 2 batches, 3 were saved
    assert _probe_rows(tmp_path / "cell") != [] and sorted(map(repr, _probe_rows(tmp_path / "cell"))) == sorted(map(repr, _probe_rows(full)))


def test_ray_with_shared_storage_writes_straight_into_the_sweep(ray_session, tmp_path):
    write_spec(tmp_path, grid={"optim.lr": [0.05, 0.1]}, storage="shared", executor="ray")
    sweep_dir = sweep(tmp_path)
    assert [s.status for s in read_cells(sweep_dir)] == ["done", "done"]
    for s in read_cells(sweep_dir):
        assert len(read_records(sweep_dir / s.run_dir / "metrics.csv")) == 2
