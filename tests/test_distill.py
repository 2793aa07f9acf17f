"""Distillation: the losses against hand-written references, the teacher sources, errors, two stages, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.config import ConfigError
from lowbit.runs import read_records
from lowbit.train import load_train_config, train
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.distill import attention_loss, attention_map, distribution_loss, kd_loss
from lowbit.train.loop import INTERRUPT_ENV, TrainingInterrupted

BASE = {
    "data.image_size": "null",  # digits at 8x8
    "data.train_subset": 128,
    "data.test_subset": 64,
    "data.batch_size": 32,  # 4 steps per epoch
    "run.tensorboard": "false",
    "run.threads": 1,
}


def overrides(**extra: object) -> list[str]:
    return [f"{k}={v}" for k, v in {**BASE, **extra}.items()]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A float ResNet-18 of width 4 trained 2 epochs on digits: the teacher's run directory."""
    path = tmp_path_factory.mktemp("teacher") / "run"
    return train(load_train_config(None, overrides(**{"model.name": "resnet18", "model.width": 4, "run.epochs": 2})), run_dir=path)


def student(teacher_run, **extra: object) -> list[str]:
    defaults = {"model.name": "xnor_resnet18", "model.width": 2, "run.epochs": 2, "distill.teacher": str(teacher_run)}
    return overrides(**{**defaults, **extra})


# --- the losses ----------------------------------------------------------------------------


def test_kd_loss_is_t_squared_kl_of_tempered_softmaxes():
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for t in (1.0, 4.0):
        p, q = torch.softmax(zt / t, 1), torch.softmax(zs / t, 1)
        expected = t * t * (p * (p.log() - q.log())).sum(1).mean()  # written out
        torch.testing.assert_close(kd_loss(zs, zt, t), expected)
    assert kd_loss(zt, zt, 4.0).abs() < 1e-12


def test_distribution_loss_is_cross_entropy_to_the_teacher_distribution():
    torch.manual_seed(1)
    zs, zt = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    p = torch.softmax(zt, 1)
    torch.testing.assert_close(distribution_loss(zs, zt), F.cross_entropy(zs, p))  # soft-target cross-entropy
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(distribution_loss(zs, zt), kd_loss(zs, zt, 1.0) + entropy)  # = KL + H(p)


def test_attention_loss_by_hand():
    torch.manual_seed(2)
    a = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    b = torch.randn(3, 8, 4, 4, dtype=torch.float64)  # another channel count: fine
    qa = (a**2).sum(1).reshape(3, 16)
    qb = (b**2).sum(1).reshape(3, 16)
    expected = torch.stack([(qa[n] / qa[n].norm() - qb[n] / qb[n].norm()).norm() for n in range(3)]).mean()
    torch.testing.assert_close(attention_loss(a, b), expected)
    assert attention_loss(a, 3.0 * a).abs() < 1e-12  # invariant to the scale of the maps
    assert attention_map(a).shape == (3, 16)


# --- through the training loop ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kd", "distribution"])
def test_distilled_run_differs_from_plain_and_leaves_the_teacher_alone(tmp_path, teacher_run, kind):
    before = load_checkpoint(teacher_run / "checkpoints" / "last.pt")["model"]
    plain = train(load_train_config(None, student(teacher_run) + ["distill=null"]), run_dir=tmp_path / "plain")
    run = train(load_train_config(None, student(teacher_run, **{"distill.loss": kind})), run_dir=tmp_path / "kd")
    rows = read_records(run / "metrics.csv")
    assert [r["distill/stage"] for r in rows] == [1.0, 1.0]
    assert rows[0]["train_loss"] != read_records(plain / "metrics.csv")[0]["train_loss"]
    after = load_checkpoint(teacher_run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_teacher_as_zoo_model_with_checkpoint_equals_teacher_as_run(tmp_path, teacher_run):
    by_run = train(load_train_config(None, student(teacher_run)), run_dir=tmp_path / "a")
    by_model = train(
        load_train_config(None, student(teacher_run, **{
            "distill.teacher": "null",
            "distill.teacher_model": "{name: resnet18, width: 4}",
            "distill.teacher_checkpoint": str(teacher_run / "checkpoints" / "last.pt"),
        })),
        run_dir=tmp_path / "b",
    )
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_records(by_run / "metrics.csv")) == strip(read_records(by_model / "metrics.csv"))


