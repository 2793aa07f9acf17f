"""Tests of lowbit.train: schedules, losses, summary, config errors, NaN stop, determinism, exact resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lowbit.config import ConfigError, load_config, save_config
from lowbit.runs import RecordWriter, read_records
from lowbit.train import (
    LossConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainingDiverged,
    build_loss,
    build_optimizer,
    list_losses,
    list_optimizers,
    list_schedules,
    load_train_config,
    load_checkpoint,
    make_schedule,
    register_loss,
    register_optimizer,
    summarize,
    train,
    write_train_report,
)
from lowbit.train.losses import LOSSES
from lowbit.train.optim import OPTIMIZERS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("train-*.yaml"))


def tiny_overrides(**extra: object) -> list[str]:
    """lenet5 on 256 digits at 32x32 (8 steps of 32 per epoch), 2 epochs: a few seconds."""
    base = {
        "model.name": "lenet5",
        "data.image_size": 32,
        "data.train_subset": 256,
        "data.test_subset": 96,
        "data.batch_size": 32,
        "run.epochs": 2,
        "run.tensorboard": False,
        "run.threads": 1,  # tiny ops: a second thread only adds waiting, a lot on a shared CPU
        "schedule.warmup_epochs": 0.5,
        "augment.crop_padding": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(**extra: object) -> TrainConfig:
    return load_train_config(None, tiny_overrides(**extra))


# ---------------------------------------------------------------- schedules


def _sched(name: str, **kw: object) -> ScheduleConfig:
    return ScheduleConfig(name=name, **{"warmup_epochs": 0.0, **kw})


def _lrs(cfg: ScheduleConfig, lr: float, total: int, per_epoch: int = 10) -> list[float]:
    f = make_schedule(cfg, lr, total, per_epoch)
    return [f(s) for s in range(total)]


def test_cosine_closed_form_and_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr_ratio=0.1)
    f = make_schedule(cfg, 0.2, total_steps=110, steps_per_epoch=10)  # W = 10, T = 100
    assert f(0) == pytest.approx(0.2 * 1 / 10)
    assert f(4) == pytest.approx(0.2 * 5 / 10)
    assert f(10) == pytest.approx(0.2)  # t = 0: the peak
    assert f(60) == pytest.approx(0.02 + 0.18 * 0.5)  # t = T/2: halfway
    assert f(35) == pytest.approx(0.02 + 0.18 * (1 + math.cos(math.pi * 0.25)) / 2)


def test_schedules_match_torch():
    model = torch.nn.Linear(2, 2)
    total = 40
    # cosine == CosineAnnealingLR(T_max=total), stepped per batch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(_sched("cosine"), 0.1, total) == pytest.approx(expected)
    # onecycle == OneCycleLR (cos), without momentum cycling
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(_sched("onecycle"), 0.1, total) == pytest.approx(expected)
    # cyclic == CyclicLR triangular with step_size_up = T / (2 cycles)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=10, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(_sched("cyclic", cycles=2, min_lr_ratio=0.1), 0.1, total) == pytest.approx(expected)


def test_step_and_constant_schedules():
    lrs = _lrs(_sched("step", milestones=[0.5, 0.75], gamma=0.1), 1.0, 8)
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert _lrs(_sched("constant"), 0.3, 5) == pytest.approx([0.3] * 5)


def test_unknown_schedule_names_nearest():
    with pytest.raises(KeyError, match="cosine"):
        make_schedule(_sched("cosin"), 0.1, 10, 5)


@pytest.mark.parametrize("name", list_schedules())
def test_every_schedule_stays_within_zero_and_peak(name):
    lrs = _lrs(_sched(name, warmup_epochs=1.0), 0.1, total=50, per_epoch=5)
    assert lrs[0] == pytest.approx(0.1 / 5)  # warm-up step 1 of 5
    assert all(0.0 <= v <= 0.1 + 1e-12 for v in lrs)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_is_finite_and_takes_indices_or_soft_targets(name):
    logits = torch.randn(4, 3, requires_grad=True)
    fn = build_loss(LossConfig(name=name, label_smoothing=0.1))
    hard = fn(logits, torch.tensor([0, 1, 2, 1]))
    soft = fn(logits, torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float())
    assert hard.shape == () and torch.isfinite(hard) and hard.item() == pytest.approx(soft.item())
    hard.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_builtin_optimizers_step(name):
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net.parameters(), OptimConfig(name=name, lr=0.1), model=net)
    before = net.weight.detach().clone()
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, net.weight)


def test_losses_on_known_inputs():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    target = torch.tensor([1])
    ce = build_loss(LossConfig(name="cross_entropy", label_smoothing=0.0))
    assert ce(logits, target).item() == pytest.approx(-math.log(0.75))
    # label smoothing 0.2 over K = 2: y' = (0.1, 0.9)
    ce_ls = build_loss(LossConfig(name="cross_entropy", label_smoothing=0.2))
    assert ce_ls(logits, target).item() == pytest.approx(-(0.1 * math.log(0.25) + 0.9 * math.log(0.75)))
    # soft targets (mixup) give the same as the equivalent probabilities
    assert ce(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-math.log(0.75))

    z = torch.tensor([[0.5, 3.0]])  # one-hot (0, 1): differences 0.5 and 2.0
    sl1 = build_loss(LossConfig(name="smooth_l1", label_smoothing=0.0))
    assert sl1(z, target).item() == pytest.approx((0.5 * 0.5**2 + (2.0 - 0.5)) / 2)

    bce = build_loss(LossConfig(name="bce", label_smoothing=0.0))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert bce(z, target).item() == pytest.approx(-(math.log(1 - sig(0.5)) + math.log(sig(3.0))) / 2)


def test_unknown_loss_and_optimizer_list_valid_names():
    with pytest.raises(KeyError, match="cross_entropy"):
        build_loss(LossConfig(name="cross_entropyy", label_smoothing=0.0))
    with pytest.raises(KeyError, match="sgd"):
        build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(name="sdg"))


def test_register_optimizer_extension_point():
    if "test_plain_sgd" not in OPTIMIZERS:

        @register_optimizer("test_plain_sgd")
        def _plain(params, cfg):
            return torch.optim.SGD(params, lr=cfg.lr, **cfg.extra)

    assert "test_plain_sgd" in list_optimizers()
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(name="test_plain_sgd", extra={"dampening": 0.1}))
    assert opt.param_groups[0]["dampening"] == 0.1
    if "test_model_aware" not in OPTIMIZERS:

        @register_optimizer("test_model_aware")
        def _aware(params, cfg, model):  # e.g. DessiLBI, which groups parameters by layer
            return torch.optim.SGD([p for n, p in model.named_parameters() if n.endswith("weight")], lr=cfg.lr)

    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(net.parameters(), OptimConfig(name="test_model_aware"), model=net)
    assert len(opt.param_groups[0]["params"]) == 1  # the weight only
    with pytest.raises(ValueError, match="extra"):
        build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(name="sgd", extra={"kappa": 1}))


# ---------------------------------------------------------------- summary


def _fake_metrics(path: Path, epochs: int) -> list[dict]:
    rows = [
        {
            "epoch": e,
            "step": 10 * e,
            "lr": 0.1 / e,
            "train_loss": 1.0 / e,
            "train_acc": 0.5 + 0.04 * e,
            "test_loss": 2.0 / e,
            "test_acc": [0.3, 0.5, 0.6, 0.8, 0.7, 0.75, 0.8, 0.79, 0.78, 0.77, 0.76, 0.75][e - 1],
            "seconds": 2.5,
        }
        for e in range(1, epochs + 1)
    ]
    RecordWriter(path).write_many(rows)
    return rows


def test_summary_means_of_last_epochs(tmp_path):
    _fake_metrics(tmp_path / "metrics.csv", 12)
    s = summarize(read_records(tmp_path / "metrics.csv"), last_n=10)  # epochs 3..12
    assert s["last_n"] == 10
    assert s["train_loss"] == pytest.approx(sum(1.0 / e for e in range(3, 13)) / 10)
    assert s["train_acc"] == pytest.approx(0.5 + 0.04 * 7.5)  # mean epoch of 3..12 is 7.5
    assert s["test_acc"] == pytest.approx((0.6 + 0.8 + 0.7 + 0.75 + 0.8 + 0.79 + 0.78 + 0.77 + 0.76 + 0.75) / 10)
    assert (s["best_test_acc"], s["best_epoch"]) == (0.8, 4)  # earliest of the ties
    assert s["wall_seconds"] == pytest.approx(30.0)
    few = summarize(read_records(tmp_path / "metrics.csv")[:3], last_n=10)  # fewer than 10: all of them
    assert few["last_n"] == 3 and few["test_acc"] == pytest.approx((0.3 + 0.5 + 0.6) / 3)


def test_write_train_report_from_files(tmp_path):
    _fake_metrics(tmp_path / "metrics.csv", 12)
    save_config(TrainConfig(), tmp_path / "config.yaml")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"param_bytes": 2**20 * 3}))
    report = write_train_report(tmp_path).read_text()
    assert "| Training Loss | Training Accuracy | Validation Accuracy |" in report
    assert "| 0.1603 | 0.8000 | 0.7500 | 0.8000 (4) | 30.0 | 3 |" in report  # hand-computed above
    for name in ("loss", "accuracy", "lr"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 0


# ---------------------------------------------------------------- configs


def test_unknown_key_suggests_nearest_and_bad_values_quoted():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(TrainConfig, None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="optim.lr must be > 0, got -1.0"):
        load_config(TrainConfig, None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="run.epochs must be >= 1, got 0"):
        load_config(TrainConfig, None, ["run.epochs=0"])
    with pytest.raises(ConfigError, match="expected an integer, got 'ten'"):
        load_config(TrainConfig, None, ["run.epochs=ten"])


def test_bad_names_reported_before_training(tmp_path):
    config = tiny_config(**{"model.name": "lenet", "optim.name": "sgdd", "loss.name": "ce"})
    with pytest.raises(ValueError) as info:
        train(config, runs_dir=tmp_path / "runs")
    message = str(info.value)
    assert "'lenet5'" in message and "'sgd'" in message and "unknown loss 'ce'" in message
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda"):
        train(tiny_config(), runs_dir=tmp_path, device="cuda")


def test_cli_reports_config_error_in_one_line(capsys):
    from lowbit.cli import main

    assert main(["train", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'optim.lr'" in err


def test_default_config_is_train_digits_yaml():
    assert load_config(TrainConfig, REPO / "configs" / "train-digits.yaml") == TrainConfig()


def test_overrides_without_a_file_apply_to_the_builtin_recipe():
    config = load_train_config(None, ["model.act=gelu"])
    assert (config.model.name, config.data.image_size, config.model.act) == ("lenet5", 32, "gelu")
    # a file's model section does not inherit the digits recipe's width_mult
    cifar = load_train_config(REPO / "configs" / "train-resnet18-cifar10.yaml")
    assert cifar.model.width_mult is None and cifar.model.create_kwargs() == {}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_name_registered_things(path):
    from lowbit.train.loop import check_names

    config = load_config(TrainConfig, path)
    check_names(config)


# ---------------------------------------------------------------- training runs


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def _metrics_without_time(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_records(run_dir / "metrics.csv")]


def test_same_seed_same_numbers(tmp_path):
    a = train(tiny_config(), run_dir=tmp_path / "a")
    b = train(tiny_config(), run_dir=tmp_path / "b")
    assert _metrics_without_time(a) == _metrics_without_time(b)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(read_records(a / "metrics.csv")) == 2
    assert (a / "report.md").exists() and (a / "config.yaml").exists() and (a / "meta.yaml").exists()
    c = train(tiny_config(**{"run.seed": 1}), run_dir=tmp_path / "c")
    assert _metrics_without_time(c) != _metrics_without_time(a)


@pytest.fixture
def nan_loss():
    """A registered loss that is cross-entropy until training step ``at``, then NaN."""
    if "test_nan_at_step" not in LOSSES:

        @register_loss("test_nan_at_step")
        def _factory(cfg):
            ce = torch.nn.functional.cross_entropy
            calls = {"n": 0}

            def loss(logits, targets):
                if logits.requires_grad:
                    calls["n"] += 1
                    if calls["n"] >= 12:  # epoch 2 (8 steps per epoch), batch 4
                        return ce(logits, targets) * float("nan")
                return ce(logits, targets)

            return loss

    return "test_nan_at_step"


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, nan_loss):
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(**{"loss.name": nan_loss, "run.epochs": 3}), run_dir=tmp_path / "run")
    message = str(info.value)
    assert "epoch 2" in message and "step 12" in message
    assert "learning rate" in message and "grad_clip" in message
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 8 and not state["complete"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(read_records(tmp_path / "run" / "metrics.csv")) == 1


def _run_cli(args: list[str], env_extra: dict | None = None, sigint=signal.SIG_DFL) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOWBIT_TEST_INTERRUPT_AT_STEP"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "lowbit", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),  # SIG_DFL: as from a terminal
    )


def test_a_run_started_with_sigint_ignored_keeps_it_ignored(tmp_path):
    """A script's background job inherits SIGINT ignored: the run goes on through a real SIGINT (as Python does)."""
    args = ["--runs-dir", str(tmp_path / "runs"), "--quiet", *tiny_overrides(**{"run.epochs": 1})]
    done = _run_cli(args, {"LOWBIT_TEST_INTERRUPT_AT_STEP": "3"}, sigint=signal.SIG_IGN)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["complete"]


