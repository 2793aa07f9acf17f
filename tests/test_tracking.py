"""Tracking (lowbit.tracking) in `train` and `probe`: real TensorBoard event files, a real local MLflow store
(sqlite, no server) read back through MlflowClient, and train's per-epoch callback that stops a run early."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import yaml

from lowbit.config import ConfigError, from_dict
from lowbit.runs import read_records
from lowbit.tracking import (
    MLflowConfig,
    Trackers,
    TrackingContext,
    mlflow_name,
    open_trackers,
    param_value,
    register_tracker,
    resolve_trackers,
)
from lowbit.train import StopTraining, load_checkpoint, load_train_config, make_schedule, read_stop_record, train
from lowbit.train.loop import check_config
from test_train import tiny_overrides

PROBE = {  # the teacher-student toy, 2 dims x 2 batches, three estimators: ~1 s
    "name": "tiny-probe",
    "task": {"batch_size": 256},
    "probe": {"dims": [3, 4], "inits": 1, "batches": 2, "layers": "all"},
    "estimators": [{"name": "cdg", "eps": 0.1}, {"name": "ste", "surrogate": "ste_clipped"},
                   {"name": "nes", "population": 64, "sigma": 0.1}],
    "measure": {"lr_grid": {"num": 20}, "curve_points": 5},
}


def tiny(**extra):
    """lenet5 on 256 digits, 8 steps of 32 per epoch, 2 epochs, no tracker unless asked (test_train's recipe)."""
    return load_train_config(None, tiny_overrides(**extra))


@register_tracker("recording")
class RecordingTracker:
    """A backend kept by the tests: every call it gets, in order (the registry's extension point)."""

    opened: list = []

    @staticmethod
    def missing():
        return None

    def __init__(self, context: TrackingContext):
        self.context, self.calls = context, []
        RecordingTracker.opened.append(self)

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_scalars(self, scalars, step):
        self.calls.append(("scalars", dict(scalars), step))

    def log_summary(self, metrics):
        self.calls.append(("summary", dict(metrics)))

    def close(self, status="complete"):
        self.calls.append(("close", status))


@register_tracker("absent")
class AbsentTracker:
    """A backend whose package is not installed."""

    @staticmethod
    def missing():
        return "the absent package is not installed: pip install absent"


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A local MLflow file store: fast to open. MLflow 3 serves it only with MLFLOW_ALLOW_FILE_STORE=true
    (the sqlite store users get by default is tested too, in the slow test below: creating its tables takes ~5 s)."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def mlflow_run(uri: str, run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = yaml.safe_load((run_dir / "mlflow.yaml").read_text())["run_id"]
    return client, client.get_run(run_id)


def history(client, run_id: str, key: str):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---- the interface


def test_fan_out_converts_values_and_closes_once(tmp_path):
    RecordingTracker.opened.clear()
    trackers = open_trackers(["recording", "recording"], TrackingContext(tmp_path, "train"))
    assert len(trackers) == 2 and bool(trackers) and not Trackers()
    trackers.log_params({"optim.lr": 0.05, "data.image_size": None, "schedule.milestones": [0.5, 0.75], "optim.extra": {}})
    trackers.log_scalars({"train_loss": 0.25, "note": "text", "missing": None, "flag": True}, step=3)
    trackers.log_summary({"summary/final_test_acc": 0.9, "summary/bad": float("nan")})
    trackers.close("stopped")
    trackers.close("complete")  # a second close does nothing
    for tracker in RecordingTracker.opened:
        assert tracker.calls == [
            ("params", {"optim.lr": 0.05, "data.image_size": "null", "schedule.milestones": "[0.5, 0.75]", "optim.extra": "{}"}),
            ("scalars", {"train_loss": 0.25, "flag": 1.0}, 3),
            ("summary", {"summary/final_test_acc": 0.9}),
            ("close", "stopped"),
        ]
    with pytest.raises(ValueError, match="status must be one of complete, stopped"):
        Trackers().close("done")
    assert param_value(True) is True and param_value("relu") == "relu"
    assert mlflow_name("cosine/ste(surrogate=swish_sign)") == "cosine/ste_surrogate_swish_sign"
    assert mlflow_name("mean/best_decrease/nes(population=500,sigma=0.1)") == "mean/best_decrease/nes_population_500_sigma_0.1"


def test_tracker_settings_are_checked_before_any_work(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="unknown tracker 'mlfow'. Did you mean 'mlflow'"):
        train(tiny(**{"run.trackers": "[mlfow]"}), runs_dir=runs)
    with pytest.raises(ValueError, match="run.trackers names 'absent', but the absent package is not installed: pip install absent"):
        train(tiny(**{"run.trackers": "[absent]"}), runs_dir=runs)
    assert not runs.exists()  # refused before any folder was made
    assert resolve_trackers(["absent", "recording"], required=False) == (["recording"], [AbsentTracker.missing()])
    with pytest.raises(ConfigError, match="run.log_every must be >= 0"):
        tiny(**{"run.log_every": -1})
    assert tiny(**{"run.tensorboard": True}).run.requested_trackers() == (["tensorboard"], False)
    assert tiny(**{"run.tensorboard": False}).run.requested_trackers() == ([], False)
    assert tiny(**{"run.trackers": "[mlflow]"}).run.requested_trackers() == (["mlflow"], True)
    # the list says everything: run.tensorboard (false in test_train's recipe, and in most shipped configs) is ignored
    assert tiny(**{"run.trackers": "[tensorboard]"}).run.requested_trackers() == (["tensorboard"], True)

    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses the file store by default
    refused = tiny(**{"run.trackers": "[mlflow]", "run.mlflow.tracking_uri": f"file:{tmp_path / 'mlruns'}"})
    with pytest.raises(ValueError, match=r"cannot open the tracking store 'file:.*sqlite:////ABSOLUTE/PATH/mlflow.db.*MLFLOW_ALLOW_FILE_STORE=true"):
        check_config(refused)

    from lowbit.probe.command import run_probe
    from lowbit.probe.config import ProbeConfig

    with pytest.raises(ValueError, match="trackers: unknown tracker 'tensorbord'. Did you mean 'tensorboard'"):
        run_probe(from_dict(ProbeConfig, {**PROBE, "trackers": ["tensorbord"]}), runs_dir=runs, progress=False)
    assert not runs.exists()


# ---- lowbit train


def test_implicit_tensorboard_without_its_package_is_skipped_with_a_note(tmp_path, monkeypatch):
    from lowbit.tracking import TensorBoardTracker

    why = "torch.utils.tensorboard does not import here: pip install tensorboard (the lowbit[tensorboard] extra)"
    monkeypatch.setattr(TensorBoardTracker, "missing", staticmethod(lambda: why))  # as on a machine without it
    lines = []
    run_dir = train(tiny(**{"run.tensorboard": True, "run.epochs": 1}), run_dir=tmp_path / "run", log=lines.append)
    assert not (run_dir / "tensorboard").exists()
    assert f"no TensorBoard events for this run: {why}, or set run.tensorboard=false" in lines
    with pytest.raises(ValueError, match="run.trackers names 'tensorboard', but torch.utils.tensorboard does not import"):
        train(tiny(**{"run.trackers": "[tensorboard]"}), runs_dir=tmp_path / "runs")  # named: an error
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_per_step_loss_epoch_scalars_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = tiny(**{"run.trackers": "[tensorboard]", "run.log_every": 1})
    run_dir = train(config, run_dir=tmp_path / "run")
    metrics = read_records(run_dir / "metrics.csv")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()

    losses = events.Scalars("step/train_loss")
    assert [e.step for e in losses] == list(range(1, 17))  # every optimizer step, x = steps done
    for epoch, row in enumerate(metrics):  # 8 equal batches: their mean is the epoch's training loss
        mean = sum(e.value for e in losses[8 * epoch : 8 * epoch + 8]) / 8
        assert mean == pytest.approx(row["train_loss"], rel=1e-6)
    lr_at = make_schedule(config.schedule, config.optim.lr, 16, 8)
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([lr_at(s - 1) for s in range(1, 17)], rel=1e-6)
    for key in ("test_acc", "train_loss", "lr", "seconds"):  # the per-epoch scalars, x = epoch
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in metrics]

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optim.lr"].number_value == 0.05 and hparams["model.name"].string_value == "lenet5"
    assert hparams["status"].string_value == "complete" and hparams["data.image_size"].number_value == 32
    assert "run.name" not in hparams and "run.threads" not in hparams  # bookkeeping, not what the run computes
    final = events.Scalars("summary/final_test_acc")
    assert len(final) == 1 and final[0].value == pytest.approx(metrics[-1]["test_acc"], rel=1e-6)


