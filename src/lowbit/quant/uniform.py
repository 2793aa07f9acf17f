"""k-level uniform quantizers: activations on [0, 1] and symmetric weights, nearest or stochastic.

Rounding to nearest is ``round_half_away`` (ties away from zero; on [0, 1]
that is ties up) rather than ``torch.round``'s ties-to-even, so every bin has
the same width. Larq/TensorFlow's ``tf.round`` rounds ties to even; results
differ only at exact ties (e.g. x = 0.25 with levels = 2 gives 0.5 here, 0 there).
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import (
    check_bool,
    check_generator,
    check_int_at_least,
    check_positive,
    identity_grad,
    max_abs,
    quantize_with_surrogate,
    round_half_away,
    uniform_noise,
)
from lowbit.quant.step import unit_interval_grad


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    # At least float32, so that n x, x / scale and fractional parts are accurate for bfloat16 input.
    return torch.promote_types(x.dtype, torch.float32)


# --- activations on [0, 1] ---------------------------------------------------------


def _round_unit_interval(x: torch.Tensor, steps: int) -> torch.Tensor:
    # n * x in at least float32: in bfloat16 it could round across a bin boundary.
    y = steps * x.to(_working_dtype(x)).clamp(0.0, 1.0)
    return (round_half_away(y) / steps).to(x.dtype)


def uniform_act(x: torch.Tensor, levels: int = 2) -> torch.Tensor:
    """round(n clamp(x, 0, 1)) / n with n = ``levels``; see :class:`UniformActivation`."""
    steps = check_int_at_least("levels", levels, 1)
    return quantize_with_surrogate(x, functools.partial(_round_unit_interval, steps=steps), unit_interval_grad)


def dorefa(x: torch.Tensor, k_bit: int = 2) -> torch.Tensor:
    """DoReFa k-bit activation; see :class:`DoReFa`."""
    k_bit = check_int_at_least("k_bit", k_bit, 1)
    steps = 2**k_bit - 1
    return quantize_with_surrogate(x, functools.partial(_round_unit_interval, steps=steps), unit_interval_grad)


# --- symmetric signed grids: values scale * {-qmax, ..., qmax}, qmax = 2^(bits-1) - 1 ----


def symmetric_qmax(bits: int) -> int:
    """The largest integer level of a symmetric ``bits``-bit grid, 2^(bits-1) - 1 (127 for 8 bits)."""
    return 2 ** (bits - 1) - 1


def _nearest_on_grid(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    y = x.to(_working_dtype(x)) / scale
    return (round_half_away(y).clamp(-qmax, qmax) * scale).to(x.dtype)


def _stochastic_on_grid(x: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor, qmax: int) -> torch.Tensor:
    # Round up with probability frac(y), so E[round] = y: floor(y) + 1{u < y - floor(y)}.
    y = x.to(_working_dtype(x)) / scale
    lower = torch.floor(y)
    rounded = lower + (noise < y - lower).to(y.dtype)
    return (rounded.clamp(-qmax, qmax) * scale).to(x.dtype)


def stochastic_round(
    x: torch.Tensor,
    bits: int,
    scale: Union[float, torch.Tensor],
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Stochastic rounding onto the symmetric grid scale * {-qmax, ..., qmax}, qmax = 2^(bits-1) - 1.

    q = scale * clamp(floor(x/scale) + 1{u < frac(x/scale)}, -qmax, qmax), u ~ U[0, 1),
    so E[q] = x for |x| <= qmax * scale (unbiased within the range; clipped
    outside it). Backward: identity STE for ``x``; ``scale`` (a float > 0 or a
    tensor broadcastable to ``x``) gets no gradient. Output dtype = ``x``'s;
    the arithmetic is done in at least float32.

    Under ``torch.func.vmap`` pass ``randomness="different"`` or ``"same"``.

    Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015.
    """
    qmax = symmetric_qmax(check_int_at_least("bits", bits, 2))
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(check_positive("scale", scale), dtype=_working_dtype(x), device=x.device)
    return quantize_with_surrogate(
        x,
        functools.partial(_stochastic_on_grid, qmax=qmax),
        identity_grad,
        scale,
        uniform_noise(x, generator),
    )


