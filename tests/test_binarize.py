"""binarize: filters, Conv1d / ConvTranspose2d / subclasses, dead-sign warnings, latent-weight clipping."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models import create_model
from lowbit.nn import (
    BinaryConv1d,
    BinaryConv2d,
    BinaryConvTranspose2d,
    BinaryLinear,
    DeadSignWarning,
    binarize,
    binary_weights,
    clip_latent_weights_,
    select_parameters,
    set_weight_clip,
)
from lowbit.quant import hard_sign


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def no_warnings():
    catcher = warnings.catch_warnings()
    catcher.__enter__()
    warnings.simplefilter("error", DeadSignWarning)
    return catcher


def signed_net() -> nn.Sequential:
    """conv -> BN -> [sign] conv -> BN -> [sign] linear ...: every sign sees a signed input."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 3),
    )


# --- which layers ------------------------------------------------------------------------


def test_returns_the_converted_names_and_shares_parameters():
    model = signed_net()
    params = dict(model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeadSignWarning)
        converted = binarize(model, input_quantizer="ste_sign", weight_quantizer="ste_sign")
    assert converted == ["2", "5"]
    assert isinstance(model[2], BinaryConv2d) and isinstance(model[5], BinaryLinear)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear


@pytest.mark.parametrize(
    "include, exclude, expected",
    [
        (None, ["2"], ["5"]),  # by name
        (None, ["type:Linear"], ["2"]),  # by type name
        (None, [nn.Conv2d], ["5"]),  # by class
        (["*"], [], ["2", "5"]),
        (["type:Conv2d"], [], ["2"]),
        ([nn.Linear], ["5"], []),
    ],
)
def test_include_and_exclude_by_name_and_type(include, exclude, expected):
    model = signed_net()
    assert binarize(model, include=include, exclude=exclude) == expected
    for name, module in model.named_children():
        assert isinstance(module, (BinaryConv2d, BinaryLinear)) == (name in expected)


def test_a_module_pattern_selects_everything_inside_it():
    model = create_model("resnet18", width=4, in_channels=1, act="elu")
    converted = binarize(model, include=["layer2"], exclude=["*.shortcut"])
    assert converted == ["layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]


def test_a_pattern_that_matches_nothing_is_an_error_with_a_hint():
    model = signed_net()
    with pytest.raises(ValueError, match=r"pattern 'layr1\.\*' matches nothing"):
        binarize(model, exclude=["layr1.*"])
    model = create_model("resnet18", width=4, in_channels=1, act="elu")
    with pytest.raises(ValueError, match="did you mean 'layer1.0.conv1'"):
        binarize(model, include=["layer1.0.cnv1"])
    with pytest.raises(ValueError, match="type:BatchNorm2d"):
        binarize(model, include=["type:BatchNorm2d"])
    assert not any(isinstance(m, BinaryConv2d) for m in model.modules())  # nothing was replaced


def test_bad_arguments_are_reported_together_before_anything_changes():
    model = signed_net()
    with pytest.raises(ValueError) as info:
        binarize(model, input_quantizer="ste_sgn", weight_clip=0.0, subclasses="maybe")
    message = str(info.value)
    assert "ste_sign" in message and "weight_clip" in message and "subclasses" in message
    assert not any(isinstance(m, BinaryConv2d) for m in model.modules())


# --- Conv1d, ConvTranspose2d, subclasses ---------------------------------------------------


def _xnor(w: torch.Tensor) -> torch.Tensor:
    """sign(W) times mean |W| per output channel (dim 0), for a reference."""
    return hard_sign(w) * w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


def test_conv1d_is_converted_and_computes_the_xnor_conv():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Conv1d(4, 5, 3, padding=1, stride=2), nn.Conv1d(5, 2, 1))
    assert binarize(model) == ["1"]
    layer = model[1]
    assert isinstance(layer, BinaryConv1d) and layer.stride == (2,) and layer.bias is not None
    x = torch.randn(3, 4, 9)
    expected = F.conv1d(hard_sign(x), _xnor(layer.weight), layer.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose2d_is_converted_with_per_output_channel_scales(groups):
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups), nn.Conv2d(6, 1, 1)
    )
    assert binarize(model) == ["1"]
    layer = model[1]
    assert isinstance(layer, BinaryConvTranspose2d) and layer.output_padding == (1, 1)
    w = layer.weight.detach()  # (C_in, C_out/g, kh, kw)
    c_in, c_out_g = w.shape[:2]
    scale = torch.empty(c_in, c_out_g, 1, 1)
    for g in range(groups):  # output channel g * c_out_g + j: weight rows of group g, column j
        rows = slice(g * c_in // groups, (g + 1) * c_in // groups)
        scale[rows] = w[rows].abs().mean(dim=(0, 2, 3), keepdim=True)
    x = torch.randn(2, 4, 5, 5)
    expected = F.conv_transpose2d(hard_sign(x), hard_sign(w) * scale, layer.bias, 2, 1, 1, groups)
    torch.testing.assert_close(layer(x), expected)
    assert layer(x, output_size=[10, 10]).shape == (2, 6, 10, 10)


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv, in miniature: a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_subclasses_and_unsupported_layers_are_refused_loudly_and_atomically():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), StdConv2d(2, 2, 1), nn.Conv3d(2, 2, 1), nn.Linear(2, 2))
    with pytest.raises(ValueError) as info:
        binarize(model)
    message = str(info.value)
    assert "'2' is a StdConv2d, a subclass of nn.Conv2d with its own forward" in message
    assert "'3' is a Conv3d, for which lowbit has no binary layer" in message
    assert "exclude" in message and "subclasses='convert'" in message
    assert type(model[1]) is nn.Conv2d  # refused before anything was replaced
    assert binarize(model, exclude=["type:StdConv2d", nn.Conv3d]) == ["1"]
    assert binarize(model, exclude=["3"], subclasses="convert") == ["2"]
    assert type(model[2]) is BinaryConv2d