def test_on_epoch_stops_a_run_that_is_recorded_and_resumes_exactly(tmp_path):
    seen = []
    full = train(tiny(**{"run.epochs": 3}), run_dir=tmp_path / "full", on_epoch=lambda m: seen.append(m))
    want = read_records(full / "metrics.csv")
    assert [m["epoch"] for m in seen] == [1, 2, 3]  # after every epoch (a tuner needs the last result too)
    assert seen[0] == pytest.approx(want[0]) and read_stop_record(full) is None

    def plateau(metrics):
        if metrics["epoch"] == 1:
            raise StopTraining("test accuracy plateaued")

    part = train(tiny(**{"run.epochs": 3}), run_dir=tmp_path / "part", on_epoch=plateau)
    assert len(read_records(part / "metrics.csv")) == 1
    assert read_stop_record(part) == {"epoch": 1, "epochs": 3, "step": 8, "reason": "test accuracy plateaued", "by": "on_epoch"}
    report = (part / "report.md").read_text()
    assert "Status: stopped early after 1 of 3 epochs by the epoch callback" in report and "plateaued" in report
    assert load_checkpoint(part / "checkpoints" / "last.pt")["complete"] is False

    train(resume=part)  # the remaining epochs, as if never stopped
    def numbers(rows):  # every column but the wall time
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert numbers(read_records(part / "metrics.csv")) == numbers(want)
    assert read_stop_record(part) is None and "Status: complete." in (part / "report.md").read_text()

    last = train(tiny(**{"run.epochs": 1}), run_dir=tmp_path / "last", on_epoch=lambda m: "too late")
    assert read_stop_record(last) is None and "Status: complete." in (last / "report.md").read_text()

    def broken(metrics):
        raise RuntimeError("the tuner's connection dropped")

    with pytest.raises(RuntimeError, match="connection dropped"):  # not a stop: raised, the epoch kept
        train(tiny(**{"run.epochs": 3}), run_dir=tmp_path / "broken", on_epoch=broken)
    assert load_checkpoint(tmp_path / "broken" / "checkpoints" / "last.pt")["epoch"] == 1