def max_abs_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """max|W| / qmax (0-d, no gradient): the grid step that maps the largest |W| onto qmax.

    An all-zero tensor gets the smallest positive float32 step, so it quantizes to 0
    instead of 0/0 = NaN.
    """
    largest = max_abs(w.detach()).to(_working_dtype(w))
    return largest.clamp_min(torch.finfo(torch.float32).tiny) / qmax


def uniform_weight(
    w: torch.Tensor, bits: int = 8, stochastic: bool = False, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Symmetric k-bit weights with a max-abs scale; see :class:`UniformWeight`."""
    qmax = symmetric_qmax(check_int_at_least("bits", bits, 2))
    scale = max_abs_scale(w, qmax)
    if check_bool("stochastic", stochastic):
        return quantize_with_surrogate(
            w, functools.partial(_stochastic_on_grid, qmax=qmax), identity_grad, scale, uniform_noise(w, generator)
        )
    return quantize_with_surrogate(w, functools.partial(_nearest_on_grid, qmax=qmax), identity_grad, scale)


@register_quantizer("uniform_act")
class UniformActivation(Quantizer):
    """Uniform activation quantizer on [0, 1] with n = ``levels`` steps (n + 1 values).

    q(x) = round(n clamp(x, 0, 1)) / n  (n = 2: ternary {0, 1/2, 1}; n = 3: two-bit),
    rounding ties up (see module docstring);  dq/dx := 1{0 <= x <= 1}.

    Kim, Kim & Kim, "BinaryDuo", ICLR 2020 (its ternary / 2-bit activations).
    """

    param_names = ("levels",)

    def __init__(self, levels: int = 2):
        super().__init__()
        self.levels = check_int_at_least("levels", levels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_act(x, self.levels)


@register_quantizer("dorefa")
class DoReFa(Quantizer):
    """DoReFa-Net's k-bit activation quantizer, as Larq's ``DoReFa(mode="activations")``.

    q(x) = round((2^k - 1) clamp(x, 0, 1)) / (2^k - 1), rounding ties up
    (Larq: ties to even);  dq/dx := 1{0 <= x <= 1}.

    Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
    with Low Bitwidth Gradients", 2016.
    """

    param_names = ("k_bit",)

    def __init__(self, k_bit: int = 2):
        super().__init__()
        self.k_bit = check_int_at_least("k_bit", k_bit, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dorefa(x, self.k_bit)


@register_quantizer("uniform_weight")
class UniformWeight(Quantizer):
    """Symmetric k-bit uniform weight quantizer with a per-tensor max-abs scale.

    q(W) = s clamp(round(W / s), -qmax, qmax),  s = max|W| / qmax,  qmax = 2^(bits-1) - 1
    (bits >= 2: the grid contains 0 and is symmetric; use ``xnor_weight`` for 1 bit).
    round is to nearest, ties away from zero, or stochastic (unbiased, see
    :func:`stochastic_round`) if ``stochastic=True``, drawing from ``generator``.
    Backward: identity STE, dq/dW := 1 (s is treated as a constant).

    Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018 (symmetric variant); Gupta et
    al. 2015 for stochastic rounding.
    """

    param_names = ("bits", "stochastic")

    def __init__(self, bits: int = 8, stochastic: bool = False, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.bits = check_int_at_least("bits", bits, 2)
        self.stochastic = check_bool("stochastic", stochastic)
        self.generator = check_generator(generator)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return uniform_weight(w, self.bits, self.stochastic, self.generator)


__all__ = [
    "DoReFa",
    "UniformActivation",
    "UniformWeight",
    "dorefa",
    "max_abs_scale",
    "stochastic_round",
    "symmetric_qmax",
    "uniform_act",
    "uniform_weight",
]
