"""The fast elementwise paths of the sign family give exactly the values of the plain forms.

``hard_sign`` writes ``ge(x, 0)`` into a float tensor, ``pass_where`` / ``pass_within``
select with ``threshold_backward``; under ``torch.func`` transforms and ``torch.compile``
the plain ``torch.where`` forms run instead. Each is compared here with an independent
``torch.where`` reference on the values that matter: NaN, -0, +-inf, subnormals, ties at
the window edge. Also: the exact eval path of the binary layers, deterministic
``stochastic_sign`` in eval mode, and ``max_abs`` / ``round_half_away``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.nn import BinaryConv2d, BinaryLinear, set_exact_eval
from lowbit.quant import (
    MagnitudeAwareSign,
    StochasticSign,
    XNORWeight,
    get_quantizer,
    hard_sign,
    list_sign_quantizers,
    round_half_away,
)
from lowbit.quant.functional import max_abs, pass_where, pass_within

SPECIAL = [math.nan, -math.nan, 0.0, -0.0, math.inf, -math.inf, 1e-45, -1e-45, 1e-38, -1e-38, 1.0, -1.0, 0.5, -0.5]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def special_tensor(dtype, n_random=997, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(SPECIAL, dtype=torch.float64)
    return torch.cat([values, torch.randn(n_random, generator=g, dtype=torch.float64) * 2]).to(dtype)


def reference_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def same_bits(a, b):
    """Equal values, NaN where NaN, and the same sign bit (so -0 and +0 differ)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b)
    assert torch.equal(a[~nan_a], b[~nan_b])
    assert torch.equal(torch.signbit(a[~nan_a]), torch.signbit(b[~nan_b]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_sign_fast_path_matches_where(dtype):
    x = special_tensor(dtype)
    out = hard_sign(x)
    same_bits(out, reference_sign(x))
    assert out[2] == 1 and out[3] == 1  # sign(+0) = sign(-0) = +1
    assert out[0] == -1 and out[1] == -1  # NaN -> -1 whatever its sign bit


def test_hard_sign_keeps_layout_and_ignores_grad():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = hard_sign(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.requires_grad
    same_bits(out, reference_sign(x.detach()))
    strided = torch.randn(6, 8)[:, ::3]  # non-contiguous
    same_bits(hard_sign(strided), reference_sign(strided))


def test_hard_sign_under_vmap_and_compile_uses_plain_form_same_values():
    x = special_tensor(torch.float32, n_random=63).reshape(7, 11)
    same_bits(torch.func.vmap(hard_sign)(x), reference_sign(x))
    compiled = torch.compile(hard_sign, backend="eager", fullgraph=True)
    same_bits(compiled(x), reference_sign(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pass_where_and_pass_within_match_where(dtype):
    x = special_tensor(dtype, seed=1)
    grad = special_tensor(dtype, seed=2).flip(0)  # inf and NaN gradients meet in- and out-of-window x
    for bound in (1.0, 0.5, 1e-38):
        inside = x.abs() <= bound
        expected = torch.where(inside, grad, torch.zeros_like(grad))
        same_bits(pass_where(inside, grad), expected)
        same_bits(pass_within(x, bound, grad), expected)
    # outside the window an inf gradient becomes 0, not inf * 0 = NaN
    assert pass_within(torch.tensor([5.0]), 1.0, torch.tensor([math.inf])).item() == 0.0


def test_surrogates_support_double_backward():
    """create_graph=True: the fast backward keeps its graph (the gradient of the surrogate wrt grad)."""
    x = torch.randn(50, requires_grad=True)
    q = get_quantizer("ste_clipped", clip=0.5)
    (g,) = torch.autograd.grad((q(x) * x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    inside = (x.detach().abs() <= 0.5).float()
    torch.testing.assert_close(gg, 2 * inside)  # d/dx [sign(x) + x 1{|x|<=c}] summed, surrogate of sign: 1{|x|<=c}


def test_pass_within_under_vmap_matches():
    x, grad = torch.randn(5, 9), torch.randn(5, 9)
    expected = torch.where(x.abs() <= 0.7, grad, torch.zeros_like(grad))
    same_bits(torch.func.vmap(lambda a, g: pass_within(a, 0.7, g))(x, grad), expected)


@pytest.mark.parametrize("name", list_sign_quantizers())
def test_sign_quantizer_backward_on_special_values(name):
    """Each surrogate's backward is 0 (not NaN) outside its window and for NaN inputs, and
    equals the plain-torch formula of its docstring elsewhere; the forward is ``hard_sign``."""
    q = get_quantizer(name)
    x = special_tensor(torch.float32, seed=3).requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    out = q(x)
    same_bits(out.detach(), reference_sign(x.detach()))
    (got,) = torch.autograd.grad(out, x, grad)
    xd = x.detach()
    a = xd.abs()
    zero = torch.zeros_like(grad)
    expected = {
        "ste": grad,
        "ste_clipped": torch.where(a <= 1.0, grad, zero),
        "steep": torch.where(a <= 0.5, grad * 2.0, zero),
        "approx_sign": torch.where(a <= 1.0, grad * (2.0 - 2.0 * a), zero),
        "vste": torch.where(a <= 1.0, grad.clamp(-0.5, 0.5), zero),
    }.get(name)
    if expected is None:  # swish_sign: a smooth surrogate, checked against its closed form in test_quant
        assert torch.isfinite(got[~torch.isnan(xd)]).all() and (got[torch.isnan(xd)] == 0).all()
        return
    same_bits(got, expected)


def test_stochastic_sign_is_deterministic_sign_in_eval_mode():
    q = get_quantizer("stochastic_sign")
    x = torch.linspace(-1.5, 1.5, 301)
    q.eval()
    same_bits(q(x), reference_sign(x))
    q.train()
    draws = torch.stack([q(x) for _ in range(20)])  # (20, 301)
    inner = x.abs() < 0.5
    assert (draws[:, inner] != reference_sign(x)[inner]).any()  # random where p is not 0 or 1


def test_max_abs_and_round_half_away():
    x = torch.randn(3, 4, 5)
    assert torch.equal(max_abs(x), x.abs().max())
    assert torch.equal(max_abs(torch.tensor(-2.5)), torch.tensor(2.5))
    y = torch.tensor([-2.5, -1.5, -0.5, -0.49999997, 0.0, 0.49999997, 0.5, 1.5, 2.5, math.inf, -math.inf])
    expected = torch.tensor([-3.0, -2.0, -1.0, -0.0, 0.0, 0.0, 1.0, 2.0, 3.0, math.inf, -math.inf])
    assert torch.equal(round_half_away(y), expected)
    assert torch.isnan(round_half_away(torch.tensor([math.nan]))).all()


# --- the exact eval form of the binary layers (exact_eval) ----------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: BinaryConv2d(6, 8, 3, stride=2, padding=1, bias=True), (2, 6, 9, 9)),
        (lambda: BinaryConv2d(6, 4, 3, padding=2, dilation=2, groups=2), (2, 6, 7, 7)),
        (lambda: BinaryConv2d(5, 4, 3, padding=1, weight_quantizer="magnitude_aware_sign"), (2, 5, 6, 6)),
        (lambda: BinaryConv2d(5, 4, 3, padding=1, weight_quantizer={"name": "xnor_weight", "per_channel": False}), (2, 5, 6, 6)),
        (lambda: BinaryConv2d(5, 4, 3, padding=1, weight_quantizer="ste"), (2, 5, 6, 6)),
        (lambda: BinaryLinear(37, 5, bias=True), (3, 37)),
        (lambda: BinaryLinear(37, 5, input_quantizer="stochastic_sign"), (3, 37)),
    ],
)
def test_binary_layer_eval_is_integer_times_scale(make, shape):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape)
    random_in_training = isinstance(layer.input_quantizer, StochasticSign)
    expected_train = None if random_in_training else layer(x)
    layer.eval()
    default_eval = layer(x)
    set_exact_eval(layer)
    out = layer(x)
    # the independent reference: float64 op of +-1 inputs and +-1 weights, then the scale once
    sx, sw = reference_sign(x).double(), reference_sign(layer.weight.detach()).double()
    if isinstance(layer, BinaryConv2d):
        integers = F.conv2d(sx, sw, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        integers = F.linear(sx, sw)
    assert torch.equal(integers, integers.round())
    q, w = layer.weight_quantizer, layer.weight.detach()
    if isinstance(q, XNORWeight) and not q.per_channel:
        scale = w.abs().mean()
    elif isinstance(q, (XNORWeight, MagnitudeAwareSign)):
        scale = w.abs().mean(dim=tuple(range(1, w.dim())))  # (C_out,)
    else:
        scale = torch.tensor(1.0)
    view = (1, -1, 1, 1) if isinstance(layer, BinaryConv2d) else (1, -1)
    expected = integers.float() * (scale.reshape(view) if scale.dim() else scale)
    if layer.bias is not None:
        expected = expected + layer.bias.detach().reshape(view)
    assert torch.equal(out.detach(), expected)  # bit for bit: one rounding of an exact integer
    torch.testing.assert_close(out, default_eval, rtol=1e-5, atol=1e-5)  # the same function, other rounding
    if expected_train is not None:
        assert torch.equal(default_eval, expected_train)  # the default eval form is the training form


def test_binary_layer_eval_gradient_matches_training_form():
    torch.manual_seed(1)
    layer = BinaryConv2d(4, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    grads = []
    set_exact_eval(layer)
    for mode in (True, False):
        layer.train(mode)
        layer.zero_grad()
        x.grad = None
        (layer(x) * torch.arange(6.0).reshape(1, 6, 1, 1)).sum().backward()
        grads.append((x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