def test_mlflow_gets_params_metrics_status_and_a_resume_continues_its_run(tmp_path, mlflow_uri):
    settings = {"run.trackers": "[mlflow, recording]", "run.mlflow.tracking_uri": mlflow_uri, "run.log_every": 2,
                "run.mlflow.experiment": "tracking-test"}
    RecordingTracker.opened.clear()
    run_dir = train(tiny(**settings), run_dir=tmp_path / "run", on_epoch=lambda m: "enough for the test")
    client, run = mlflow_run(mlflow_uri, run_dir)
    metrics = read_records(run_dir / "metrics.csv")
    assert run.info.status == "FINISHED" and run.data.tags["lowbit.status"] == "stopped"
    assert run.info.run_name == "run" and run.data.tags["lowbit.run_dir"] == str(run_dir.resolve())
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    assert run.data.params["optim.lr"] == "0.05" and run.data.params["model.name"] == "lenet5"
    assert run.data.params["schedule.milestones"] == "[0.5, 0.75]" and "run.name" not in run.data.params
    assert history(client, run.info.run_id, "test_acc") == [(1, pytest.approx(metrics[0]["test_acc"]))]
    assert [s for s, _ in history(client, run.info.run_id, "step/train_loss")] == [2, 4, 6, 8]
    assert run.data.metrics["summary/final_test_acc"] == pytest.approx(metrics[0]["test_acc"])
    # the recording backend saw the same per-step numbers the store holds
    steps = [(c[2], c[1]["step/train_loss"]) for c in RecordingTracker.opened[0].calls if c[0] == "scalars" and "step/train_loss" in c[1]]
    assert history(client, run.info.run_id, "step/train_loss") == [(s, pytest.approx(v)) for s, v in steps]

    train(resume=run_dir)  # continues the same MLflow run
    client, resumed = mlflow_run(mlflow_uri, run_dir)
    assert resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED" and resumed.data.tags["lowbit.status"] == "complete"
    metrics = read_records(run_dir / "metrics.csv")
    assert history(client, run.info.run_id, "test_acc") == [(r["epoch"], pytest.approx(r["test_acc"])) for r in metrics]
    assert [s for s, _ in history(client, run.info.run_id, "step/train_loss")] == [2, 4, 6, 8, 10, 12, 14, 16]


