"""Larq and bitorch quantizer names: each alias against the closed-form definition it claims (no TensorFlow).

The reference functions below are written from Larq's ``larq.quantizers`` definitions
(forward and custom gradient), in float64, independently of lowbit's code paths.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant import QUANTIZERS, get_quantizer, list_quantizer_aliases
from lowbit.quant.aliases import ALIASES, FOREIGN_NAMES, suggestion
from lowbit.registry import UnknownNameError

# --- Larq's definitions, closed form -----------------------------------------------------


def larq_sign(x):  # larq.math.sign: tf.sign(tf.sign(x) + 0.1), so sign(0) = +1
    return torch.sign(torch.sign(x) + 0.1)


def larq_heaviside(x):  # larq.math.heaviside: tf.sign(tf.nn.relu(x))
    return torch.sign(torch.relu(x))


def clipped(x, clip):  # larq.quantizers._clipped_gradient, as a derivative
    return torch.ones_like(x) if clip is None else (x.abs() <= clip).to(x.dtype)


def larq_ste_sign(x, clip_value=1.0):
    return larq_sign(x), clipped(x, clip_value)


def larq_approx_sign(x):
    return larq_sign(x), torch.where(x.abs() <= 1.0, (1 - x.abs()) * 2, torch.zeros_like(x))


def larq_swish_sign(x, beta=5.0):
    bx = beta * x
    return larq_sign(x), beta * (2 - bx * torch.tanh(bx * 0.5)) / (1 + torch.cosh(bx))


def larq_ste_heaviside(x, clip_value=1.0):
    return larq_heaviside(x), clipped(x, clip_value)


def larq_ste_tern(x, threshold_value=0.05, ternary_weight_networks=False, clip_value=1.0):
    t = 0.7 * x.abs().sum() / x.numel() if ternary_weight_networks else threshold_value
    return torch.sign(torch.sign(x + t) + torch.sign(x - t)), clipped(x, clip_value)


def larq_magnitude_aware_sign_tf_layout(x, clip_value=1.0):
    # scale = mean |x| over all axes but the last (TF layout: the channel is last); stop_gradient on it
    scale = x.abs().mean(dim=tuple(range(x.dim() - 1)))
    return scale * larq_sign(x), scale * clipped(x, clip_value)


def larq_dorefa(x, k_bit=2):
    n = 2**k_bit - 1
    q = torch.round(x.clamp(0, 1) * n) / n  # tf.round and torch.round both round half to even
    return q, ((x >= 0) & (x <= 1)).to(x.dtype)


def bitorch_sign(x):  # bitorch.quantizations.Sign: sign with 0 -> +1, STE.backward returns the gradient as is
    s = torch.sign(x)
    return torch.where(s == 0, torch.ones_like(s), s), torch.ones_like(x)


def forward_and_derivative(quantizer, x):
    """q(x) and the diagonal surrogate derivative dq_i/dx_i (x float64, backward of sum(q))."""
    x = x.clone().requires_grad_(True)
    q = quantizer(x)
    (grad,) = torch.autograd.grad(q.sum(), x)
    return q.detach(), grad


GRID = torch.cat(
    [torch.linspace(-2.5, 2.5, 101, dtype=torch.float64), torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5, 1e-9], dtype=torch.float64)]
)

CASES = [
    # (alias spec, Larq reference, reference kwargs)
    ({"name": "ste_sign"}, larq_ste_sign, {}),
    ({"name": "SteSign", "clip_value": 0.5}, larq_ste_sign, {"clip_value": 0.5}),
    ({"name": "ste_sign", "clip_value": None}, larq_ste_sign, {"clip_value": None}),
    ({"name": "approx_sign"}, larq_approx_sign, {}),
    ({"name": "ApproxSign"}, larq_approx_sign, {}),
    ({"name": "swish_sign"}, larq_swish_sign, {}),
    ({"name": "SwishSign", "beta": 2.0}, larq_swish_sign, {"beta": 2.0}),
    ({"name": "ste_heaviside"}, larq_ste_heaviside, {}),
    ({"name": "SteHeaviside", "clip_value": 0.3}, larq_ste_heaviside, {"clip_value": 0.3}),
    ({"name": "ste_heaviside", "clip_value": 2.0}, larq_ste_heaviside, {"clip_value": 2.0}),
    ({"name": "sign"}, bitorch_sign, {}),
]


@pytest.mark.parametrize("spec, reference, kwargs", CASES, ids=[str(c[0]) for c in CASES])
def test_sign_family_aliases_equal_the_closed_forms(spec, reference, kwargs):
    params = {k: v for k, v in spec.items() if k != "name"}
    q, dq = forward_and_derivative(get_quantizer(spec["name"], **params), GRID)
    ref_q, ref_dq = reference(GRID, **kwargs)
    torch.testing.assert_close(q, ref_q, rtol=0, atol=0)
    torch.testing.assert_close(dq, ref_dq, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ste_tern", "SteTern"])
@pytest.mark.parametrize("twn", [False, True])
def test_ste_tern_equals_larq_off_the_threshold_and_differs_only_at_it(name, twn):
    x = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64) + 0.013  # no entry exactly at +-t
    t = 0.7 * x.abs().mean() if twn else 0.2
    quantizer = get_quantizer(name, threshold_value=0.2, ternary_weight_networks=twn, clip_value=1.2)
    q, dq = forward_and_derivative(quantizer, x)
    ref_q, ref_dq = larq_ste_tern(x, threshold_value=0.2, ternary_weight_networks=twn, clip_value=1.2)
    assert not torch.isclose(x.abs(), torch.as_tensor(t, dtype=x.dtype)).any()
    torch.testing.assert_close(q, ref_q, rtol=0, atol=0)
    torch.testing.assert_close(dq, ref_dq, rtol=0, atol=0)
    # The documented deviation: exactly at |x| = threshold Larq gives +-1, lowbit 0 (TWN's definition).
    tie = torch.tensor([-0.25, 0.25, 0.0], dtype=torch.float64)
    lowbit_tie, _ = forward_and_derivative(get_quantizer(name, threshold_value=0.25), tie)
    larq_tie, _ = larq_ste_tern(tie, threshold_value=0.25)
    assert lowbit_tie.tolist() == [0.0, 0.0, 0.0] and larq_tie.tolist() == [-1.0, 1.0, 0.0]


def test_magnitude_aware_sign_is_larq_with_the_channel_axis_moved_to_dim_0():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64) * 1.3  # (out, in, kh, kw), PyTorch layout
    for name in ("magnitude_aware_sign", "MagnitudeAwareSign"):
        q, dq = forward_and_derivative(get_quantizer(name, clip_value=1.5), w)
        w_tf = w.permute(1, 2, 3, 0)  # (in, kh, kw, out): Larq's layout, channel last
        ref_q, ref_dq = larq_magnitude_aware_sign_tf_layout(w_tf, clip_value=1.5)
        torch.testing.assert_close(q, ref_q.permute(3, 0, 1, 2), rtol=1e-12, atol=0)
        torch.testing.assert_close(dq, ref_dq.permute(3, 0, 1, 2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["dorefa_quantizer", "DoReFa", "DoReFaQuantizer"])
@pytest.mark.parametrize("k_bit", [1, 2, 4])
def test_dorefa_equals_larq_off_ties_and_rounds_ties_up(name, k_bit):
    n = 2**k_bit - 1
    x = torch.linspace(-0.3, 1.3, 97, dtype=torch.float64)
    off_tie = ((x.clamp(0, 1) * n - 0.5) % 1).abs() > 1e-9
    q, dq = forward_and_derivative(get_quantizer(name, k_bit=k_bit), x)
    ref_q, ref_dq = larq_dorefa(x, k_bit)
    torch.testing.assert_close(q[off_tie], ref_q[off_tie], rtol=0, atol=1e-15)
    torch.testing.assert_close(dq, ref_dq, rtol=0, atol=0)
    # the documented deviation at an exact tie n x = 1/2: Larq (ties to even) 0, lowbit 1/n
    tie = torch.tensor([0.5 / n], dtype=torch.float64)
    assert float(get_quantizer(name, k_bit=k_bit)(tie)) == pytest.approx(1.0 / n)
    assert float(larq_dorefa(tie, k_bit)[0]) == 0.0
    with pytest.raises(ValueError, match="uniform_weight"):
        get_quantizer(name, k_bit=k_bit, mode="weights")


def test_every_alias_builds_its_target_class():
    assert list_quantizer_aliases()["ste_sign"] == "ste_clipped"
    assert list_quantizer_aliases()["sign"] == "ste"
    for name, alias in ALIASES.items():
        assert alias.target in QUANTIZERS, name
        assert type(get_quantizer(name)) is QUANTIZERS.get(alias.target), name
    assert type(get_quantizer("ste_sign", clip_value=None)) is QUANTIZERS.get("ste")


def test_alias_parameters_in_both_spellings_and_conflicts():
    assert get_quantizer("ste_sign", clip=0.25).clip == 0.25  # lowbit's spelling works on the alias too
    with pytest.raises(ValueError, match="same parameter"):
        get_quantizer("ste_sign", clip=0.25, clip_value=0.5)
    with pytest.raises(ValueError, match="clip must be > 0"):
        get_quantizer("ste_sign", clip_value=0.0)
    with pytest.raises(TypeError):
        get_quantizer("ste_sign", beta=1.0)


def test_aliases_work_wherever_a_quantizer_spec_is_taken():
    from lowbit.models import create_model
    from lowbit.nn import BinaryLinear

    layer = BinaryLinear(4, 2, input_quantizer={"name": "ste_sign", "clip_value": 0.5}, weight_quantizer="SteSign")
    assert layer.input_quantizer.clip == 0.5 and type(layer.weight_quantizer).__name__ == "ClippedSignSTE"
    model = create_model("xnor_resnet18", width=2, in_channels=1, act="ste_sign")
    assert type(model.layer1[0].conv1.input_quantizer).__name__ == "ClippedSignSTE"


def _edits(name: str) -> set:
    """Typos one keystroke away: a deleted or swapped character, another case, '-' for '_'."""
    typos = {name.upper(), name.lower(), name.replace("_", "-"), name.replace("_", "")}
    for i in range(len(name)):
        typos.add(name[:i] + name[i + 1 :])
        if i + 1 < len(name):
            typos.add(name[:i] + name[i + 1] + name[i] + name[i + 2 :])
    return typos


def _distance(a: str, b: str) -> int:
    """Optimal-string-alignment edit distance (insert, delete, substitute, swap adjacent)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def test_hint_for_a_typo_never_points_to_a_different_quantizer():
    """The hint for a near miss of any name or alias resolves to the quantizer that name means.

    Typos as close to another quantizer as to the intended one are ambiguous; there the hint
    must be one of the closest (the case of 'svte': one edit from both 'vste' and 'ste').
    """

    def meaning(n: str) -> str:
        return ALIASES[n].target if n in ALIASES else n

    names = [*QUANTIZERS.names(), *ALIASES]
    checked = 0
    for name in names:
        for typo in _edits(name) - set(names):
            if typo.lower().replace("_", "").replace("-", "") in FOREIGN_NAMES:
                continue
            hint = suggestion(typo)
            assert hint is not None, (name, typo)
            closest = min(_distance(typo.lower(), n.lower()) for n in names)
            tied = {meaning(n) for n in names if _distance(typo.lower(), n.lower()) == closest}
            if len(tied) == 1 and _distance(typo.lower(), name.lower()) == closest:
                assert meaning(hint) == meaning(name), (name, typo, hint)
                checked += 1
            else:
                assert meaning(hint) in tied, (name, typo, hint)
    assert checked > 300