def test_resume_after_real_sigint_mid_epoch_equals_uninterrupted(tmp_path):
    overrides = tiny_overrides(**{"run.epochs": 3, "augment.mixup_alpha": 0.4, "model.act": "rrelu"})
    config_file = tmp_path / "tiny.yaml"
    save_config(load_train_config(None, overrides), config_file)
    reference = train(load_config(TrainConfig, config_file), run_dir=tmp_path / "reference")

    # step 13 = epoch 2, batch 5 of 8: the process sends itself a real SIGINT there
    first = _run_cli([str(config_file), "--runs-dir", str(tmp_path / "runs"), "--quiet"], {"LOWBIT_TEST_INTERRUPT_AT_STEP": "13"})
    assert first.returncode == 130, first.stderr
    assert "--resume" in first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["position"], state["step"]) == (1, 5, 13)  # mid-epoch
    assert len(read_records(run_dir / "metrics.csv")) == 1

    second = _run_cli(["--resume", str(run_dir), "--quiet"])
    assert second.returncode == 0, second.stderr
    assert _metrics_without_time(run_dir) == _metrics_without_time(reference)
    resumed, uninterrupted = _weights(run_dir), _weights(reference)
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["complete"]


@pytest.mark.slow
def test_sigterm_from_outside_then_resume(tmp_path):
    """SIGTERM from outside, at whatever point it lands: the resumed run still ends identically."""
    config_file = tmp_path / "tiny.yaml"
    save_config(tiny_config(**{"run.epochs": 3}), config_file)
    reference = train(load_config(TrainConfig, config_file), run_dir=tmp_path / "reference")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "train", str(config_file), "--runs-dir", str(tmp_path / "runs"), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = 60.0
    while deadline > 0 and not list((tmp_path / "runs").glob("*/metrics.csv")):
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            deadline -= 0.05
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    (run_dir,) = (tmp_path / "runs").iterdir()
    if proc.returncode == 130:
        assert _run_cli(["--resume", str(run_dir), "--quiet"]).returncode == 0
    else:  # the run had already finished when the signal came
        assert proc.returncode == 0, err
    assert _metrics_without_time(run_dir) == _metrics_without_time(reference)
    w, ref = _weights(run_dir), _weights(reference)
    assert all(torch.equal(w[k], ref[k]) for k in ref)


