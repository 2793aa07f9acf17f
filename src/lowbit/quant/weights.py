"""Scaled-sign weight quantizers: q(W) = alpha(W) * sign(W).

Convention (PyTorch layout): dim 0 of a weight is the output channel, as in
``nn.Linear`` (out, in) and ``nn.Conv2d`` (out, in, kh, kw). A per-channel
scale averages |W| over every other dim; a 1-D tensor therefore has one entry
per channel (alpha = |w|, so q(w) = w) and a 0-d tensor is its own channel.
"""

from __future__ import annotations

import torch

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import check_bool, check_positive
from lowbit.quant.fused import fused_magnitude_aware_sign, fused_xnor_weight
from lowbit.quant.sign import sign_ste


def mean_abs(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """mean |W| per output channel (dim 0; shape (C, 1, ..., 1)) or over the whole tensor (0-d).

    Differentiable: d mean|W| / dW = sign(W) / n, with sign(0) = 0 as ``abs`` gives.
    """
    if not per_channel:
        return w.abs().mean()
    other_dims = tuple(range(1, w.dim()))
    if not other_dims:  # 0-d or 1-D: each entry is its own channel
        return w.abs()
    return w.abs().mean(dim=other_dims, keepdim=True)


def xnor_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """XNOR-Net weight binarisation alpha(W) * sign(W); see :class:`XNORWeight`.

    Eager CPU float weights take the fused kernels of ``lowbit.quant.fused`` (same values).
    """
    per_channel = check_bool("per_channel", per_channel)
    fused = fused_xnor_weight(w, per_channel)
    if fused is not None:
        return fused
    return sign_ste(w, "ste") * mean_abs(w, per_channel)


def magnitude_aware_sign(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Bi-Real / Larq magnitude-aware sign; see :class:`MagnitudeAwareSign`."""
    clip = check_positive("clip", clip)
    fused = fused_magnitude_aware_sign(x, clip)
    if fused is not None:
        return fused
    return sign_ste(x, "ste_clipped", clip=clip) * mean_abs(x, per_channel=True).detach()


@register_quantizer("xnor_weight")
class XNORWeight(Quantizer):
    """XNOR-Net binary weights with a real scale.

    q(W) = alpha(W) sign(W),  alpha = mean |W| over each output channel (dim 0,
    all other dims averaged), or over the whole tensor if ``per_channel=False``.

    Backward: autograd through q = sign_ste(W) * alpha(W), where sign_ste has the
    identity surrogate d sign(W)/dW := 1 and alpha is differentiated exactly:
    dL/dW_i = alpha g_i + sign(W_i) / n * sum_{j in channel} g_j sign(W_j),
    n = entries per channel.

    Rastegari, Ordonez, Redmon & Farhadi, "XNOR-Net: ImageNet Classification
    Using Binary Convolutional Neural Networks", ECCV 2016.
    """

    param_names = ("per_channel",)

    def __init__(self, per_channel: bool = True):
        super().__init__()
        self.per_channel = check_bool("per_channel", per_channel)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return xnor_weight(w, self.per_channel)


@register_quantizer("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """Bi-Real Net's magnitude-aware sign, as in Larq's ``MagnitudeAwareSign``.

    q(W) = alpha sign(W),  alpha = mean |W| per output channel, treated as a
    constant in the backward pass:  dq/dW := alpha 1{|W| <= clip}.

    Deviation from Larq: Larq (TensorFlow layout) averages over all dims but the
    last; here the output channel is dim 0 (PyTorch layout), averaged over all
    other dims. Unlike ``xnor_weight``, no gradient flows through alpha (as in
    the paper and Larq, which stop it) and the sign surrogate is clipped.

    Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs", ECCV 2018.
    """

    param_names = ("clip",)

    def __init__(self, clip: float = 1.0):
        super().__init__()
        self.clip = check_positive("clip", clip)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return magnitude_aware_sign(w, self.clip)


__all__ = ["MagnitudeAwareSign", "XNORWeight", "magnitude_aware_sign", "mean_abs", "xnor_weight"]