@register_tracker("kill_once")
class KillOnceTracker:
    """SIGKILLs its own process the first time it is given optimizer step ``at_step`` (``marker`` remembers):
    a run killed mid-epoch, after the trackers before it in ``run.trackers`` logged that step."""

    marker = None  # a Path, set by the test
    at_step = 12

    @staticmethod
    def missing():
        return None

    def __init__(self, context):
        pass

    def log_params(self, params):
        pass

    def log_scalars(self, scalars, step):
        if step == self.at_step and "step/train_loss" in scalars and self.marker is not None and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)

    def log_summary(self, metrics):
        pass

    def close(self, status="complete"):
        pass


def test_flush_writes_tensorboard_events_now_and_skips_backends_without_flush(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trackers = open_trackers(["tensorboard", "recording"], TrackingContext(tmp_path, "train"))
    trackers.log_scalars({"step/train_loss": 0.5}, 3)
    trackers.flush()  # the recording backend has no flush: left alone
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("step/train_loss")] == [(3, 0.5)]
    trackers.close()


def test_a_run_killed_after_a_checkpoint_resumes_with_every_point_logged_once(tmp_path, mlflow_uri):
    """Killed 2 steps after epoch 1's checkpoint: nothing logged before it is lost (TensorBoard's queue is flushed
    at each checkpoint), and the steps the killed attempt logged after it appear once after the resume."""
    pytest.importorskip("tensorboard")
    from faults import run_lowbit
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    KillOnceTracker.marker = tmp_path / "killed"
    settings = tiny_overrides(**{"run.trackers": "[tensorboard, mlflow, kill_once]", "run.mlflow.tracking_uri": mlflow_uri,
                                 "run.log_every": 2, "run.mlflow.experiment": "killed"})
    result = run_lowbit(["train", *settings, "--quiet", "--runs-dir", str(tmp_path / "runs")])
    assert result.rc == -signal.SIGKILL, result.err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 8  # epoch 1's; the kill came at step 12
    client, run = mlflow_run(mlflow_uri, run_dir)
    assert [s for s, _ in history(client, run.info.run_id, "step/train_loss")] == [2, 4, 6, 8, 10, 12]
    before = dict(history(client, run.info.run_id, "step/train_loss"))

    train(resume=run_dir)
    after = history(client, run.info.run_id, "step/train_loss")
    assert [s for s, _ in after] == [2, 4, 6, 8, 10, 12, 14, 16]  # 10 and 12 once: the resume skipped them
    assert all(value == pytest.approx(before[s]) for s, value in after if s in before)  # an exact resume
    assert [s for s, _ in history(client, run.info.run_id, "test_acc")] == [1, 2]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/train_loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [e.step for e in events.Scalars("test_acc")] == [1, 2]


