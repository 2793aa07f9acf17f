"""lowbit.models: every registered model, the exact ResNet-18, stems, XNOR ResNet, summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.models import (
    STEMS,
    create_model,
    format_summary,
    list_models,
    models_table,
    summary,
)
from lowbit.nn import BinaryConv2d, BinaryLinear, MaxDropout, QuantLinear
from lowbit.quant import ClippedSignSTE, XNORWeight

# Smaller settings for the forward/backward test, to keep the suite fast; a model
# not listed here is tested at its defaults.
SMALL = {
    "resnet18": {"width": 8},
    "xnor_resnet18": {"width": 8},
    "resnet9": {"width_mult": 0.125},
    "simp_resnet9": {"width_mult": 0.25},
    "toy_mlp": {"dim": 6},
    "dla34": {"width": 4},
}
# The binary zoo with its small-image stem (tests/test_zoo.py pins the full-size counts).
ZOO_SMALL = {
    "birealnet18": {"width": 4, "stem": "small"},
    "binary_resnet_e18": {"width": 4, "stem": "small"},
    "real_to_binary_net": {"width": 8, "stem": "small"},
    "reactnet_a": {"width": 4, "stem": "small"},
    "quicknet": {"width": 8, "stem": "small"},
    "quicknet_small": {"width": 8, "stem": "small"},
    "quicknet_large": {"width": 4, "stem": "small"},
    "binary_densenet28": {"width": 4, "stem": "small"},
    "binary_densenet37": {"width": 4, "stem": "small"},
    "binary_densenet45": {"width": 4, "stem": "small"},
    "xnornet": {"input_size": 32, "stem": "small", "width_mult": 1 / 32},
    "dorefanet": {"input_size": 32, "stem": "small", "width_mult": 1 / 32},
    "binary_alexnet": {"input_size": 32, "stem": "small", "width_mult": 1 / 32},
}
SMALL.update(ZOO_SMALL)

NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_finite_gradients(name):
    model = create_model(name, num_classes=NUM_CLASSES, **SMALL.get(name, {}))
    x = torch.randn(2, *model.input_shape)
    y = model(x)
    out = model.input_shape[0] if name == "toy_mlp" else NUM_CLASSES  # the toy maps dim -> dim
    assert y.shape == (2, out)
    y.square().mean().backward()
    for param_name, p in model.named_parameters():
        if not p.requires_grad:  # a frozen filter (QuickNet's blur)
            assert p.grad is None, param_name
            continue
        assert p.grad is not None, param_name
        assert torch.isfinite(p.grad).all(), param_name


@pytest.mark.parametrize("name", list_models())
def test_in_channels_and_input_shape(name):
    model = create_model(name, in_channels=1, **SMALL.get(name, {}))
    if name != "toy_mlp":
        assert model.input_shape[0] == 1
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, *model.input_shape)).shape[0] == 1


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_has_exactly_the_kuangliu_parameter_count():
    assert _count(create_model("resnet18", num_classes=10, width=64, stem="3x3")) == 11_173_962


def test_parameter_counts_of_other_reference_models():
    assert _count(create_model("resnet9")) == 6_573_120  # DAWNBench ResNet-9
    assert _count(create_model("vgg_a")) == 9_750_922
    assert _count(create_model("lenet5", in_channels=1, input_size=28)) == 61_706  # classic LeNet-5
    assert _count(create_model("dla34")) == 16_291_386  # kuangliu DLA


@pytest.mark.parametrize("stem", STEMS)
def test_each_stem_builds(stem):
    model = create_model("resnet18", width=8, stem=stem)
    kernels = [m.kernel_size for m in model.stem if isinstance(m, nn.Conv2d)]
    assert kernels == [(int(k[0]),) * 2 for k in stem.split(",")]
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem) == (stem == "7x7")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bad_options_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="3x3,3x3"):
        create_model("resnet18", stem="3x3,3x4")
    with pytest.raises(ValueError, match="gelu"):
        create_model("resnet9", act="gelo")
    with pytest.raises(ValueError, match="1.5"):
        create_model("resnet18", max_dropout=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("vgg_a", num_classes=0)
    with pytest.raises(ValueError, match="'width'.*options: bn"):
        create_model("vgg_a", width=8)


def test_options_act_and_max_dropout():
    model = create_model("resnet18", width=8, act="mish", max_dropout=0.3)
    assert sum(isinstance(m, MaxDropout) for m in model.modules()) == 4
    assert any(isinstance(m, nn.Mish) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model = create_model("simp_resnet9", width_mult=0.25, act="gelu", max_dropout=0.2, stem="3x3,3x3,3x3")
    assert sum(isinstance(m, MaxDropout) for m in model.modules()) == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_bn_after_every_conv_and_hidden_fc():
    model = create_model("vgg_a", bn=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in create_model("vgg_a").modules())


def test_lenet5_input_sizes():
    for size in (28, 32):
        model = create_model("lenet5", in_channels=1, input_size=size)
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize("width", [8, 16])
def test_xnor_resnet18_binary_inner_convs(width):
    model = create_model("xnor_resnet18", width=width)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    inner = [m for name, m in model.named_modules() if name.startswith("layer") and isinstance(m, nn.Conv2d)]
    binary = [m for m in inner if isinstance(m, BinaryConv2d)]
    assert len(binary) == 16  # 8 blocks x 2 convs
    for conv in binary:
        assert isinstance(conv.weight_quantizer, XNORWeight)
        assert isinstance(conv.input_quantizer, ClippedSignSTE)
    # Only the three downsample shortcuts, the stem conv and the classifier are float.
    assert [type(m) for m in inner if not isinstance(m, BinaryConv2d)] == [nn.Conv2d] * 3
    assert type(model.stem[0]) is nn.Conv2d and type(model.linear) is nn.Linear
    assert binary[-1].out_channels == 8 * width


def test_xnor_resnet18_act_spec_dict():
    model = create_model("xnor_resnet18", width=8, act={"name": "ste_clipped", "clip": 0.5})
    assert model.layer1[0].conv1.input_quantizer.clip == 0.5


def test_toy_mlp_layers_and_activations():
    model = create_model("toy_mlp", dim=4, depth=3, act="ste")
    assert [name for name, _ in model.named_parameters()] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    w1, w2, w3 = (layer.weight.detach() for layer in model.layers)
    x = torch.randn(5, 4)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)  # noqa: E731
    torch.testing.assert_close(model(x), sign(sign(x @ w1.T) @ w2.T) @ w3.T)
    linear = create_model("toy_mlp", dim=4, depth=2, act="none")
    v1, v2 = (layer.weight.detach() for layer in linear.layers)
    torch.testing.assert_close(linear(x), x @ v1.T @ v2.T)
    clipped = create_model("toy_mlp", dim=4, act={"name": "ste_clipped", "clip": 0.5})
    assert [a.clip for a in clipped.acts] == [0.5, 0.5]


def test_unknown_model_name_names_the_nearest_match():
    with pytest.raises(KeyError) as info:
        create_model("resnet81")
    assert "resnet18" in str(info.value)
    with pytest.raises(ValueError, match="dla34"):
        create_model("dla43")


# --- summary --------------------------------------------------------------------------


def test_summary_of_a_hand_computed_model():
    model = nn.Sequential(BinaryLinear(4, 3), nn.Linear(3, 2))
    s = summary(model, (4,))
    # BinaryLinear: 12 weights at 1 bit, no bias; 3 outputs x 4 inputs = 12 binary x binary MACs.
    # Linear: 6 weights + 2 biases at 32 bits; 2 outputs x 3 inputs = 6 float MACs.
    assert s.params == 20
    assert s.params_by_bits == {1: 12, 32: 8}
    assert s.memory_bytes == (12 * 1 + 8 * 32) / 8
    assert s.fp32_mb == 20 * 4 / 2**20
    assert s.macs_by_bits == {1: 12, 32: 6}
    first, second = s.layers
    assert (first.name, first.kind, first.output_shape) == ("0", "BinaryLinear", (3,))
    assert (first.weight_bits, first.input_bits, first.params) == (1, 1, 12)
    assert (second.output_shape, second.params_by_bits, second.macs_by_bits) == ((2,), {32: 8}, {32: 6})
    assert s.is_quantized
    text = format_summary(s)
    assert "Total" in text and "BinaryLinear" in text and "1-bit MACs" in text


def test_summary_precisions_of_mixed_layers():
    model = nn.Sequential(
        BinaryLinear(4, 3, input_quantizer=None),  # binary weights on float inputs: 32-bit MACs
        QuantLinear(3, 2, w_bits=4, a_bits=8),  # 4-bit weights, 8-bit inputs: 8-bit MACs
    )
    s = summary(model, (4,))
    assert s.params_by_bits == {1: 12, 4: 6, 32: 2}
    assert s.macs_by_bits == {32: 12, 8: 6}


def test_summary_of_conv_model_and_mode_restored():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, groups=2))
    model.train()
    model[1].eval()
    s = summary(model, (2, 5, 5))
    assert s.macs_by_bits == {32: 4 * 25 * 2 * 9 + 4 * 25 * 2}
    assert s.params == 72 + 8 + 8 + 4
    assert [layer.output_shape for layer in s.layers] == [(4, 5, 5)] * 3
    assert not s.is_quantized
    assert model.training and model[0].training and not model[1].training


def test_summary_of_resnet18_totals():
    model = create_model("resnet18", width=8)
    s = summary(model, (3, 32, 32))
    assert s.params == _count(model) and s.params_by_bits == {32: s.params}
    assert s.memory_mb == pytest.approx(s.fp32_mb)


@pytest.mark.slow
def test_models_table_lists_every_model():
    text = models_table()
    for name in list_models():
        assert name in text
    assert "11,173,962" in text


def test_cli_models_prints_one_model_layer_by_layer(capsys):
    from lowbit.cli import main

    assert main(["models", "xnor_resnet18", "width=2", "--input-shape", "1,8,8"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1 (BinaryConv2d)" in out and "(1, 1, 8, 8)" in out
    assert "| lenet5 |" not in out  # not the zoo table
    assert main(["models", "width=2"]) == 2  # keywords without a name
    assert "need a model name first" in capsys.readouterr().err