def test_multihead_attention_out_proj_is_refused_not_silently_ignored():
    # nn.MultiheadAttention calls F.multi_head_attention_forward with out_proj.weight: a binary twin would never run
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="NonDynamicallyQuantizableLinear"):
        binarize(model)


# --- dead signs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before", [nn.ReLU(), nn.ReLU6(), nn.Sigmoid(), nn.Softmax(dim=1)], ids=["relu", "relu6", "sigmoid", "softmax"]
)
def test_a_sign_after_a_nonnegative_activation_warns(before):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), before, nn.MaxPool2d(2), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(DeadSignWarning, match=f"4 \\(after {type(before).__name__} '2'\\)"):
        binarize(model)


class DimCheckedNorm(nn.BatchNorm2d):
    """A BatchNorm subclass outside torch.nn whose forward checks x.dim() (as torch's does): fx cannot trace into it."""

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError("expected a 4-d input")
        return super().forward(x)


def test_a_dead_sign_is_found_statically_past_a_module_fx_cannot_trace_into():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), DimCheckedNorm(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(DeadSignWarning, match="3 \\(after ReLU '2'\\)"):
        binarize(model)  # no example input: only the static trace can tell
    signed = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), DimCheckedNorm(4), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    binarize(signed)  # the norm's output is not known to be non-negative: no warning (they are errors here)


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(self.b(torch.flatten(F.relu(self.a(x)), 1)))


def test_functional_relu_through_a_flatten_is_found_statically():
    with pytest.warns(DeadSignWarning, match=r"b \(after relu\(\)"):
        binarize(FunctionalRelu())


@pytest.mark.parametrize("act", ["elu", "gelu", "rrelu"])
def test_activations_that_keep_the_sign_do_not_warn(act):
    model = create_model("resnet18", width=4, in_channels=1, act=act)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeadSignWarning)
        assert len(binarize(model, input_quantizer="approx_sign", example_input=torch.randn(4, 1, 8, 8))) == 19


