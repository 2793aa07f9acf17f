"""Threshold quantizers: 0/1 steps and the ternary {-1, 0, +1} step, each with a window STE.

Backward for all of them: grad_x = 1{x in window} * grad_q (a clipped
straight-through estimator); the window is stated per quantizer.
"""

from __future__ import annotations

import functools

import torch

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import (
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    hard_sign,
    pass_where,
    quantize_with_surrogate,
)

# Ternary Weight Networks' approximation of the optimal threshold, 0.7 E|x|
# (Li, Zhang & Liu 2016, derived for uniform/Gaussian weights); Larq uses it too.
TWN_THRESHOLD_FACTOR = 0.7


def unit_interval_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad_x = 1{0 <= x <= 1} * grad: the STE window of activations quantized on [0, 1]."""
    return pass_where((x >= 0) & (x <= 1), grad)


def _symmetric_window_grad(x: torch.Tensor, grad: torch.Tensor, clip: float) -> torch.Tensor:
    # grad_x = 1{|x| <= clip} grad
    return pass_where(x.abs() <= clip, grad)


def _step_at(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return (x >= threshold).to(x.dtype)


def _positive_part_step(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


def _ternarize(x: torch.Tensor, threshold: float, threshold_mode: str) -> torch.Tensor:
    if threshold_mode == "mean":
        # Computed per call (per vmapped sample): one threshold for the whole tensor.
        threshold = TWN_THRESHOLD_FACTOR * x.abs().mean()
    return torch.where(x.abs() > threshold, hard_sign(x), torch.zeros_like(x))


def step01(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """BinaryDuo's 0/1 activation 1{x >= threshold}; see :class:`Step01`."""
    threshold = check_finite("threshold", threshold)
    return quantize_with_surrogate(x, functools.partial(_step_at, threshold=threshold), unit_interval_grad)


def ste_heaviside(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Larq's SteHeaviside 1{x > 0}; see :class:`SteHeaviside`."""
    clip = check_positive("clip", clip)
    return quantize_with_surrogate(
        x, _positive_part_step, functools.partial(_symmetric_window_grad, clip=clip)
    )


def ste_tern(
    x: torch.Tensor, threshold: float = 0.05, threshold_mode: str = "fixed", clip: float = 1.0
) -> torch.Tensor:
    """Ternary {-1, 0, +1} step with a clipped STE; see :class:`SteTern`."""
    threshold = check_non_negative("threshold", threshold)
    threshold_mode = check_choice("threshold_mode", threshold_mode, ("fixed", "mean"))
    clip = check_positive("clip", clip)
    return quantize_with_surrogate(
        x,
        functools.partial(_ternarize, threshold=threshold, threshold_mode=threshold_mode),
        functools.partial(_symmetric_window_grad, clip=clip),
    )


@register_quantizer("step01")
class Step01(Quantizer):
    """BinaryDuo's binary {0, 1} activation.

    q(x) = 1{x >= threshold};  dq/dx := 1{0 <= x <= 1}.

    Kim, Kim & Kim, "BinaryDuo: Reducing Gradient Mismatch in Binary Activation
    Network by Coupling Binary Activations", ICLR 2020.
    """

    param_names = ("threshold",)

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = check_finite("threshold", threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return step01(x, self.threshold)


@register_quantizer("ste_heaviside")
class SteHeaviside(Quantizer):
    """Heaviside step with a clipped STE, as Larq's ``SteHeaviside``.

    q(x) = 1{x > 0} (so q(0) = 0);  dq/dx := 1{|x| <= clip}.
    """

    param_names = ("clip",)

    def __init__(self, clip: float = 1.0):
        super().__init__()
        self.clip = check_positive("clip", clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_heaviside(x, self.clip)


@register_quantizer("ste_tern")
class SteTern(Quantizer):
    """Ternary step with a clipped STE, as Larq's ``SteTern``.

    q(x) = sign(x) 1{|x| > t} in {-1, 0, +1};  dq/dx := 1{|x| <= clip}, where
    t = ``threshold`` (``threshold_mode="fixed"``) or t = 0.7 mean|x| over the
    whole tensor (``"mean"``, Ternary Weight Networks; ``threshold`` is then
    unused, as Larq's ``threshold_value`` is with ``ternary_weight_networks``).
    No gradient flows through t.

    Deviation from Larq: at |x| = t exactly, Larq outputs ±1; here 0, as in the
    TWN paper's definition.

    Li, Zhang & Liu, "Ternary Weight Networks", 2016.
    """

    param_names = ("threshold", "threshold_mode", "clip")

    def __init__(self, threshold: float = 0.05, threshold_mode: str = "fixed", clip: float = 1.0):
        super().__init__()
        self.threshold = check_non_negative("threshold", threshold)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("fixed", "mean"))
        self.clip = check_positive("clip", clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_tern(x, self.threshold, self.threshold_mode, self.clip)


__all__ = ["SteHeaviside", "SteTern", "Step01", "ste_heaviside", "ste_tern", "step01", "unit_interval_grad"]
