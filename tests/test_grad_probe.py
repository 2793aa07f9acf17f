"""Gradient quality during training (train config ``probe:``) on a digits run of the XNOR ResNet."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from lowbit.runs import read_records
from lowbit.train import train
from lowbit.train.config import load_train_config
from lowbit.train.grad_probe import GRAD_PROBE_FILE, is_probed_layer

TINY_XNOR = ["model.width=4", "data.train_subset=96", "data.test_subset=32", "data.batch_size=32",
             "run.tensorboard=false", "run.threads=1"]
PROBE = "probe={every: 2, batch_size: 64, coords: 24, stats_batches: 3, stats_batch_size: 16}"


def config(*overrides):
    return load_train_config("configs/train-digits-xnor.yaml", [*TINY_XNOR, *overrides])


def rows_of(run_dir):
    return read_records(run_dir / GRAD_PROBE_FILE, text_columns=("layer",))


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probed") / "run"
    train(config("run.epochs=3", PROBE), run_dir=run_dir)
    return run_dir


def test_the_probe_writes_its_table_and_plot_on_a_digits_run(probed_run):
    rows = rows_of(probed_run)
    model_layers = {r["layer"] for r in rows if r["layer"] != "all"}
    from lowbit.models import create_model

    model = create_model("xnor_resnet18", width=4, num_classes=10, in_channels=1)
    assert model_layers == {n for n, m in model.named_modules() if n and is_probed_layer(m)}
    assert len(model_layers) == 16  # the 16 binary convs of the blocks (stem and head stay float)
    assert sorted({int(r["epoch"]) for r in rows}) == [0, 2, 3]  # init, every 2nd epoch, the last
    metrics = {r["metric"] for r in rows}
    assert {"cosine", "cosine_se", "reference_nonzero", "ste_snr", "ste_mean_norm", "flip_ratio", "seconds"} <= metrics
    assert not any(r["metric"] == "flip_ratio" and r["epoch"] == 0 for r in rows)  # nothing to compare at init
    finite = [r["value"] for r in rows if r["metric"] == "cosine" and math.isfinite(r["value"])]
    assert finite and all(-1 <= v <= 1 for v in finite)
    assert all(r["value"] > 0 for r in rows if r["metric"] == "ste_snr")
    report = (probed_run / "report.md").read_text()
    assert "## Gradient quality during training" in report and "| `layer1.0.conv1` |" in report
    assert "epoch 0 | epoch 2 | epoch 3" in report
    assert (probed_run / "plots" / "grad_probe.png").stat().st_size > 5000


def test_flip_ratio_is_the_fraction_of_signs_changed_since_the_previous_measurement(tmp_path):
    from lowbit.train.checkpoint import load_checkpoint
    from lowbit.train.loop import build

    run_dir = tmp_path / "run"
    cfg = config("run.epochs=1", "probe={every: 1, coords: 8, stats_batches: 0}")
    train(cfg, run_dir=run_dir)
    initial = build(cfg, torch.device("cpu")).model  # the run's initial weights (build seeds them)
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    rows = {r["layer"]: r["value"] for r in rows_of(run_dir) if r["metric"] == "flip_ratio"}
    for layer, ratio in rows.items():
        before = dict(initial.named_parameters())[f"{layer}.weight"].detach()
        after = final[f"{layer}.weight"]
        assert ratio == pytest.approx(float(((before >= 0) != (after >= 0)).double().mean()), abs=1e-12), layer
    assert any(v > 0 for v in rows.values())


def test_the_probe_does_not_change_training(probed_run, tmp_path):
    plain = train(config("run.epochs=3"), run_dir=tmp_path / "plain")

    def numbers(run_dir):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(run_dir / "metrics.csv")]

    assert numbers(plain) == numbers(probed_run)
    # and a measurement leaves the model, its gradients and the global random state as they were
    from lowbit.train.grad_probe import GradProbe
    from lowbit.train.loop import build

    cfg = config("run.epochs=1", PROBE)
    setup = build(cfg, torch.device("cpu"))
    probe = GradProbe(cfg.probe, setup, seed=0)
    probe.run_dir = tmp_path
    weights = {k: v.clone() for k, v in setup.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    probe.measure(0)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(v, setup.model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in setup.model.parameters())


@pytest.mark.slow  # a subprocess that is interrupted, then resumed: ~8 s
def test_a_resumed_run_records_what_an_uninterrupted_one_does(probed_run, tmp_path):
    run_dir = tmp_path / "resumed"
    cfg_file = tmp_path / "c.yaml"
    from lowbit.config import save_config

    save_config(config("run.epochs=3", PROBE), cfg_file)
    env = {**os.environ, "LOWBIT_TEST_INTERRUPT_AT_STEP": "5"}  # mid-epoch 2 (3 steps per epoch)
    code = ("import sys; from lowbit.train import train; from lowbit.config import load_config; "
            "from lowbit.train import TrainConfig; train(load_config(TrainConfig, sys.argv[1]), run_dir=sys.argv[2])")
    result = subprocess.run([sys.executable, "-c", code, str(cfg_file), str(run_dir)], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "interrupted" in (result.stderr + result.stdout).lower()
    train(resume=run_dir)

    def key(r):
        return (r["epoch"], r["layer"], r["metric"])

    want = {key(r): r["value"] for r in rows_of(probed_run) if r["metric"] != "seconds"}
    got = {key(r): r["value"] for r in rows_of(run_dir) if r["metric"] != "seconds"}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], nan_ok=True, abs=1e-12), k


def test_a_float_model_has_no_binary_layer_and_fails_before_the_run_starts(tmp_path):
    cfg = load_train_config("configs/train-digits.yaml", ["probe={every: 1}", "data.train_subset=64"])
    with pytest.raises(ValueError, match="binary found no binary layer.*probe.layers: all"):
        train(cfg, run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="no layer 'conv9'.*did you mean"):
        train(load_train_config("configs/train-digits.yaml", ["probe={layers: [conv9]}"]), run_dir=tmp_path / "never")