def test_issue_examples_ste_sign_and_sign_no_longer_point_to_swish_sign():
    assert type(get_quantizer("ste_sign")).__name__ == "ClippedSignSTE"
    assert type(get_quantizer("sign")).__name__ == "SignSTE"
    with pytest.raises(UnknownNameError) as info:
        get_quantizer("ste_sgn")
    assert "Did you mean 'ste_sign' (Larq's name for 'ste_clipped')" in str(info.value)
    assert "swish_sign'?" not in str(info.value)


def test_names_that_mean_something_else_elsewhere_are_explained_not_hinted():
    with pytest.raises(UnknownNameError) as info:
        get_quantizer("steheaviside")  # bitorch: a +-1 sign, not the 0/1 step
    message = str(info.value)
    assert "bitorch" in message and "+-1" in message and "Did you mean" not in message


def test_swish_derivative_far_out_is_zero_as_larq_not_nan():
    # Larq's 1 + cosh(beta x) overflows to inf in float32 for |beta x| > 89, giving a gradient of 0 there
    x = torch.tensor([-30.0, 30.0], dtype=torch.float32)
    _, dq = forward_and_derivative(get_quantizer("SwishSign"), x)
    assert torch.equal(dq, torch.zeros(2)) and math.isfinite(float(dq.sum()))


