"""Scheduled surrogates: the shapes, the windowed ApproxSign, the loop records, errors, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.config import ConfigError
from lowbit.quant import get_quantizer
from lowbit.runs import read_records
from lowbit.train import load_train_config, train
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.loop import INTERRUPT_ENV, TrainingInterrupted
from lowbit.train.surrogate_schedule import schedule_value


def tiny(**extra: object) -> list[str]:
    """A binary ResNet-18 of width 2 on 128 digits at 8x8 (4 steps of 32 per epoch), 3 epochs."""
    base = {
        "model.name": "xnor_resnet18",
        "model.width": 2,
        "data.image_size": "null",
        "data.train_subset": 128,
        "data.test_subset": 64,
        "data.batch_size": 32,
        "run.epochs": 3,
        "run.tensorboard": "false",
        "run.threads": 1,
        "optim.name": "adam",
        "optim.lr": 0.01,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_schedule_shapes_by_hand():
    assert schedule_value(1.0, 3.0, 0.25, "linear") == 1.5
    assert schedule_value(1.0, 3.0, 0.5, "cosine") == pytest.approx(2.0)
    assert schedule_value(1.0, 3.0, 0.25, "cosine") == pytest.approx(1.0 + 2.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert schedule_value(1.0, 100.0, 0.5, "geometric") == pytest.approx(10.0)
    assert schedule_value(2.0, 0.5, -1.0, "linear") == 2.0 and schedule_value(2.0, 0.5, 7.0, "geometric") == 0.5


@pytest.mark.parametrize("window", [1.0, 0.5, 0.1])
def test_windowed_approx_sign_is_the_derivative_of_the_scaled_polynomial(window):
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64, requires_grad=True)
    get_quantizer("approx_sign_window", window=window)(x).sum().backward()
    # Independent reference: autograd through F_w(x) = 2 u - u |u|, u = x / w, on |x| <= w (sign outside).
    y = x.detach().clone().requires_grad_(True)
    u = y / window
    smooth = torch.where(u.abs() <= 1, 2 * u - u * u.abs(), torch.sign(u))
    smooth.sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
    assert torch.equal(get_quantizer("approx_sign_window", window=window)(x), torch.where(x >= 0, 1.0, -1.0).double())


def test_window_one_is_approx_sign():
    x = torch.randn(1000, requires_grad=True)
    get_quantizer("approx_sign")(x).sum().backward()
    g = x.grad.clone()
    x.grad = None
    get_quantizer("approx_sign_window", window=1.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, g)


def test_beta_grows_and_is_recorded_per_epoch(tmp_path):
    config = load_train_config(None, tiny(**{
        "model.act": "swish_sign", "surrogate.params.beta": "[1.0,16.0]", "surrogate.shape": "geometric",
    }))
    run_dir = train(config, runs_dir=tmp_path)
    rows = read_records(run_dir / "metrics.csv")
    total = 12  # 3 epochs x 4 steps: the value of step s is 16^(s / 11)
    assert [row["surrogate/beta"] for row in rows] == pytest.approx([16 ** (s / (total - 1)) for s in (3, 7, 11)])
    assert rows[-1]["surrogate/beta"] == pytest.approx(16.0)


def test_window_shrinks_on_the_model_quantizers_from_start_epoch(tmp_path):
    from lowbit.models import create_model
    from lowbit.train.surrogate_schedule import SurrogateScheduleConfig, build_surrogate_schedule

    model = create_model("xnor_resnet18", width=2, act="approx_sign_window")
    config = SurrogateScheduleConfig(params={"window": [1.0, 0.2]}, start_epoch=1.0, end_epoch=2.0)
    schedule = build_surrogate_schedule(config, model, "xnor_resnet18", total_steps=12, steps_per_epoch=4)
    acts = [m.input_quantizer for m in model.modules() if hasattr(m, "input_quantizer") and m.input_quantizer is not None]
    assert len(schedule.targets["window"]) == len(acts) == 16
    schedule.apply(2)
    assert all(q.window == 1.0 for q in acts)  # before start_epoch
    schedule.apply(6)
    assert all(q.window == pytest.approx(0.6) for q in acts)  # halfway between steps 4 and 8
    schedule.apply(11)
    assert all(q.window == pytest.approx(0.2) for q in acts)


def test_clip_schedule_only_on_named_quantizers():
    from lowbit.models import create_model
    from lowbit.train.surrogate_schedule import SurrogateScheduleConfig, build_surrogate_schedule

    model = create_model("birealnet18", width=2, stem="small", act="ste_clipped")  # weights: magnitude_aware_sign (clip)
    config = SurrogateScheduleConfig(params={"clip": [2.0, 0.5]}, quantizers=["ste_clipped"])
    schedule = build_surrogate_schedule(config, model, "birealnet18", total_steps=10, steps_per_epoch=5)
    assert len(schedule.targets["clip"]) == 16  # the activations only, not the 16 weight quantizers
    everything = build_surrogate_schedule(
        SurrogateScheduleConfig(params={"clip": [2.0, 0.5]}), model, "birealnet18", total_steps=10, steps_per_epoch=5
    )
    assert len(everything.targets["clip"]) == 32


def test_a_parameter_no_quantizer_has_is_an_error_before_training(tmp_path):
    config = load_train_config(None, tiny(**{"surrogate.params.beta": "[1.0,5.0]"}))
    with pytest.raises(ValueError, match=r"surrogate.params.beta: no quantizer .* ste_clipped \(clip\)"):
        train(config, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"surrogate.params.beta must be \[start, end\], two numbers > 0"):
        load_train_config(None, tiny(**{"surrogate.params.beta": "[0.0,5.0]"}))
    with pytest.raises(ConfigError, match="end_epoch must be > start_epoch"):
        load_train_config(None, tiny(**{"surrogate.params.clip": "[1,2]", "surrogate.start_epoch": 2, "surrogate.end_epoch": 1}))


def test_resume_mid_epoch_with_a_schedule_equals_uninterrupted(tmp_path, monkeypatch):
    overrides = tiny(**{"model.act": "approx_sign_window", "surrogate.params.window": "[1.0,0.1]"})
    reference = train(load_train_config(None, overrides), run_dir=tmp_path / "reference")
    monkeypatch.setenv(INTERRUPT_ENV, "6")  # epoch 2, batch 2 of 4: a real SIGINT to this process
    with pytest.raises(TrainingInterrupted):
        train(load_train_config(None, overrides), run_dir=tmp_path / "run")
    monkeypatch.delenv(INTERRUPT_ENV)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 6
    train(resume=tmp_path / "run")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_records(tmp_path / "run" / "metrics.csv")) == strip(read_records(reference / "metrics.csv"))
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
