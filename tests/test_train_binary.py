"""lowbit train with binary networks: binarize:, optim.groups with Bop, flip ratio, weight clipping, exact resume."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lowbit.config import ConfigError, load_config, save_config
from lowbit.runs import read_records
from lowbit.train import OptimConfig, TrainConfig, build_optimizer, load_checkpoint, load_train_config, train
from lowbit.train.loop import INTERRUPT_ENV
from lowbit.train.optim import set_learning_rate

REPO = Path(__file__).resolve().parents[1]

BOP_GROUP = "optim.groups=[{params: [binary], name: bop}]"


def tiny_binary(**extra: object) -> list[str]:
    """xnor_resnet18 at width 4 on 256 digits at 8x8 (8 steps of 32 per epoch), Bop + Adam, 2 epochs."""
    base = {
        "model.name": "xnor_resnet18",
        "model.width": 4,
        "model.kwargs": "{weight_quantizer: ste_sign}",
        "data.image_size": "null",
        "data.train_subset": 256,
        "data.test_subset": 64,
        "data.batch_size": 32,
        "run.epochs": 2,
        "run.tensorboard": False,
        "run.threads": 1,
        "optim.name": "adam",
        "optim.lr": 3e-3,
        "optim.weight_decay": 0.0,
        "optim.bop.gamma": 1e-2,
        "optim.bop.threshold": 1e-6,
        "schedule.warmup_epochs": 0.5,
        "augment.crop_padding": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def _metrics_without_time(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_records(run_dir / "metrics.csv")]


def test_bop_groups_train_record_flip_ratio_and_checkpoint_per_case(tmp_path):
    run_dir = train(load_train_config(None, tiny_binary(**{"optim.groups": "[{params: [binary], name: bop}]"})), run_dir=tmp_path / "run")
    rows = read_records(run_dir / "metrics.csv")
    layers = [k for k in rows[0] if k.startswith("flip_ratio/")]
    assert len(layers) == 16 and "flip_ratio/layer1.0.conv1" in layers  # the 16 binary convs
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ["flip_ratio", *layers])
    assert rows[0]["flip_ratio"] > 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["optimizer"]["cases"] == ["bop", "rest"]
    bop_state = state["optimizer"]["optimizers"]["bop"]
    assert bop_state["param_groups"][0]["step"] == 16 and len(bop_state["state"]) == 16
    binary = state["model"]["layer2.0.conv1.weight"]
    assert set(binary.unique().tolist()) == {-1.0, 1.0}  # Bop keeps the latent weights at +-1
    report = (run_dir / "report.md").read_text()
    assert "## Flip ratio" in report and (run_dir / "plots" / "flip_ratio.png").stat().st_size > 1000


def test_flip_ratio_equals_a_count_from_the_weights_themselves(tmp_path):
    """Independent check: one epoch of one step, so the flip ratio is the share of signs that differ from the start."""
    overrides = tiny_binary(**{"data.train_subset": 32, "run.epochs": 1, "optim.groups": "[{params: [binary], name: bop}]"})
    config = load_train_config(None, overrides)
    from lowbit.train.loop import build

    torch.manual_seed(0)
    setup = build(config, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    run_dir = train(config, run_dir=tmp_path / "run")
    after = _weights(run_dir)
    row = read_records(run_dir / "metrics.csv")[0]
    for name in ("layer1.0.conv1", "layer4.1.conv2"):
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert row[f"flip_ratio/{name}"] == pytest.approx(float(((w0 >= 0) != (w1 >= 0)).double().mean()), abs=0)


def test_interrupted_bop_run_resumes_bit_identically(tmp_path):
    overrides = tiny_binary(**{
        "run.epochs": 3, "data.train_subset": 128, "data.test_subset": 32,  # 4 steps of 32 per epoch
        "optim.groups": "[{params: [binary], name: bop}, {params: ['type:BatchNorm2d'], name: sgd, lr: 0.01}]",
        "model.weight_clip": 1.0,
    })
    config_file = tmp_path / "tiny.yaml"
    save_config(load_train_config(None, overrides), config_file)
    reference = train(load_config(TrainConfig, config_file), run_dir=tmp_path / "reference")

    env = {k: v for k, v in os.environ.items() if k != INTERRUPT_ENV}
    command = [sys.executable, "-m", "lowbit", "train"]
    # step 6 = epoch 2, batch 2 of 4: a real SIGINT mid-epoch, with Bop's moving averages and half an epoch of flips
    first = subprocess.run(
        [*command, str(config_file), "--runs-dir", str(tmp_path / "runs"), "--quiet"],
        env={**env, INTERRUPT_ENV: "6"}, capture_output=True, text=True, timeout=120,
    )
    assert first.returncode == 130, first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["position"], state["step"]) == (1, 2, 6)
    assert state["flip_ratio"]["steps"] == 2 and sum(state["flip_ratio"]["flips"].values()) > 0
    second = subprocess.run([*command, "--resume", str(run_dir), "--quiet"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert _metrics_without_time(run_dir) == _metrics_without_time(reference)  # flip ratios included
    resumed, uninterrupted = _weights(run_dir), _weights(reference)
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    a = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizer"]
    b = load_checkpoint(reference / "checkpoints" / "last.pt")["optimizer"]
    assert a["cases"] == b["cases"] == ["bop", "sgd", "rest"]
    for case in a["cases"]:
        for index, per_param in b["optimizers"][case]["state"].items():
            for key, value in per_param.items():
                assert torch.equal(torch.as_tensor(a["optimizers"][case]["state"][index][key]), torch.as_tensor(value)), (case, key)


def test_adam_on_latent_weights_with_weight_clip_keeps_them_in_range(tmp_path):
    run_dir = train(load_train_config(None, tiny_binary(**{"model.weight_clip": 0.05, "run.epochs": 1})), run_dir=tmp_path / "run")
    weights = _weights(run_dir)
    binary = [k for k in weights if ".conv" in k and k.startswith("layer") and k.endswith("weight")]
    assert len(binary) == 16
    clip = torch.tensor(0.05)  # float32, as the weights
    assert all(bool(weights[k].abs().max() <= clip) for k in binary)
    assert bool(weights["stem.0.weight"].abs().max() > clip)  # the float stem is not clipped
    assert any(bool(weights[k].abs().max() == clip) for k in binary)  # the clip was active


def test_binarize_section_converts_a_zoo_model_with_its_filter(tmp_path):
    overrides = [
        "model.name=resnet18", "model.width=4", "model.act=elu", "data.image_size=null", "data.train_subset=64",
        "data.test_subset=32", "data.batch_size=32", "run.epochs=1", "run.tensorboard=false", "run.threads=1",
        "binarize={input_quantizer: ste_sign, weight_quantizer: ste_sign, exclude: ['*.shortcut', layer4]}",
        "model.weight_clip=1.0", BOP_GROUP, "optim.name=adam", "optim.lr=0.003",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # elu before each sign: no dead-sign warning
        run_dir = train(load_train_config(None, overrides), run_dir=tmp_path / "run")
    flips = [k[len("flip_ratio/") :] for k in read_records(run_dir / "metrics.csv")[0] if k.startswith("flip_ratio/")]
    assert flips == [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1) for c in (1, 2)]


def test_binarizing_a_relu_model_warns_about_dead_signs(tmp_path):
    from lowbit.nn import DeadSignWarning

    overrides = ["model.name=lenet5", "data.train_subset=64", "data.test_subset=32", "run.epochs=1", "run.tensorboard=false",
                 "run.threads=1", "binarize={}"]
    with pytest.warns(DeadSignWarning, match="conv2 \\(after ReLU 'act1'\\)"):
        train(load_train_config(None, overrides), run_dir=tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.name=bop"], "Bop trains binary latent weights only"),  # a float model, Bop for everything
        (["model.name=xnor_resnet18", "model.width=2", "data.image_size=null", "optim.groups=[{params: ['*'], name: bop}]"], "48 other parameters: stem.0.weight, stem.1.weight"),
        (["model.name=xnor_resnet18", "model.width=2", "data.image_size=null",
          "optim.groups=[{params: [binary], name: bop}, {params: ['layer1.*'], name: sgd}]"], "selected by cases 'bop' and 'sgd'"),
        (["optim.groups=[{params: [binary], name: bop}]"], "'binary' matches nothing"),
        (["model.name=xnor_resnet18", "model.width=2", "data.image_size=null", "optim.groups=[{params: [binary], name: bopp}]"], "Did you mean 'bop'"),
        (["model.weight_clip=1.0"], "no binary layer to clip"),
        (["quant={w_bits: 1}"], "use the binarize: section"),
        (["binarize={exclude: [conv9]}"], "pattern 'conv9' matches nothing"),
    ],
)
def test_bad_binary_setups_fail_before_anything_is_written(tmp_path, overrides, message):
    config = load_train_config(None, ["data.train_subset=64", "run.epochs=1", "run.tensorboard=false", *overrides])
    with pytest.raises(ValueError, match=message):
        train(config, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.weight_clip=0"], "model.weight_clip must be > 0"),
        (["model.weight_clip=-1"], "model.weight_clip must be > 0"),
        (["optim.bop.gamma=0"], "optim.bop.gamma must be in"),
        (["optim.bop.threshold=-1"], "optim.bop.threshold"),
        (["optim.groups=[{name: bop}]"], "missing required key 'optim.groups\\[0\\].params'"),
        (["binarize={}", "quant={w_bits: 8}"], "binarize: and quant: are both set"),
        (["binarize={subclasses: maybe}"], "binarize.subclasses: must be one of 'error', 'convert'"),
        (["binarize={exlude: [conv1]}"], "did you mean 'binarize.exclude'"),
    ],
)
def test_bad_binary_config_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, overrides)


def test_group_lr_is_a_scale_of_the_schedule_and_bop_schedules_follow_the_steps():
    from lowbit.models import create_model

    model = create_model("xnor_resnet18", width=2, in_channels=1)
    cfg = load_train_config(
        None,
        [
            "optim.name=adam", "optim.lr=0.01",
            "optim.groups=[{params: [binary], name: bop}, {params: ['type:BatchNorm2d'], name: sgd, lr: 0.001, momentum: 0.5}]",
            "optim.bop.gamma_schedule={name: step, milestones: [0.5], gamma: 0.1, warmup_epochs: 0}",
        ],
    ).optim
    optimizer = build_optimizer(model.parameters(), cfg, model=model, steps=(100, 10))
    set_learning_rate(optimizer, 0.004)
    sgd, rest, bop = optimizer.optimizers["sgd"], optimizer.optimizers["rest"], optimizer.optimizers["bop"]
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.0004) and sgd.param_groups[0]["momentum"] == 0.5
    assert rest.param_groups[0]["lr"] == pytest.approx(0.004)
    group = bop.param_groups[0]
    assert bop.hyper_parameters(group) == (pytest.approx(1e-4), 1e-8)
    group["step"] = 50  # half-way: the step schedule has decayed gamma by 10
    assert bop.hyper_parameters(group) == (pytest.approx(1e-5), 1e-8)
    with pytest.raises(ValueError, match="needs the run's length"):
        build_optimizer(model.parameters(), cfg, model=model)


def test_tensorboard_gets_the_flip_ratio(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train(load_train_config(None, tiny_binary(**{"run.tensorboard": True, "run.epochs": 1, "optim.groups": "[{params: [binary], name: bop}]"})), run_dir=tmp_path / "run")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "flip_ratio" in tags and "flip_ratio/layer3.1.conv2" in tags
    row = read_records(run_dir / "metrics.csv")[0]
    assert events.Scalars("flip_ratio")[0].value == pytest.approx(row["flip_ratio"], rel=1e-6)


def test_shipped_bop_config_loads_and_builds():
    from lowbit.train.loop import build, check_names

    config = load_config(TrainConfig, REPO / "configs" / "train-digits-bop.yaml")
    check_names(config)
    assert [g.name for g in config.optim.groups] == ["bop"] and config.model.weight_clip == 1.0
    small = load_config(TrainConfig, REPO / "configs" / "train-digits-bop.yaml", ["model.width=2", "data.train_subset=64"])
    setup = build(small, torch.device("cpu"))
    assert list(setup.optimizer.optimizers) == ["bop", "rest"]