# --- one spelling of bit widths: w_bits / a_bits (/ g_bits / e_bits) everywhere ---------


def test_bit_widths_have_one_spelling_and_the_old_one_is_a_deprecated_alias():
    import warnings

    from torch import nn

    from lowbit.nn import QuantConv2d, QuantLinear, apply_quant_config, quantize_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        layer = QuantConv2d(2, 3, 3, w_bits=4, a_bits=6)
        model = quantize_model(nn.Sequential(nn.Linear(3, 3)), w_bits=4, a_bits=6)
        configured = apply_quant_config(nn.Sequential(nn.Linear(3, 3)), {"w_bits": 4, "a_bits": 6})
    assert (layer.w_bits, layer.a_bits) == (4, 6) == (model[0].w_bits, model[0].a_bits)
    assert (configured[0].w_bits, configured[0].a_bits) == (4, 6)
    with pytest.warns(DeprecationWarning) as caught:
        old = QuantLinear(3, 2, weight_bits=4, act_bits=6)
    assert sorted(str(w.message).split(";")[1] for w in caught) == [" use a_bits= (the spelling of quantize_model and the quant: config)", " use w_bits= (the spelling of quantize_model and the quant: config)"]
    assert all(w.filename == __file__ for w in caught)  # the warning points at the caller
    assert (old.w_bits, old.a_bits) == (4, 6)
    with pytest.warns(DeprecationWarning, match="use a_bits"):
        assert old.act_bits == 6
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        QuantLinear(3, 2, w_bits=4, weight_bits=4)


def test_one_bit_in_quant_config_points_to_binarize():
    from torch import nn

    from lowbit.nn import QuantLinear, apply_quant_config

    with pytest.raises(ValueError, match="binarize:"):
        apply_quant_config(nn.Sequential(nn.Linear(3, 3)), {"w_bits": 1})
    with pytest.raises(ValueError, match="binary layer"):
        QuantLinear(3, 2, w_bits=1)