# ---- lowbit probe


def test_probe_logs_each_unit_and_the_means_to_mlflow(tmp_path, mlflow_uri):
    from lowbit.probe.command import run_probe
    from lowbit.probe.config import ProbeConfig

    config = from_dict(ProbeConfig, {**PROBE, "trackers": ["mlflow"], "mlflow": {"tracking_uri": mlflow_uri}})
    run_dir = run_probe(config, run_dir=tmp_path / "probe", progress=False, estimate=False)
    client, run = mlflow_run(mlflow_uri, run_dir)
    assert run.data.tags["lowbit.status"] == "complete" and run.data.tags["lowbit.command"] == "probe"
    assert client.get_experiment(run.info.experiment_id).name == "lowbit-probe"
    assert run.data.params["task.batch_size"] == "256" and run.data.params["probe.dims"] == "[3, 4]"

    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))
    units = list(dict.fromkeys(r["unit"] for r in records))  # the plan's order
    assert len(units) == 4
    for metric, estimator in (("cosine", "ste(surrogate=ste_clipped)"), ("best_decrease", "nes"), ("best_decrease", "cdg")):
        want = [next(r["value"] for r in records if r["unit"] == u and r["metric"] == metric
                     and r["estimator"] == estimator and r["layer"] == "all") for u in units]
        key = mlflow_name(f"{metric}/{estimator}")
        assert history(client, run.info.run_id, key) == [(i, pytest.approx(v)) for i, v in enumerate(want)]
        assert run.data.metrics[f"mean/{key}"] == pytest.approx(sum(want) / len(want))
    assert "decrease/cdg" not in run.data.metrics  # the ΔL-lr curve (many values per unit) stays in records.csv
    assert all(math.isfinite(v) for v in run.data.metrics.values())