def test_init_from_loads_matching_tensors_and_skips_a_different_head(tmp_path):
    from lowbit.models import create_model
    from lowbit.train import load_matching_weights

    torch.manual_seed(0)
    pretrained = create_model("lenet5", num_classes=100, in_channels=1)
    torch.save({"model": pretrained.state_dict()}, tmp_path / "last.pt")
    model = create_model("lenet5", num_classes=10, in_channels=1)
    info = load_matching_weights(model, tmp_path / "last.pt")
    assert set(info["skipped"]) == {"fc2.weight", "fc2.bias"}  # the 100-class head
    assert torch.equal(model.conv1.weight, pretrained.conv1.weight)
    with pytest.raises(FileNotFoundError):
        load_matching_weights(model, tmp_path / "missing.pt")


# ---------------------------------------------------------------- DessiLBI through the config


def test_dessilbi_from_config_records_the_sparsity_path(tmp_path):
    config = tiny_config(**{"optim.name": "dessilbi", "optim.lr": 0.02, "optim.weight_decay": 0.0})
    config.optim.extra = {"kappa": 1.0, "mu": 5.0}
    run_dir = train(config, run_dir=tmp_path / "run")
    rows = read_records(run_dir / "metrics.csv")
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= row["gamma_sparsity"] <= 1.0 and row["residue"] >= 0.0
        assert 0.0 <= row["gamma_sparsity/conv1.weight"] <= 1.0
    # Γ is optimizer state, so the checkpoint (and resume) carries it.
    optimizer_state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizer"]["state"]
    assert any("gamma" in per_param for per_param in optimizer_state.values())
    with pytest.raises(ValueError, match="does not fit DessiLBI"):
        bad = tiny_config(**{"optim.name": "dessilbi"})
        bad.optim.extra = {"kapa": 1.0}
        train(bad, run_dir=tmp_path / "bad")