def test_the_readme_resnet_with_relu_warns_for_all_19_layers_and_its_output_ignores_the_input():
    """The issue's example: after binarize every sign sees a ReLU output, so the logits do not depend on the image."""
    model = create_model("resnet18", width=8, in_channels=1)
    with pytest.warns(DeadSignWarning, match="19 of 19 converted layers"):
        binarize(model, input_quantizer="approx_sign")
    model.eval()
    with torch.no_grad():
        a, b = model(torch.randn(2, 1, 8, 8)), model(torch.randn(2, 1, 8, 8) * 3)
    torch.testing.assert_close(a, b)  # chance accuracy, whatever the training
    fixed = create_model("resnet18", width=8, in_channels=1, act="elu")
    binarize(fixed, input_quantizer="approx_sign")
    fixed.eval()
    with torch.no_grad():
        assert not torch.allclose(fixed(torch.randn(2, 1, 8, 8)), fixed(torch.randn(2, 1, 8, 8)))


class Untraceable(nn.Module):
    """abs() makes the input non-negative (not in the by-construction list); data-dependent control flow defeats fx."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.bn(self.a(x))
        if float(h.sum()) > 1e9:  # never true; only torch.fx trips over it
            h = -h
        return self.c(self.b(h.abs()))


def test_a_constant_quantized_input_is_measured_on_the_example_batch_without_side_effects():
    model = Untraceable()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeadSignWarning)
        binarize(model)  # no example batch: no static answer for this model, no warning
    model = Untraceable()
    batch = torch.randn(8, 3)
    bn_before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.warns(DeadSignWarning, match=r"constant on the example batch.*b \(all 32 values = 1\)"):
        binarize(model, example_input=batch)
    assert all(torch.equal(v, model.bn.state_dict()[k]) for k, v in bn_before.items())  # BatchNorm stats restored
    assert torch.equal(torch.get_rng_state(), rng_before)


# --- latent-weight clipping ------------------------------------------------------------------


def test_weight_clip_is_an_option_of_every_binary_layer_and_of_binarize():
    for layer in (
        BinaryLinear(3, 2, weight_clip=0.5),
        BinaryConv2d(2, 2, 3, weight_clip=0.5),
        BinaryConv1d(2, 2, 3, weight_clip=0.5),
        BinaryConvTranspose2d(2, 2, 3, weight_clip=0.5),
    ):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-2, 2, layer.weight.numel()).reshape(layer.weight.shape))
        before = layer.weight.detach().clone()
        layer.clip_latent_weights_()
        torch.testing.assert_close(layer.weight.detach(), before.clamp(-0.5, 0.5))
        assert torch.equal(hard_sign(layer.weight), hard_sign(before))  # clipping keeps every sign
    model = signed_net()
    binarize(model, weight_clip=0.25)
    assert model[2].weight_clip == 0.25 and model[5].weight_clip == 0.25
    assert clip_latent_weights_(model) == 2
    assert float(model[2].weight.detach().abs().max()) <= 0.25 and float(model[0].weight.detach().abs().max()) > 0.25  # float layer untouched


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("inf"), float("nan"), True, "1"])
def test_weight_clip_must_be_positive(bad):
    with pytest.raises(ValueError, match="weight_clip must be a finite number > 0"):
        BinaryLinear(3, 2, weight_clip=bad)
    with pytest.raises(ValueError, match="weight_clip"):
        binarize(signed_net(), weight_clip=bad)


def test_set_weight_clip_on_a_model_without_binary_layers_is_an_error():
    with pytest.raises(ValueError, match="no binary layer"):
        set_weight_clip(signed_net(), 1.0)
    model = create_model("xnor_resnet18", width=2, in_channels=1)
    assert len(set_weight_clip(model, 1.0)) == 16


# --- parameter selection (optimizer groups) ---------------------------------------------------


def test_select_parameters_binary_by_type_and_by_name():
    model = signed_net()
    binarize(model)
    assert [n for n, _ in select_parameters(model, ["binary"], "test")] == ["2.weight", "5.weight"]
    assert [n for n, _ in binary_weights(model)] == ["2.weight", "5.weight"]
    assert [n for n, _ in select_parameters(model, ["type:BatchNorm1d"], "test")] == ["6.weight", "6.bias"]
    assert [n for n, _ in select_parameters(model, ["*.bias"], "test")] == ["0.bias", "1.bias", "3.bias", "5.bias", "6.bias", "7.bias"]
    with pytest.raises(ValueError, match="'binary' matches nothing"):
        select_parameters(signed_net(), ["binary"], "test")
