"""Tests for lowbit.quant.

Every registered quantizer is covered by the parametrised generic tests
(shape, dtype, vmap, grad, repr) and must have reference cases in ``CASES``:
forward and backward written here in closed form, independently of the code
under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import grad as func_grad
from torch.func import jacfwd, jacrev, vmap

from lowbit.quant import (
    QUANTIZERS,
    get_quantizer,
    list_quantizers,
    list_sign_quantizers,
    round_half_away,
    sign_ste,
    stochastic_round,
    stochastic_sign,
    uniform_weight,
    xnor_weight,
)
from lowbit.registry import UnknownNameError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

RANDOM_FORWARD = {"stochastic_sign"}  # forward draws noise; compared by distribution, not value
SHAPES = [(7,), (3, 5), (2, 3, 4, 5)]


# --- independent closed-form references ---------------------------------------------


def ref_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def ref_round_half_up(y):
    # y >= 0; float64 makes y + 0.5 exact for float32 inputs
    return torch.floor(y.double() + 0.5).to(y.dtype)


def ref_levels(x, n):
    return ref_round_half_up(n * x.clamp(0, 1)) / n


def channel_mean_abs(x):
    return x.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True) if x.dim() > 1 else x.abs()


def window(x, low, high):
    return ((x >= low) & (x <= high)).to(x.dtype)


def ref_swish_derivative(x, beta):
    z = beta * x.double()
    return (beta * (2 - z * torch.tanh(z / 2)) / (1 + torch.cosh(z))).to(x.dtype)


def ref_symmetric_uniform(x, bits):
    qmax = 2 ** (bits - 1) - 1
    scale = x.double().abs().max() / qmax
    y = x.double() / scale
    return (torch.sign(y) * torch.floor(y.abs() + 0.5) * scale).to(x.dtype)


def ref_ternary(x, threshold):
    return torch.where(x > threshold, 1.0, torch.where(x < -threshold, -1.0, 0.0)).to(x.dtype)


def xnor_grad_by_hand(x, g, per_channel):
    """Autograd of identity-STE sign(W) * mean|W|, written without lowbit."""
    w = x.detach().clone().requires_grad_()
    sign_identity_ste = w + (ref_sign(w) - w).detach()
    alpha = channel_mean_abs(w) if per_channel else w.abs().mean()
    (sign_identity_ste * alpha * g).sum().backward()
    return w.grad


# name -> list of (params, forward reference or None, backward reference (x, g) -> grad_x)
CASES = {
    "ste": [({}, ref_sign, lambda x, g: g)],
    "ste_clipped": [
        ({}, ref_sign, lambda x, g: g * window(x, -1, 1)),
        ({"clip": 0.7}, ref_sign, lambda x, g: g * window(x, -0.7, 0.7)),
    ],
    "steep": [
        ({}, ref_sign, lambda x, g: 2.0 * g * window(x, -0.5, 0.5)),
        ({"slope": 4.0}, ref_sign, lambda x, g: 4.0 * g * window(x, -0.25, 0.25)),
    ],
    "swish_sign": [
        ({}, ref_sign, lambda x, g: g * ref_swish_derivative(x, 5.0)),
        ({"beta": 2.5}, ref_sign, lambda x, g: g * ref_swish_derivative(x, 2.5)),
    ],
    "approx_sign": [({}, ref_sign, lambda x, g: g * (2 - 2 * x.abs()) * window(x, -1, 1))],
    "approx_sign_window": [
        ({}, ref_sign, lambda x, g: g * (2 - 2 * x.abs()) * window(x, -1, 1)),
        ({"window": 0.5}, ref_sign, lambda x, g: g * 4.0 * (1 - 2 * x.abs()) * window(x, -0.5, 0.5)),
    ],
    "vste": [
        ({}, ref_sign, lambda x, g: g.clamp(-0.5, 0.5) * window(x, -1, 1)),
        ({"grad_clip": 0.2, "clip": 1.3}, ref_sign, lambda x, g: g.clamp(-0.2, 0.2) * window(x, -1.3, 1.3)),
    ],
    "step01": [
        ({}, lambda x: (x >= 0.5).to(x.dtype), lambda x, g: g * window(x, 0, 1)),
        ({"threshold": 0.2}, lambda x: (x >= 0.2).to(x.dtype), lambda x, g: g * window(x, 0, 1)),
    ],
    "uniform_act": [
        ({}, lambda x: ref_levels(x, 2), lambda x, g: g * window(x, 0, 1)),
        ({"levels": 3}, lambda x: ref_levels(x, 3), lambda x, g: g * window(x, 0, 1)),
    ],
    "dorefa": [
        ({}, lambda x: ref_levels(x, 3), lambda x, g: g * window(x, 0, 1)),
        ({"k_bit": 4}, lambda x: ref_levels(x, 15), lambda x, g: g * window(x, 0, 1)),
    ],
    "stochastic_sign": [({}, None, lambda x, g: g * window(x, -1, 1))],
    "ste_heaviside": [
        ({}, lambda x: (x > 0).to(x.dtype), lambda x, g: g * window(x, -1, 1)),
        ({"clip": 0.5}, lambda x: (x > 0).to(x.dtype), lambda x, g: g * window(x, -0.5, 0.5)),
    ],
    "ste_tern": [
        ({}, lambda x: ref_ternary(x, 0.05), lambda x, g: g * window(x, -1, 1)),
        ({"threshold": 0.3}, lambda x: ref_ternary(x, 0.3), lambda x, g: g * window(x, -1, 1)),
        (
            {"threshold_mode": "mean"},
            lambda x: ref_ternary(x, 0.7 * x.abs().mean()),
            lambda x, g: g * window(x, -1, 1),
        ),
    ],
    "magnitude_aware_sign": [
        ({}, lambda x: ref_sign(x) * channel_mean_abs(x), lambda x, g: g * channel_mean_abs(x) * window(x, -1, 1)),
    ],
    "xnor_weight": [
        ({}, lambda x: ref_sign(x) * channel_mean_abs(x), lambda x, g: xnor_grad_by_hand(x, g, True)),
        (
            {"per_channel": False},
            lambda x: ref_sign(x) * x.abs().mean(),
            lambda x, g: xnor_grad_by_hand(x, g, False),
        ),
    ],
    "uniform_weight": [
        ({}, lambda x: ref_symmetric_uniform(x, 8), lambda x, g: g),
        ({"bits": 3}, lambda x: ref_symmetric_uniform(x, 3), lambda x, g: g),
        ({"stochastic": True}, None, lambda x, g: g),
    ],
}

REFERENCE_CASES = [
    pytest.param(name, params, fwd, bwd, id=f"{name}-{i}")
    for name, cases in CASES.items()
    for i, (params, fwd, bwd) in enumerate(cases)
]


# Every window edge and threshold used in CASES, as float32 values.
WINDOW_EDGES = torch.tensor([0.0, 0.05, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 1.3, 2.0])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def random_input(shape, seed=0, spread=1.5, dtype=torch.float32):
    return (spread * torch.randn(shape, generator=seeded(seed))).to(dtype)


def input_grad(q, x, upstream):
    x = x.detach().clone().requires_grad_()
    (q(x) * upstream).sum().backward()
    return x.grad


# --- registry --------------------------------------------------------------------------


def test_every_quantizer_has_reference_cases():
    missing = sorted(set(list_quantizers()) - set(CASES))
    assert not missing, f"add closed-form reference cases to CASES for {missing}"


def test_expected_quantizers_are_registered():
    expected = {
        "ste", "ste_clipped", "steep", "swish_sign", "approx_sign", "vste", "step01", "uniform_act",
        "stochastic_sign", "ste_heaviside", "ste_tern", "magnitude_aware_sign", "dorefa",
        "xnor_weight", "uniform_weight",
    }  # fmt: skip
    assert expected <= set(list_quantizers())
    assert set(list_sign_quantizers()) == {
        "ste", "ste_clipped", "steep", "swish_sign", "approx_sign", "approx_sign_window", "vste",
    }  # fmt: skip


def test_unknown_name_lists_nearest_match():
    with pytest.raises(UnknownNameError) as info:
        get_quantizer("swish_sgn")
    message = str(info.value)
    assert "Did you mean 'swish_sign'?" in message and "ste_clipped" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="'ste_clipped'"):
        sign_ste(torch.zeros(2), "ste_clippd")


def test_register_quantizer_rejects_duplicates():
    from lowbit.quant import register_quantizer

    with pytest.raises(ValueError, match="registered twice"):
        register_quantizer("ste")(nn.Identity)
    assert "ste" in QUANTIZERS


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("ste_clipped", {"clip": 0}, "clip must be > 0, got 0"),
        ("ste_clipped", {"clip": -1.0}, "clip must be > 0, got -1.0"),
        ("ste_clipped", {"clip": math.nan}, "clip must be > 0, got nan"),
        ("steep", {"slope": 0.0}, "slope must be > 0, got 0.0"),
        ("swish_sign", {"beta": -2}, "beta must be > 0, got -2"),
        ("vste", {"grad_clip": 0}, "grad_clip must be > 0, got 0"),
        ("vste", {"clip": "1"}, "clip must be > 0, got '1'"),
        ("step01", {"threshold": math.inf}, "threshold must be a finite number, got inf"),
        ("uniform_act", {"levels": 0}, "levels must be an integer >= 1, got 0"),
        ("uniform_act", {"levels": 1.5}, "levels must be an integer >= 1, got 1.5"),
        ("dorefa", {"k_bit": 0}, "k_bit must be an integer >= 1, got 0"),
        ("ste_heaviside", {"clip": 0}, "clip must be > 0, got 0"),
        ("ste_tern", {"threshold": -0.1}, "threshold must be a finite number >= 0, got -0.1"),
        ("ste_tern", {"threshold_mode": "median"}, "threshold_mode must be one of 'fixed', 'mean', got 'median'"),
        ("magnitude_aware_sign", {"clip": 0}, "clip must be > 0, got 0"),
        ("xnor_weight", {"per_channel": 1}, "per_channel must be a bool, got 1"),
        ("uniform_weight", {"bits": 1}, "bits must be an integer >= 2, got 1"),
        ("uniform_weight", {"stochastic": "yes"}, "stochastic must be a bool, got 'yes'"),
        ("stochastic_sign", {"generator": 3}, "generator must be a torch.Generator or None, got 3"),
    ],
)
def test_bad_parameters_raise_at_construction(name, params, message):
    with pytest.raises(ValueError) as info:
        get_quantizer(name, **params)
    assert message in str(info.value)


def test_functional_forms_validate_too():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        sign_ste(x, "swish_sign", beta=0)
    with pytest.raises(TypeError, match="clip"):
        sign_ste(x, "ste", clip=1.0)
    with pytest.raises(ValueError, match="bits must be an integer >= 2, got 1"):
        stochastic_round(x, bits=1, scale=0.1)
    with pytest.raises(ValueError, match="scale must be > 0, got -0.1"):
        stochastic_round(x, bits=4, scale=-0.1)


# --- forward values on known inputs ----------------------------------------------------

KNOWN_X = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
KNOWN = {
    "ste": [-1, -1, -1, 1, 1, 1, 1, 1, 1, 1],
    "step01": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    "uniform_act": [0, 0, 0, 0, 0, 0.5, 0.5, 1, 1, 1],  # 0.25 and 0.75 are ties: rounded up
    "dorefa": [0, 0, 0, 0, 0, 1 / 3, 2 / 3, 2 / 3, 1, 1],
    "ste_heaviside": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    "ste_tern": [-1, -1, -1, 0, 0, 1, 1, 1, 1, 1],
    "stochastic_sign": [-1, -1, None, None, None, None, None, None, 1, 1],  # None: random
}


@pytest.mark.parametrize("name", list_sign_quantizers() + sorted(set(KNOWN) - {"ste"}))
def test_forward_on_known_inputs(name):
    expected = KNOWN.get(name, KNOWN["ste"])
    out = get_quantizer(name)(KNOWN_X)
    for value, want in zip(out.tolist(), expected):
        if want is None:
            assert value in (-1.0, 1.0)
        else:
            assert value == pytest.approx(want)


@pytest.mark.parametrize("name", ["xnor_weight", "magnitude_aware_sign"])
def test_scaled_sign_known_inputs(name):
    w = torch.tensor([[-2.0, 0.0, 1.0], [0.5, -0.5, 0.5]])  # channel means 1 and 0.5
    assert get_quantizer(name)(w).tolist() == [[-1.0, 1.0, 1.0], [0.5, -0.5, 0.5]]
    if name == "xnor_weight":  # whole-tensor mean 0.75
        whole = get_quantizer(name, per_channel=False)(w)
        torch.testing.assert_close(whole, 0.75 * torch.tensor([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0]]))


def test_uniform_weight_known_inputs():
    w = torch.tensor([-3.0, -1.5, -0.75, 0.0, 0.74, 3.0])  # 2 bits: grid 3 * {-1, 0, 1}
    assert get_quantizer("uniform_weight", bits=2)(w).tolist() == [-3, -3, 0, 0, 0, 3]
    assert get_quantizer("uniform_weight")(torch.zeros(4)).tolist() == [0, 0, 0, 0]


def test_round_half_away():
    y = torch.tensor([0.49999997, 0.5, 1.5, 2.5, -0.5, -1.5, -0.49999997, 0.0])
    assert round_half_away(y).tolist() == [0, 1, 2, 3, -1, -2, 0, 0]


# --- reference forward and backward ----------------------------------------------------


@pytest.mark.parametrize("name, params, forward_ref, backward_ref", REFERENCE_CASES)
@pytest.mark.parametrize("shape", [(64,), (8, 16), (4, 3, 5, 5)], ids=["1d", "2d", "4d"])
def test_matches_closed_form_reference(name, params, forward_ref, backward_ref, shape):
    q = get_quantizer(name, **params)
    x = random_input(shape, seed=1)
    if len(shape) == 1:  # add the window edges and thresholds, where < vs <= matters
        x = torch.cat([x, WINDOW_EDGES, -WINDOW_EDGES])
        shape = x.shape
    upstream = torch.randn(shape, generator=seeded(2))
    if forward_ref is not None:
        torch.testing.assert_close(q(x), forward_ref(x))
    torch.testing.assert_close(input_grad(q, x, upstream), backward_ref(x, upstream))


def test_swish_derivative_is_derivative_of_swish_sign():
    beta = 5.0
    x = torch.linspace(-2, 2, 401, dtype=torch.float64)

    def smooth(t):
        s = torch.sigmoid(beta * t)
        return 2 * s * (1 + beta * t * (1 - s)) - 1

    x_auto = x.clone().requires_grad_()
    (autograd_derivative,) = torch.autograd.grad(smooth(x_auto).sum(), x_auto)
    h = 1e-6
    finite_difference = (smooth(x + h) - smooth(x - h)) / (2 * h)
    stated = ref_swish_derivative(x, beta)
    torch.testing.assert_close(stated, autograd_derivative)
    torch.testing.assert_close(stated, finite_difference, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(input_grad(get_quantizer("swish_sign", beta=beta), x, torch.ones_like(x)), stated)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swish_derivative_is_finite_for_large_inputs(dtype):
    x = torch.tensor([-math.inf, -1e38, -1e4, -100.0, -30.0, 30.0, 100.0, 1e4, 1e38, math.inf], dtype=dtype)
    grad = input_grad(get_quantizer("swish_sign", beta=5.0), x, torch.ones_like(x))
    assert torch.isfinite(grad).all()
    assert grad.abs().max() < 1e-30


# --- generic properties of every registered quantizer -----------------------------------


@pytest.mark.parametrize("name", list_quantizers())
def test_is_module_with_parameters_in_repr(name):
    q = get_quantizer(name)
    assert isinstance(q, nn.Module)
    for param in getattr(q, "param_names", ()):
        assert f"{param}=" in repr(q)


@pytest.mark.parametrize("name", list_quantizers())
@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d", "4d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_any_shape_keeps_dtype(name, shape, dtype):
    x = random_input(shape, dtype=dtype).requires_grad_()
    out = get_quantizer(name)(x)
    assert out.shape == x.shape and out.dtype == dtype
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list_quantizers())
def test_bfloat16_agrees_with_float32(name):
    q = get_quantizer(name)
    x16 = random_input((6, 10), seed=3, dtype=torch.bfloat16)
    x32 = x16.float()  # the same values, exactly
    upstream = torch.randn(6, 10, generator=seeded(4)).bfloat16()
    torch.manual_seed(0)  # stochastic quantizers draw the same float32 noise for both
    out16 = q(x16)
    torch.manual_seed(0)
    out32 = q(x32)
    torch.testing.assert_close(out16, out32.bfloat16(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(
        input_grad(q, x16, upstream).float(), input_grad(q, x32, upstream.float()), atol=3e-2, rtol=3e-2
    )


@pytest.mark.parametrize("name", sorted(set(list_quantizers()) - RANDOM_FORWARD))
def test_vmap_matches_loop(name):
    q = get_quantizer(name)
    batch = random_input((5, 4, 6), seed=5)  # (batch, *sample)
    upstream = torch.randn(4, 6, generator=seeded(6))

    def weighted(t):
        return (q(t) * upstream).sum()

    torch.testing.assert_close(vmap(q)(batch), torch.stack([q(t) for t in batch]))
    torch.testing.assert_close(
        vmap(func_grad(weighted))(batch), torch.stack([input_grad(q, t, upstream) for t in batch])
    )


@pytest.mark.parametrize("name", list_quantizers())
def test_func_grad_matches_autograd(name):
    q = get_quantizer(name)
    x = random_input((4, 6), seed=7)
    upstream = torch.randn(4, 6, generator=seeded(8))
    grad_fn = func_grad(lambda t: (q(t) * upstream).sum())
    torch.testing.assert_close(grad_fn(x), input_grad(q, x, upstream))


@pytest.mark.parametrize("name", sorted(set(list_quantizers()) - RANDOM_FORWARD))
def test_forward_mode_matches_reverse_mode(name):
    q = get_quantizer(name)
    x = random_input((2, 4), seed=11)
    torch.testing.assert_close(jacfwd(q)(x), jacrev(q)(x))


# --- randomness ----------------------------------------------------------------------


def test_stochastic_sign_is_unbiased():
    x = torch.linspace(-1.5, 1.5, 13)
    draws = 4000
    samples = stochastic_sign(x.expand(draws, -1), generator=seeded(9))  # (draws, 13)
    assert set(samples.unique().tolist()) <= {-1.0, 1.0}
    expected = torch.nn.functional.hardtanh(x)
    standard_error = (1 - expected**2).clamp_min(0).sqrt() / math.sqrt(draws)
    assert ((samples.mean(0) - expected).abs() <= 5 * standard_error + 1e-6).all()


def test_stochastic_sign_generator_reproducible():
    x = torch.randn(100)
    q1 = get_quantizer("stochastic_sign", generator=seeded(3))
    q2 = get_quantizer("stochastic_sign", generator=seeded(3))
    assert torch.equal(q1(x), q2(x))


def test_stochastic_sign_under_vmap_randomness():
    q = get_quantizer("stochastic_sign")
    batch = torch.zeros(8, 200)  # p = 1/2 everywhere
    different = vmap(q, randomness="different")(batch)
    same = vmap(q, randomness="same")(batch)
    assert not torch.equal(different[0], different[1])
    assert all(torch.equal(same[0], row) for row in same)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(q)(batch)  # vmap's default randomness="error"
    grads = vmap(func_grad(lambda t: q(t).sum()), randomness="different")(random_input((3, 10)))
    torch.testing.assert_close(grads, window(random_input((3, 10)), -1, 1))


def test_stochastic_round_is_unbiased_within_range():
    bits, scale, draws = 4, 0.1, 4000  # grid 0.1 * {-7, ..., 7}
    x = torch.linspace(-0.69, 0.69, 11)
    samples = stochastic_round(x.expand(draws, -1), bits, scale, generator=seeded(10))
    levels = samples / scale
    torch.testing.assert_close(levels, levels.round())  # every sample lies on the grid
    assert ((samples - x).abs() <= scale + 1e-6).all()  # one of the two neighbouring levels
    standard_error_bound = 0.5 * scale / math.sqrt(draws)  # Bernoulli std <= 1/2 step
    assert ((samples.mean(0) - x).abs() <= 5 * standard_error_bound).all()


def test_stochastic_round_clips_dtype_and_gradient():
    x = torch.tensor([5.0, -5.0, 0.25], dtype=torch.bfloat16, requires_grad=True)
    per_element_scale = torch.tensor([0.1, 0.1, 0.25])
    out = stochastic_round(x, 4, per_element_scale, generator=seeded(0))
    assert out.dtype == torch.bfloat16
    assert out[:2].tolist() == pytest.approx([0.7, -0.7], rel=1e-2)
    assert out[2].item() == 0.25  # exactly on the grid: never moved
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]  # identity STE


def test_stochastic_uniform_weight_is_unbiased():
    w = torch.linspace(-1.0, 1.0, 9)  # 3 bits: grid (1/3) * {-3, ..., 3}
    draws = 4000
    samples = vmap(lambda t: uniform_weight(t, bits=3, stochastic=True), randomness="different")(
        w.expand(draws, -1)
    )
    standard_error_bound = 0.5 * (1 / 3) / math.sqrt(draws)
    assert ((samples.mean(0) - w).abs() <= 5 * standard_error_bound).all()


def test_xnor_weight_functional_matches_module():
    w = random_input((4, 3, 2, 2))
    torch.testing.assert_close(xnor_weight(w), get_quantizer("xnor_weight")(w))
