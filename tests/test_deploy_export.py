"""``lowbit export``: trained runs to ONNX (checked in a real onnxruntime session) and to the packed format.

Each run is trained for real (``lowbit.train.loop.train``) on a few hundred digits;
the exported files are reloaded the way a user would and compared with eager PyTorch.
"""

import pytest
import torch

from lowbit.cli import main
from lowbit.deploy.export import check_packed, load_packed, load_run
from lowbit.train.config import load_train_config
from lowbit.train.loop import train

pytest.importorskip("onnxruntime")

TINY = {
    "data.train_subset": 256,
    "data.test_subset": 96,
    "data.batch_size": 32,
    "run.epochs": 1,
    "run.tensorboard": False,
    "run.threads": 1,
    "schedule.warmup_epochs": 0.5,
}


def trained_run(tmp_path_factory, name, **overrides):
    settings = dict(TINY, **overrides)
    config = load_train_config(None, [f"{k}={v}" for k, v in settings.items()])
    return train(config, run_dir=tmp_path_factory.mktemp(name) / "run")


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    # XNOR ResNet-18, width 4, digits at their native 8x8: stages at 8, 4, 2, 1 pixels
    return trained_run(
        tmp_path_factory, "xnor", **{"model.name": "xnor_resnet18", "model.width": 4, "data.image_size": "null", "optim.name": "adam", "optim.lr": 0.003}
    )


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "int8", **{"model.name": "lenet5", "data.image_size": 32, "quant.w_bits": 8})


def test_export_onnx_of_binary_run_matches_eager(binary_run, capsys):
    assert main(["export", str(binary_run)]) == 0
    out = capsys.readouterr().out
    assert (binary_run / "export" / "model.onnx").is_file()
    assert "onnxruntime vs eager: predictions equal on 96/96 test images" in out


def test_export_packed_roundtrip_is_bit_identical(binary_run, capsys):
    assert main(["export", str(binary_run), "--format", "packed"]) == 0
    out = capsys.readouterr().out
    assert "predictions equal on 96/96 test images; max |logit difference| 0 (bit for bit)" in out
    assert "Binary layers' weights" in out
    path = binary_run / "export" / "model.packed.pt"
    payload = torch.load(path, weights_only=True)  # plain values and tensors only
    assert payload["format"] == "lowbit.packed" and payload["model"]["name"] == "xnor_resnet18"
    packed, meta = load_packed(path)
    run = load_run(binary_run)
    agreement = check_packed(packed, run.model, run.inputs)
    assert agreement.identical and agreement.samples == 96
    assert meta["mean"] == list(run.mean)


def test_export_onnx_of_8bit_run(int8_run, capsys):
    """quantize_model layers export (max |x| reduced over named dims, round without copysign)."""
    assert main(["export", str(int8_run), "--format", "onnx"]) == 0
    assert "predictions equal on 96/96" in capsys.readouterr().out


def test_packing_an_8bit_run_names_its_layers(int8_run, capsys):
    assert main(["export", str(int8_run), "--format", "packed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit export: error: cannot pack LeNet5")
    assert "k-bit layer, not binary (export it with --format onnx instead)" in err
    assert not (int8_run / "export" / "model.packed.pt").exists()


def test_export_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "has no config.yaml" in err and len(err.strip().splitlines()) == 1
