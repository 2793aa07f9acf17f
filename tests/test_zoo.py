"""The binary model zoo: published counts pinned, stems, the image-size check, one training step each.

The figures below are copied from the reference implementations' published
summaries (sources in docs/models.md): larq-zoo's docstrings ("Parameters",
"Memory"), larq-zoo's ``lq.models.summary`` snapshots (weights by precision with
BatchNorm fused to 2 values per channel, MACs by precision) and, for ReActNet-A,
the reference PyTorch implementation and the paper. Models are built on the
meta device: the counts need shapes only, so the 62M-parameter AlexNets cost
nothing to build or to run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.models import check_model_fits, create_model, summary
from lowbit.models.binary_blocks import (
    CenteredBatchNorm2d,
    OnePaddedBinaryConv2d,
    batch_norm,
    blur_kernel,
)
from test_models import SMALL

# name -> (published params, which count, published memory MB, which memory)
# "stats": Keras count_params(), BatchNorm moving statistics included; "fused": Larq's summary
# table total (BatchNorm = 2 values per channel, no statistics); "torch": sum of PyTorch parameters.
PUBLISHED_PARAMS = {
    "birealnet18": (11_699_112, "stats", 4.03, "stats"),
    "binary_resnet_e18": (11_699_368, "stats", 4.03, "stats"),
    "real_to_binary_net": (11_995_624, "stats", 5.13, "fused"),
    "binary_densenet28": (5_150_504, "stats", 4.12, "stats"),
    "binary_densenet37": (8_734_120, "stats", 5.25, "stats"),
    "binary_densenet45": (13_939_240, "stats", 7.54, "stats"),
    "xnornet": (62_396_768, "stats", 22.81, "stats"),
    "dorefanet": (62_403_912, "stats", 22.84, "stats"),
    "binary_alexnet": (61_859_192, "stats", 7.49, "stats"),
    "quicknet_small": (12_655_688, "fused", 4.00, "fused"),
    "quicknet": (13_234_088, "fused", 4.17, "fused"),
    "quicknet_large": (23_342_248, "fused", 5.40, "fused"),
    "reactnet_a": (29_343_592, "torch", None, None),
}

# name -> (weights by precision as in Larq's summary table, MACs by precision), from larq-zoo's
# model-summary snapshots; ReActNet-A: counted on the reference implementation (the paper: 4.82e9 BOPs).
PUBLISHED_SUMMARY = {
    "birealnet18": ({1: 10_985_472, 32: 704_040}, {1: 1_676_279_808, 32: 137_793_536}),
    "binary_resnet_e18": ({1: 10_985_472, 32: 704_168}, {1: 1_676_279_808, 32: 137_793_536}),
    "real_to_binary_net": ({1: 10_985_472, 32: 1_001_448}, {1: 1_676_279_808, 32: 138_087_936}),
    "binary_densenet28": ({1: 4_202_496, 32: 929_000}, {1: 3_587_383_296, 32: 202_484_224}),
    "binary_densenet37": ({1: 7_593_984, 32: 1_108_264}, {1: 4_506_808_320, 32: 199_738_368}),
    "binary_densenet45": ({1: 12_349_440, 32: 1_540_072}, {1: 6_430_556_160, 32: 244_103_424}),
    "xnornet": ({1: 58_236_928, 32: 4_150_176}, {1: 1_025_744_896, 32: 113_379_328}),
    "dorefanet": ({1: 58_236_928, 32: 4_157_512}, {2: 2_924_609_536, 32: 125_028_352}),
    "binary_alexnet": ({1: 61_827_776, 32: 20_944}, {1: 768_512_000, 32: 72_855_552}),
    "reactnet_a": ({1: 28_253_184, 32: 1_090_408}, {1: 4_816_896_000, 32: 11_862_016}),
}
# Larq's "Model size" (MiB) in the same snapshots, BatchNorm fused.
PUBLISHED_MODEL_SIZE = {
    "birealnet18": 4.00,
    "binary_resnet_e18": 4.00,
    "real_to_binary_net": 5.13,
    "binary_densenet28": 4.04,
    "binary_densenet37": 5.13,
    "binary_densenet45": 7.35,
    "xnornet": 22.77,
    "dorefanet": 22.80,
    "binary_alexnet": 7.45,
}

ZOO = sorted(PUBLISHED_PARAMS)


def _imagenet_summary(name: str):
    with torch.device("meta"):  # shapes only: no weights are initialised, no convolution is computed
        model = create_model(name, num_classes=1000, in_channels=3)
    return summary(model, (3, 224, 224))


@pytest.mark.parametrize("name", ZOO)
def test_published_parameter_count_and_memory(name):
    s = _imagenet_summary(name)
    params, convention, memory, memory_convention = PUBLISHED_PARAMS[name]
    counted = {
        "stats": s.params_with_statistics,
        "fused": sum(s.fused_params_by_bits.values()),
        "torch": s.params,
    }[convention]
    assert counted == params
    if memory is not None:
        mb = {"stats": s.memory_with_statistics_mb, "fused": s.fused_memory_mb}[memory_convention]
        assert round(mb, 2) == memory


@pytest.mark.parametrize("name", sorted(PUBLISHED_SUMMARY))
def test_published_weights_and_macs_by_precision(name):
    s = _imagenet_summary(name)
    weights, macs = PUBLISHED_SUMMARY[name]
    assert s.fused_params_by_bits == weights
    assert s.macs_by_bits == macs
    if name in PUBLISHED_MODEL_SIZE:
        assert round(s.fused_memory_mb, 2) == PUBLISHED_MODEL_SIZE[name]


def test_conventions_differ_only_by_batchnorm():
    """The three counts are one architecture: PyTorch parameters, + BN statistics, + fused BN."""
    s = _imagenet_summary("binary_alexnet")  # its BatchNorms have an offset only: the conventions all differ
    bn = [layer for layer in s.layers if layer.bn_channels]
    channels = sum(layer.bn_channels for layer in bn)
    assert s.params_with_statistics - s.params == 2 * channels  # running mean and variance
    assert sum(s.fused_params_by_bits.values()) - s.params == channels  # 2 per channel instead of 1 (beta)
    assert s.non_trainable_params == 2 * channels


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("size", [28, 32])
def test_small_stem_runs_on_small_images(name, size):
    kwargs = dict(SMALL[name])
    if "input_size" in kwargs:
        kwargs["input_size"] = size
    model = create_model(name, num_classes=10, in_channels=1, **kwargs)
    check_model_fits(model, name, (1, size, size))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", ["birealnet18", "quicknet_small", "binary_densenet28", "reactnet_a"])
def test_imagenet_stem_on_small_images_is_a_clear_error(name):
    model = create_model(name, in_channels=1, width=8)
    with pytest.raises(ValueError) as info:
        check_model_fits(model, name, (1, 28, 28), "fashion_mnist, data.image_size=null")
    message = str(info.value)
    assert name in message and "'imagenet'" in message and "28x28" in message
    assert "model.stem: small" in message and "fashion_mnist" in message


def test_fixed_size_models_name_their_size():
    model = create_model("xnornet", in_channels=1, input_size=32, stem="small", width_mult=1 / 32)
    with pytest.raises(ValueError, match=r"'xnornet' with stem 'small' is built for 32x32 images, not 28x28"):
        check_model_fits(model, "xnornet", (1, 28, 28))
    lenet = create_model("lenet5", in_channels=1, input_size=28)
    with pytest.raises(ValueError, match=r"'lenet5' is built for 28x28 images, not 8x8 images.*model.input_size: 8"):
        check_model_fits(lenet, "lenet5", (1, 8, 8))
    with pytest.raises(ValueError, match="input channels"):
        check_model_fits(lenet, "lenet5", (3, 28, 28))


def test_seven_by_seven_stem_on_digits_is_a_clear_error():
    model = create_model("resnet18", width=4, stem="7x7", in_channels=1)
    with pytest.raises(ValueError, match=r"'resnet18' with stem '7x7' .* at least 32x32, got 8x8.*model.stem: 3x3"):
        check_model_fits(model, "resnet18", (1, 8, 8))
    check_model_fits(create_model("resnet18", width=4, in_channels=1), "resnet18", (1, 8, 8))  # 3x3 stem: fine


def test_train_rejects_a_model_that_does_not_fit_before_writing_anything(tmp_path):
    from lowbit.train import load_train_config, train

    for overrides, words in (
        (["model.name=resnet18", "model.stem=7x7", "model.width=4", "data.image_size=null"], "stem '7x7'"),
        (["model.name=lenet5", "model.input_size=28", "data.image_size=null"], "built for 28x28"),
    ):
        config = load_train_config(None, [*overrides, "run.epochs=1", "run.tensorboard=false"])
        with pytest.raises(ValueError, match=words) as info:
            train(config, runs_dir=tmp_path / "runs")
        assert "8x8 images (digits, data.image_size=null)" in str(info.value)
        assert not (tmp_path / "runs").exists()


def test_too_small_alexnet_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"'dorefanet' with stem 'imagenet' does not fit 28x28"):
        create_model("dorefanet", input_size=28)


@pytest.mark.parametrize("name", ZOO)
def test_one_training_step_moves_every_trainable_weight(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=1, **SMALL[name])
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for b, (param_name, p) in zip(before, model.named_parameters()):
        # Adam moves every weight with a non-zero gradient by ~lr; frozen ones (QuickNet's blur) stay.
        assert torch.equal(b, p.detach()) != p.requires_grad, param_name
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()  # running statistics updated and usable


@pytest.mark.parametrize("name", ZOO)
def test_cli_prints_every_new_model(name, capsys):
    from lowbit.cli import main

    pairs = [f"{k}={v}" for k, v in SMALL[name].items()]
    assert main(["models", name, *pairs, "--input-shape", "1,32,32"]) == 0
    out = capsys.readouterr().out
    assert "Total params" in out and ("1-bit MACs" in out or "2-bit MACs" in out)


# --- the building blocks against independent references -------------------------------


def test_one_padded_binary_conv_is_a_conv_on_the_plus_one_padded_sign():
    torch.manual_seed(0)
    conv = OnePaddedBinaryConv2d(3, 4, 3, padding=1, input_quantizer="ste", weight_quantizer="ste")
    x = torch.randn(2, 3, 5, 5)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)  # noqa: E731
    padded = torch.ones(2, 3, 7, 7)
    padded[:, :, 1:-1, 1:-1] = sign(x)
    expected = nn.functional.conv2d(padded, sign(conv.weight.detach()))
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (2, 4, 5, 5)


def test_centered_batchnorm_is_batchnorm_with_unit_scale():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    centered = CenteredBatchNorm2d(3)
    centered.bias.data = torch.tensor([0.5, -1.0, 2.0])
    reference = nn.BatchNorm2d(3)
    reference.bias.data = centered.bias.data.clone()
    torch.testing.assert_close(centered(x), reference(x))
    torch.testing.assert_close(centered.running_mean, reference.running_mean)
    assert [n for n, _ in centered.named_parameters()] == ["bias"]
    bn = batch_norm(5, momentum=0.9, eps=1e-4)
    assert (bn.momentum, bn.eps, bn.affine) == (pytest.approx(0.1), 1e-4, True)
    assert not batch_norm(5, scale=False, center=False).affine


def test_blur_kernel_is_the_normalised_binomial():
    k = blur_kernel(2)
    assert k.shape == (2, 1, 3, 3)
    torch.testing.assert_close(k[0, 0], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)


def test_summary_counts_batchnorm_without_parameters():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2, affine=False), CenteredBatchNorm2d(2))
    s = summary(model, (1, 5, 5))
    assert s.params == 18 + 2  # conv weights, the centered BN's offsets
    assert s.bn_statistics == 8  # 2 BNs x 2 channels x (mean, variance)
    assert s.params_with_statistics == 28
    assert s.fused_params_by_bits == {32: 18 + 4 + 4}
    assert s.memory_with_statistics_bytes == (20 + 8) * 4