def test_attention_transfer_runs_and_bad_layers_are_named(tmp_path, teacher_run):
    good = student(teacher_run, **{
        "distill.attention_weight": 100, "distill.attention_layers": "[layer1,layer2]",
    })  # xnor_resnet18 and resnet18 share the layer names and map sizes
    run = train(load_train_config(None, good), run_dir=tmp_path / "at")
    assert len(read_records(run / "metrics.csv")) == 2
    with pytest.raises(ValueError, match=r"the student has no module \['layer9'\]"):
        train(load_train_config(None, good + ["distill.attention_layers=[layer1,layer9]"]), run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match=r"one size H x W; student 'layer1' gives \(2, 8, 8\), teacher 'layer2' \(8, 4, 4\)"):
        train(
            load_train_config(None, good + ["distill.attention_layers=[layer1]", "distill.teacher_attention_layers=[layer2]"]),
            run_dir=tmp_path / "y",
        )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_teacher_errors_before_training(tmp_path, teacher_run):
    with pytest.raises(FileNotFoundError, match="distill.teacher=.*no config.yaml"):
        train(load_train_config(None, student(teacher_run, **{"distill.teacher": str(tmp_path / "nope")})), runs_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="trained on 'digits', the student on 'fashion_mnist'"):
        from lowbit.train.distill import DistillConfig, build_teacher

        build_teacher(DistillConfig(teacher=str(teacher_run)), 10, 1, "fashion_mnist")
    with pytest.raises(ValueError, match="does not fit the teacher model"):
        train(load_train_config(None, student(teacher_run, **{
            "distill.teacher": "null", "distill.teacher_model": "{name: resnet18, width: 8}",
            "distill.teacher_checkpoint": str(teacher_run / "checkpoints" / "last.pt"),
        })), runs_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    for bad, words in (
        ({"distill.teacher": "null"}, "distill needs one teacher"),
        ({"distill.alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"distill.attention_weight": 10}, "needs distill.attention_layers"),
        ({"distill.teacher_checkpoint": "x.pt"}, "distill needs one teacher"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_train_config(None, student(teacher_run, **bad))


# --- Real-to-Binary's two stages ------------------------------------------------------------


def two_stage(teacher_run, **extra: object) -> list[str]:
    return student(teacher_run, **{
        "model.name": "real_to_binary_net", "model.width": 8, "model.stem": "small",
        "model.kwargs.weight_quantizer": "none",  # stage 1: binary activations, real weights
        "distill.binarize_weights_at": 1, "distill.attention_weight": 10,
        "distill.attention_layers": "[blocks.1]", "distill.teacher_attention_layers": "[layer1]",
        "run.epochs": 3, "optim.name": "adam", "optim.lr": 0.003, **extra,
    })


def test_stage_two_binarises_the_weights_and_the_stage_one_student_teaches():
    from lowbit.models import create_model
    from lowbit.nn import BinaryConv2d
    from lowbit.quant import ClippedSignSTE
    from lowbit.train.distill import DistillConfig, Distiller, freeze

    torch.manual_seed(0)
    model = create_model("real_to_binary_net", width=8, stem="small", in_channels=1, weight_quantizer=None)
    teacher = freeze(create_model("real_to_binary_net", width=8, stem="small", in_channels=1, weight_quantizer=None))
    config = DistillConfig(teacher="unused", binarize_weights_at=2, attention_weight=1.0, attention_layers=["blocks.0"])
    distiller = Distiller(config, teacher, model, "test", steps_per_epoch=4)
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(distiller.stage2_layers) == len(convs) == 16 and all(c.weight_quantizer is None for c in convs)
    distiller.on_epoch_start(1, model)
    assert distiller.stage == 1 and distiller.active_teacher is teacher
    distiller.on_epoch_start(2, model)
    assert distiller.stage == 2 and all(isinstance(c.weight_quantizer, ClippedSignSTE) for c in convs)
    snapshot = distiller.active_teacher
    assert snapshot is not teacher and not snapshot.training
    assert all(torch.equal(a, b) for a, b in zip(snapshot.state_dict().values(), model.state_dict().values()))
    assert all(m.weight_quantizer is None for m in snapshot.modules() if isinstance(m, BinaryConv2d))  # real weights
    x = torch.randn(4, 1, 32, 32)
    logits = model(x)
    loss = distiller.loss(x, logits, torch.tensor(0.0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in snapshot.parameters())


def test_the_two_stage_schedule_needs_real_weights_to_binarise(tmp_path, teacher_run):
    with pytest.raises(ValueError, match="no binary layer with real weights"):
        train(load_train_config(None, two_stage(teacher_run, **{"model.kwargs.weight_quantizer": "ste_clipped"})), runs_dir=tmp_path)


@pytest.mark.parametrize("interrupt_at", [3, 6])  # stage 1 (epoch 1) and stage 2 (epoch 2, after the snapshot)
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch, teacher_run, interrupt_at):
    config = two_stage(teacher_run)
    reference = train(load_train_config(None, config), run_dir=tmp_path / "reference")
    records = read_records(reference / "metrics.csv")
    assert [r["distill/stage"] for r in records] == [1.0, 2.0, 2.0]
    # the flip ratio starts with stage 2, the epoch the weights become binary, over all 16 binarised convs
    assert records[0].get("flip_ratio") is None
    assert all(0 < r["flip_ratio"] < 1 for r in records[1:])
    assert sum(k.startswith("flip_ratio/") for k in records[1]) == 16
    assert f"| layer | epoch {int(records[1]['epoch'])} | last epoch |" in (reference / "report.md").read_text()
    monkeypatch.setenv(INTERRUPT_ENV, str(interrupt_at))
    with pytest.raises(TrainingInterrupted):
        train(load_train_config(None, config), run_dir=tmp_path / "run")
    monkeypatch.delenv(INTERRUPT_ENV)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == interrupt_at and saved["distill"]["stage"] == (1 if interrupt_at < 4 else 2)
    train(resume=tmp_path / "run")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_records(tmp_path / "run" / "metrics.csv")) == strip(read_records(reference / "metrics.csv"))
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert all(torch.equal(a["distill"]["snapshot"][k], b["distill"]["snapshot"][k]) for k in b["distill"]["snapshot"])


def test_a_teacher_glob_resolves_to_the_newest_finished_run_and_is_saved(tmp_path, teacher_run):
    import shutil

    from lowbit.config import load_config
    from lowbit.train import TrainConfig

    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(teacher_run, runs / "teacher-20260101-000000")
    shutil.copytree(teacher_run, runs / "teacher-20260102-000000")
    (runs / "teacher-20260103-000000").mkdir()  # newer, but not a finished run
    run = train(load_train_config(None, student(teacher_run, **{"distill.teacher": str(runs / "teacher-*")})), run_dir=tmp_path / "s")
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved.distill.teacher == str(runs / "teacher-20260102-000000")
    with pytest.raises(FileNotFoundError, match="matches no finished"):
        train(load_train_config(None, student(teacher_run, **{"distill.teacher": str(runs / "nothing-*")})), runs_dir=tmp_path / "r")
