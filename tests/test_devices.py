"""Devices: names, the no-CUDA error before any work, TF32, bf16 autocast and channels_last on the CPU.

Tests marked ``cuda`` compare the CPU with a GPU; they are skipped where torch sees no CUDA
device and run wherever one exists (``pytest -m cuda``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.devices import check_device_name, chunk_numbers, resolve_device, set_tf32
from lowbit.models import register_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_device_names_and_the_one_line_error():
    assert resolve_device("cpu") == torch.device("cpu")
    for good in ("cpu", "cuda", "cuda:0", "cuda:3"):
        assert check_device_name(good) == good
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0:1"):
        with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N"):
            check_device_name(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"probe.device='cuda:1' but no CUDA device is available.*use probe.device=cpu"):
            resolve_device("cuda:1", "probe.device")
    assert chunk_numbers(torch.device("cpu"), 1 << 19) == 1 << 19  # the CPU keeps its cache-sized default


def test_tf32_switch():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


SEEN: list = []  # (dtype, channels_last) of the first conv's output in every training forward


class _Recorder(nn.Module):
    """A small CNN that notes the dtype and memory format of its first conv's output (4 channels: the
    formats differ, as they would not for a 1-channel input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        h = self.conv(x)
        if self.training:
            SEEN.append((h.dtype, h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()))
        return self.head(h.relu().mean((2, 3)))


@pytest.fixture
def recorder_model():
    """``test_dtype_recorder`` in the model registry for one test (the zoo's parametrised tests never see it)."""
    from lowbit.models.registry import MODELS

    register_model("test_dtype_recorder")(lambda num_classes=10, in_channels=1: _Recorder(num_classes, in_channels))
    yield "test_dtype_recorder"
    MODELS._entries.pop("test_dtype_recorder")


@pytest.mark.parametrize("precision,channels_last", [("fp32", False), ("bf16", False), ("bf16", True), ("fp32", True),
                                                     ("fp16", False)])
def test_bf16_autocast_and_channels_last_on_the_cpu(tmp_path, precision, channels_last, recorder_model):
    from lowbit.runs import read_records
    from lowbit.train import load_train_config, train

    config = load_train_config(None, [
        "model.name=test_dtype_recorder", "data.image_size=8", "data.train_subset=128", "data.test_subset=64",
        "data.batch_size=32", "run.epochs=2", "run.tensorboard=false", "run.threads=1", "augment.crop_padding=0",
        f"run.precision={precision}", f"model.channels_last={str(channels_last).lower()}",
    ])
    SEEN.clear()
    run_dir = train(config, run_dir=tmp_path / "run")
    expected_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    assert SEEN and all(dtype == expected_dtype for dtype, _ in SEEN)
    assert all(layout == channels_last for _, layout in SEEN)
    rows = read_records(run_dir / "metrics.csv")
    assert len(rows) == 2 and all(0.0 <= r["test_acc"] <= 1.0 and r["train_loss"] == r["train_loss"] for r in rows)


def test_train_turns_tf32_off_unless_allowed(tmp_path, recorder_model):
    from lowbit.train import load_train_config, train

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        base = ["model.name=test_dtype_recorder", "data.image_size=8", "data.train_subset=64", "data.test_subset=32",
                "data.batch_size=32", "run.epochs=1", "run.tensorboard=false", "augment.crop_padding=0"]
        set_tf32(True)
        train(load_train_config(None, base), run_dir=tmp_path / "a")
        assert not torch.backends.cuda.matmul.allow_tf32
        train(load_train_config(None, base + ["run.allow_tf32=true"]), run_dir=tmp_path / "b")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_train_and_analyze_refuse_a_bad_device_before_any_work(tmp_path, capsys):
    from lowbit.cli import main

    assert main(["train", "--device", "gpu", "--runs-dir", str(tmp_path / "t")]) == 2
    assert "run.device must be cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert main(["analyze", "landscape", "--device", "tpu", "--runs-dir", str(tmp_path / "a")]) == 2
    assert "device must be cpu, cuda or cuda:N, got 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["analyze", "bn-smoothness", "--device", "cuda", "--runs-dir", str(tmp_path / "b")]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@needs_cuda
@pytest.mark.cuda
def test_cuda_landscape_equals_cpu(tmp_path):
    """The same loss landscape on the GPU and the CPU, within float32 tolerance (TF32 off)."""
    from lowbit.analysis.config import QUICK_LENET
    from lowbit.analysis.directions import random_direction
    from lowbit.analysis.landscape import evaluate_affine, grid_coordinates
    from lowbit.analysis.source import load_trained, quick_train

    checkpoint = quick_train(QUICK_LENET + ["run.epochs=1", "data.train_subset=128", "data.test_subset=64"], tmp_path / "run")
    results = []
    for device in ("cpu", "cuda"):
        set_tf32(False)
        trained = load_trained(checkpoint, None, device)
        theta = {n: p.detach().clone() for n, p in trained.model.named_parameters()}
        generator = torch.Generator().manual_seed(0)
        d1, d2 = random_direction(theta, generator), random_direction(theta, generator)
        images, labels = trained.images("test", limit=64)
        _, _, coords = grid_coordinates([-1, 1], [-1, 1], 5)
        for vmap_points in (False, True):
            results.append(evaluate_affine(trained.model, theta, [d1, d2], coords, images, labels, batch_size=32,
                                           points_per_batch=8, vmap_points=vmap_points)[0])
    assert torch.allclose(results[0], results[2], rtol=1e-4) and torch.allclose(results[1], results[3], rtol=1e-4)
