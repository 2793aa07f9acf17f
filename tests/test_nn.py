"""lowbit.nn: binary and k-bit layers, MaxDropout, binarize, quantizer specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn import (
    BinaryConv2d,
    BinaryLinear,
    MaxDropout,
    QuantConv2d,
    QuantLinear,
    DeadSignWarning,
    binarize,
    make_quantizer,
    quantizer_bits,
    quantizer_name,
)
from lowbit.quant import get_quantizer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, x_shape, y_shape",
    [
        (lambda: BinaryLinear(5, 3), (4, 5), (4, 3)),
        (lambda: BinaryLinear(5, 3, bias=True), (2, 7, 5), (2, 7, 3)),
        (lambda: BinaryConv2d(3, 8, 3, padding=1), (2, 3, 8, 8), (2, 8, 8, 8)),
        (lambda: BinaryConv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 8, 8), (2, 6, 4, 4)),
        (lambda: QuantLinear(5, 3, w_bits=4, a_bits=4), (4, 5), (4, 3)),
        (lambda: QuantConv2d(3, 8, 3, padding=1, w_bits=8, a_bits=8), (2, 3, 8, 8), (2, 8, 8, 8)),
    ],
)
def test_layer_shapes(layer, x_shape, y_shape):
    assert layer()(torch.randn(x_shape)).shape == y_shape


def test_binary_layers_subclass_float_layers():
    assert isinstance(BinaryLinear(4, 3), nn.Linear)
    assert isinstance(BinaryConv2d(4, 3, 3), nn.Conv2d)
    assert isinstance(QuantLinear(4, 3), nn.Linear)
    assert isinstance(QuantConv2d(4, 3, 3), nn.Conv2d)


# --- latent float weights -------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, x_shape",
    [
        (lambda: BinaryLinear(6, 4), (8, 6)),
        (lambda: BinaryConv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
        (lambda: QuantLinear(6, 4, w_bits=3, a_bits=3), (8, 6)),
        (lambda: QuantConv2d(3, 4, 3, w_bits=4, a_bits=4), (2, 3, 6, 6)),
    ],
)
def test_latent_weights_stay_float_and_get_gradients(layer, x_shape):
    module = layer()
    before = module.weight.detach().clone()
    # Continuous latent weights: many distinct magnitudes, unlike their quantized image.
    assert module.weight.dtype == torch.float32
    assert module.weight.abs().unique().numel() > 4
    x = torch.randn(x_shape) * 0.5
    module(x).square().sum().backward()
    assert module.weight.grad is not None
    assert torch.isfinite(module.weight.grad).all()
    assert module.weight.grad.abs().sum() > 0
    assert torch.equal(module.weight.detach(), before)  # forward does not overwrite the latent weights
    assert dict(module.named_parameters()).keys() >= {"weight"}


def test_binary_linear_matches_hand_reference():
    # sign(x) = [+1, -1, +1] (sign(0) = +1); alpha = mean|W| per row = [2, 0.5];
    # y0 = 2 * (1*1 + -1*-1 + 1*1) = 6, y1 = 0.5 * (-1*1 + 1*-1 + -1*1) = -1.5.
    layer = BinaryLinear(3, 2, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.5, -0.5]]))
        layer.bias.copy_(torch.tensor([0.25, -0.25]))
    y = layer(torch.tensor([[0.5, -2.0, 0.0]]))
    torch.testing.assert_close(y, torch.tensor([[6.25, -1.75]]))


def test_binary_linear_matches_sign_matmul_on_random_input():
    layer = BinaryLinear(16, 8)
    x = torch.randn(5, 16)
    sign_x = torch.where(x >= 0, 1.0, -1.0)
    w = layer.weight.detach()
    alpha = w.abs().mean(dim=1, keepdim=True)  # (8, 1)
    expected = sign_x @ (torch.where(w >= 0, 1.0, -1.0) * alpha).T
    torch.testing.assert_close(layer(x), expected)


def test_binary_conv_matches_sign_conv():
    layer = BinaryConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    w = layer.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0) * alpha, padding=1)
    torch.testing.assert_close(layer(x), expected)


def test_clipped_input_gradient_is_zero_outside_clip():
    layer = BinaryLinear(3, 2, input_quantizer={"name": "ste_clipped", "clip": 0.5})
    x = torch.tensor([[0.2, -0.4, 2.0]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad[0, 2] == 0
    assert layer.input_quantizer.clip == 0.5


def test_quantizer_specs():
    assert make_quantizer(None) is None
    assert make_quantizer("none") is None
    assert make_quantizer({"name": "none"}) is None
    q = get_quantizer("ste")
    assert make_quantizer(q) is q
    assert quantizer_name(make_quantizer({"name": "steep", "slope": 3.0})) == "steep"
    float_layer = BinaryLinear(4, 3, input_quantizer=None, weight_quantizer="none")
    x = torch.randn(2, 4)
    torch.testing.assert_close(float_layer(x), F.linear(x, float_layer.weight))
    with pytest.raises(ValueError, match="ste_clipped"):
        BinaryLinear(4, 3, input_quantizer="ste_cliped")
    with pytest.raises(ValueError, match="name"):
        make_quantizer({"clip": 0.5})
    with pytest.raises(TypeError):
        make_quantizer(3)


def test_quantizer_bits():
    assert quantizer_bits(None) == 32
    assert quantizer_bits(get_quantizer("xnor_weight")) == 1
    assert quantizer_bits(get_quantizer("ste_clipped")) == 1
    assert quantizer_bits(get_quantizer("uniform_weight", bits=4)) == 4
    assert quantizer_bits(get_quantizer("dorefa", k_bit=3)) == 3
    assert quantizer_bits(get_quantizer("uniform_act", levels=3)) == 2  # 4 values
    assert quantizer_bits(get_quantizer("ste_tern")) == 2
    assert quantizer_bits(nn.Identity()) == 32


# --- k-bit layers ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_linear_values_on_the_k_bit_grid(bits):
    n = 2 ** (bits - 1) - 1
    layer = QuantLinear(10, 6, w_bits=bits, a_bits=bits)
    x = torch.randn(32, 10)
    for value, source in ((layer.quantize_input(x), x), (layer.quantized_weight(), layer.weight)):
        step = source.detach().abs().max() / n
        levels = value.detach() / step
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the grid
        assert levels.abs().max() <= n + 1e-4
        assert levels.round().unique().numel() <= 2 * n + 1
    expected = F.linear(layer.quantize_input(x), layer.quantized_weight(), layer.bias)
    torch.testing.assert_close(layer(x), expected)


def test_quant_layer_float_and_errors():
    layer = QuantLinear(4, 3, w_bits=None, a_bits=32)
    assert layer.input_quantizer is None and layer.weight_quantizer is None
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert quantizer_bits(QuantConv2d(2, 2, 1, w_bits=4, a_bits=6).input_quantizer) == 6
    with pytest.raises(ValueError, match="a_bits"):
        QuantLinear(4, 3, a_bits=1)
    with pytest.raises(ValueError, match="w_bits"):
        QuantConv2d(4, 3, 3, w_bits=0)


def test_signed_activation_gradient_is_straight_through():
    layer = QuantLinear(4, 3, w_bits=None, a_bits=4)
    x = torch.randn(5, 4, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.detach().sum(0).expand(5, 4))


# --- MaxDropout -----------------------------------------------------------------------


def test_max_dropout_train_and_eval():
    x = torch.arange(11.0)  # normalised: x / 10; with p = 0.25 drop x / 10 > 0.75, i.e. 8, 9, 10
    drop = MaxDropout(p=0.25)
    keep = torch.tensor([True] * 8 + [False] * 3)
    torch.testing.assert_close(drop.train()(x), torch.where(keep, x, 0.0))
    torch.testing.assert_close(drop.eval()(x), x)
    # Shifted and scaled, the tensor loses the same entries (min-max normalisation).
    shifted = x * 2 - 5
    torch.testing.assert_close(drop.train()(shifted), torch.where(keep, shifted, 0.0))
    assert MaxDropout(0.0).train()(x).equal(x)
    constant = torch.full((3, 4), 2.0)
    assert MaxDropout(0.5).train()(constant).equal(constant)


def test_max_dropout_gradient_is_the_mask():
    x = torch.arange(11.0).reshape(1, 11).requires_grad_()
    MaxDropout(0.25).train()(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0] * 8 + [0.0] * 3]))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_max_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=str(p)):
        MaxDropout(p)


# --- binarize -------------------------------------------------------------------------


def _float_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.Linear(8, 2),
    )


def test_binarize_keeps_weights_and_first_last_float():
    model = _float_net()
    weights = {name: p for name, p in model.named_parameters()}
    values = {name: p.detach().clone() for name, p in weights.items()}
    with pytest.warns(DeadSignWarning, match="2 \\(after ReLU '1'\\)"):  # the sign after nn.ReLU sees only x >= 0
        assert binarize(model, weight_quantizer={"name": "xnor_weight", "per_channel": False}) == ["2", "5"]
    assert type(model[0]) is nn.Conv2d and type(model[6]) is nn.Linear  # first and last stay float
    assert isinstance(model[2], BinaryConv2d) and isinstance(model[5], BinaryLinear)
    assert model[2].bias is None and model[5].bias is not None
    assert model[2].weight_quantizer.per_channel is False
    assert model[2].weight_quantizer is not model[5].weight_quantizer  # one quantizer per layer
    for name, p in model.named_parameters():
        assert p is weights[name]  # the very same Parameter objects
        assert torch.equal(p.detach(), values[name])
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 2)


def test_binarize_all_layers_and_idempotent():
    model = _float_net()
    assert binarize(model, keep_first_last=False, input_quantizer=None) == ["0", "2", "5", "6"]
    kinds = [type(m) for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert kinds == [BinaryConv2d, BinaryConv2d, BinaryLinear, BinaryLinear]
    assert model[0].input_quantizer is None
    assert binarize(model) == []  # nothing left to convert
    assert [type(m) for m in model if isinstance(m, (nn.Conv2d, nn.Linear))] == kinds
