"""``run.precision: fp16``: autocast with dynamic loss scaling (lowbit.train.precision), on the CPU.

float16 autocast runs on the CPU too (slowly), so the loss scaling's plumbing is
checked here against the fp32 run of the same config: gradient statistics that
describe the true gradients (not S times them), clipping of the true gradient,
a skipped step on overflow, the scale in the checkpoint and an exact resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.runs import read_records
from lowbit.train import TrainingInterrupted, load_checkpoint, load_train_config, train
from lowbit.train.loop import INTERRUPT_ENV
from lowbit.train.precision import Precision

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny_overrides  # noqa: E402 (lenet5 on 256 digits, 8 steps per epoch, 2 epochs)


def tiny(**extra: object):
    return load_train_config(None, tiny_overrides(**extra))


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_gradient_statistics_and_clipping_see_the_true_gradients(tmp_path):
    """fp16 against fp32: the same steps within fp16 rounding, not S = 65536 times the gradients."""
    settings = {"run.grad_stats_every": 4, "optim.grad_clip": 0.05}
    fp32 = train(tiny(**settings), run_dir=tmp_path / "fp32")
    fp16 = train(tiny(**settings, **{"run.precision": "fp16"}), run_dir=tmp_path / "fp16")
    scaler = load_checkpoint(fp16 / "checkpoints" / "last.pt")["grad_scaler"]
    assert scaler["scale"] >= 2.0**10  # the gradients were scaled ...
    a, b = read_records(fp32 / "grad_stats.csv"), read_records(fp16 / "grad_stats.csv")
    assert [(r["step"], r["layer"], r["kind"]) for r in a] == [(r["step"], r["layer"], r["kind"]) for r in b]
    for x, y in zip(a, b):  # ... and the statistics divide S out: equal at step 0 (the same weights) ...
        tolerance = 2e-2 if x["step"] == 0 else 0.5  # ... within the runs' drift later (not a factor S)
        assert y["max_abs"] == pytest.approx(x["max_abs"], rel=tolerance) and y["std"] == pytest.approx(x["std"], rel=tolerance)
    # grad_clip = 0.05 binds at every step here: clipping S times the gradient would leave steps 1/S as long
    for x, y in zip(read_records(fp32 / "metrics.csv"), read_records(fp16 / "metrics.csv")):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-3)
    for key, value in weights(fp32).items():
        assert torch.allclose(weights(fp16)[key], value, atol=2e-3), key
    assert load_checkpoint(fp32 / "checkpoints" / "last.pt")["grad_scaler"] is None
    assert "fp16 autocast with loss scaling" in (fp16 / "report.md").read_text()


def test_an_interrupted_fp16_run_resumes_exactly(tmp_path, monkeypatch):
    reference = train(tiny(**{"run.precision": "fp16"}), run_dir=tmp_path / "reference")
    monkeypatch.setenv(INTERRUPT_ENV, "5")  # a real SIGINT after step 5 of 16
    with pytest.raises(TrainingInterrupted):
        train(tiny(**{"run.precision": "fp16"}), run_dir=tmp_path / "run")
    monkeypatch.delenv(INTERRUPT_ENV)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["grad_scaler"]["_growth_tracker"] == 5
    train(resume=tmp_path / "run")
    for key, value in weights(reference).items():
        assert torch.equal(weights(tmp_path / "run")[key], value), key
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["grad_scaler"] == \
        load_checkpoint(reference / "checkpoints" / "last.pt")["grad_scaler"]


def test_a_step_whose_gradients_overflow_is_skipped_and_the_scale_halves():
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision("fp16", torch.device("cpu"))
    with precision.autocast():
        out = model(torch.randn(8, 4))
    assert out.dtype == torch.float16
    precision.backward(out.float().sum() * 1e4)  # times S = 65536: beyond float16's 65504 in the backward
    assert not precision.step(optimizer)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # skipped
    assert precision.loss_scale == 32768.0
    optimizer.zero_grad()
    with precision.autocast():
        loss = model(torch.randn(8, 4)).float().mean() * 1e-2  # S times its gradients stays within float16
    precision.backward(loss)
    assert precision.step(optimizer) and not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert Precision("fp32", torch.device("cpu")).loss_scale == 1.0


def test_fp16_with_quantized_gradients_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"run.precision=fp16 with quant: that quantizes gradients.*run.precision=bf16"):
        tiny(**{"run.precision": "fp16", "quant": "{w_bits: 8, a_bits: 8}"})
    tiny(**{"run.precision": "fp16", "quant": "{w_bits: 8, a_bits: 8, g_bits: null, e_bits: null}"})  # allowed
    with pytest.raises(ValueError, match="fp32"):
        tiny(**{"run.precision": "fp8"})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_runs_track_the_fp32_run(tmp_path):
    extra = {"run.device": "cuda", "model.name": "resnet9", "model.width_mult": 0.125, "data.image_size": "null"}
    fp32 = read_records(train(tiny(**extra), run_dir=tmp_path / "fp32") / "metrics.csv")
    for precision in ("bf16", "fp16"):
        low = read_records(train(tiny(**extra, **{"run.precision": precision}), run_dir=tmp_path / precision) / "metrics.csv")
        for x, y in zip(fp32, low):  # bf16 keeps 8 bits of mantissa: a few per cent after 16 steps
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=5e-2), precision