@register_tracker("kill_at_unit")
class KillAtUnitTracker(KillOnceTracker):
    """SIGKILLs its process the first time it is given the probe's unit ``at_step``: listed first in ``trackers``,
    before the others log that unit, whose records are already saved."""

    at_step = 1

    def log_scalars(self, scalars, step):
        if step == self.at_step and self.marker is not None and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_probe_killed_between_saving_and_logging_a_unit_resumes_with_every_unit_logged_once(tmp_path, mlflow_uri):
    pytest.importorskip("tensorboard")
    from faults import run_lowbit
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lowbit.probe.command import run_probe

    KillAtUnitTracker.marker = tmp_path / "killed"
    data = {**PROBE, "trackers": ["kill_at_unit", "tensorboard", "mlflow"], "mlflow": {"tracking_uri": mlflow_uri}}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(data))
    result = run_lowbit(["probe", str(tmp_path / "probe.yaml"), "--quiet", "--runs-dir", str(tmp_path / "runs")])
    assert result.rc == -signal.SIGKILL, result.err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len({r["unit"] for r in read_records(run_dir / "records.csv", text_columns=("unit",))}) == 2  # unit 1 saved
    key = mlflow_name("best_decrease/nes")
    client, run = mlflow_run(mlflow_uri, run_dir)
    assert [s for s, _ in history(client, run.info.run_id, key)] == [0]  # ... but not logged

    run_probe(resume=run_dir, progress=False, estimate=False)
    assert [s for s, _ in history(client, run.info.run_id, key)] == [0, 1, 2, 3]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("best_decrease/nes")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_local_sqlite_store_needs_no_server(tmp_path, monkeypatch):
    """MLflow 3's default kind of store (sqlite:///mlflow.db), as a user without a server gets it."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = train(tiny(**{"run.trackers": "[mlflow]", "run.mlflow.tracking_uri": uri}), run_dir=tmp_path / "run")
    client, run = mlflow_run(uri, run_dir)
    metrics = read_records(run_dir / "metrics.csv")
    assert run.info.status == "FINISHED" and run.data.params["optim.lr"] == "0.05"
    assert client.get_experiment(run.info.experiment_id).name == "lowbit-train"
    assert history(client, run.info.run_id, "test_acc") == [(r["epoch"], pytest.approx(r["test_acc"])) for r in metrics]


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_logs_and_its_callback_stops_every_rank(tmp_path):
    pytest.importorskip("tensorboard")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_distributed import HERE, torchrun

    result = torchrun(HERE / "distributed" / "tracking_check.py", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["calls"] == [1, 2] and ranks[1]["calls"] == []  # called on rank 0; rank 1 stopped with it
    run_dir = Path(ranks[0]["run_dir"])
    metrics = read_records(run_dir / "metrics.csv")
    assert len(metrics) == 2 and read_stop_record(run_dir)["reason"] == "rank 0 says stop"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = events.Scalars("step/train_loss")
    assert [e.step for e in losses] == list(range(1, 9))
    for epoch, row in enumerate(metrics):  # the global batch's loss (both halves), not rank 0's half
        assert sum(e.value for e in losses[4 * epoch : 4 * epoch + 4]) / 4 == pytest.approx(row["train_loss"], rel=1e-6)


def asha_trial(params):
    """A Ray Tune trial as docs/training.md writes it: one lowbit run, each epoch reported to Tune."""
    from ray import tune

    from lowbit.train import StopTraining, load_train_config, train

    def report(metrics):
        try:
            tune.report({"test_acc": metrics["test_acc"], "epoch": metrics["epoch"]})
        except SystemExit:  # Tune ends a trial its scheduler stopped by exiting the trial's thread in report()
            raise StopTraining("stopped by Ray Tune's ASHA scheduler") from None

    overrides = [f"optim.lr={params['lr']}", *params["overrides"]]
    train(load_train_config(None, overrides), run_dir=Path(params["runs"]) / f"lr{params['lr']}", on_epoch=report)


@pytest.mark.slow
def test_ray_tune_asha_stops_the_weak_trial_and_the_run_records_it(tmp_path, monkeypatch):
    """A real local Ray instance: ASHA (grace 1 epoch, halving) ends the lr=1e-5 trial after its first epoch,
    below the lr=0.05 trial's first epoch (run before it, one trial at a time)."""
    tune = pytest.importorskip("ray.tune")
    import os

    import ray
    from ray.tune.schedulers import ASHAScheduler

    tests = str(Path(__file__).resolve().parent)  # the workers import asha_trial from this module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        space = {"lr": tune.grid_search([0.05, 1e-5]), "runs": str(tmp_path / "runs"),
                 "overrides": tiny_overrides(**{"run.epochs": 3})}
        tuner = tune.Tuner(
            asha_trial, param_space=space,
            tune_config=tune.TuneConfig(metric="test_acc", mode="max", max_concurrent_trials=1,
                                        scheduler=ASHAScheduler(time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray_results"), verbose=0),
        )
        results = {r.config["lr"]: r for r in tuner.fit()}
    finally:
        ray.shutdown()
    assert results[0.05].metrics["epoch"] == 3 and results[1e-5].metrics["epoch"] == 1
    good, weak = tmp_path / "runs" / "lr0.05", tmp_path / "runs" / "lr1e-05"
    assert len(read_records(good / "metrics.csv")) == 3 and read_stop_record(good) is None
    assert len(read_records(weak / "metrics.csv")) == 1  # the epoch Tune saw, checkpointed: resumable
    assert read_stop_record(weak)["reason"] == "stopped by Ray Tune's ASHA scheduler"
    # Tune ends the trial's process right after: stopped.yaml is written first, the report may be cut short
    # and is rebuilt from the files (`lowbit report`)
    from lowbit.train import write_train_report

    assert "stopped early after 1 of 3 epochs" in write_train_report(weak).read_text()
