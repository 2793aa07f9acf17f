"""Binary (XNOR) layers: quantized inputs times quantized weights, latent float weights.

    y = q_w(W) . q_x(x) + b

with ``q_x`` the input quantizer (a sign with some surrogate gradient by
default, ``ste_clipped``: sign forward, 1{|x| <= 1} backward) and ``q_w`` the
weight quantizer (``xnor_weight`` by default: sign(W) * alpha with alpha the
mean |W| per output channel). The layers subclass ``nn.Linear`` / ``nn.Conv2d``
so the latent float weights are ``.weight`` (what the optimizer updates) and
every tool that knows the float layers (initialisers, ``state_dict``) keeps
working; the quantizers are submodules ``input_quantizer`` and
``weight_quantizer`` (``None`` = that operand stays float).

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional
Neural Networks", ECCV 2016; Courbariaux et al., "Binarized Neural Networks",
NeurIPS 2016. Larq's ``QuantDense`` / ``QuantConv2D`` have the same interface.
Deviation: zero padding of a binary conv pads with 0, not with -1/+1, so border
outputs see a ternary input (Larq's ``pad_values=0.0`` default does the same).

Exact eval mode (``exact_eval``, off by default; :func:`set_exact_eval`). When
the input quantizer is a sign (``forward_is_sign``, or ``stochastic_sign`` in eval
mode, which is deterministic there) and the weight quantizer is a scaled sign,
q_w(W) = alpha * sign(W) (``xnor_weight``, ``magnitude_aware_sign``, or a sign
quantizer with alpha = 1), a layer with ``exact_eval = True`` in eval mode computes

    y = op(q_x(x), sign(W)) * alpha + b,

the same function in an order that makes it exact: the accumulation sums
products in {-1, 0, +1}, which float32 holds exactly whatever the summation order
(|sum| < 2^24), and alpha is applied once. So every backend (oneDNN, ONNX
Runtime, the bit-packed kernels of ``lowbit.deploy``) gets the same integer and
the same scaled output bit for bit; ``lowbit.deploy``'s packed model reproduces
an exact-eval model's logits exactly. The default form op(q_x(x), alpha * sign(W))
sums float32 multiples of alpha, whose rounding depends on the backend's
summation order; it stays the default because graph analyses
(``lowbit.estimators.GraphObjective``) pattern-match it and compare against it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.latent import check_weight_clip, clip_latent_weight_
from lowbit.nn.spec import QuantizerSpec, fresh_quantizer
from lowbit.quant import MagnitudeAwareSign, StochasticSign, XNORWeight, sign_ste


def is_sign_quantizer(quantizer: Optional[nn.Module]) -> bool:
    """Whether ``quantizer`` maps its input to sign(x) in {-1, +1} (sign(0) = +1) in its current mode.

    True for the sign family (``forward_is_sign``) and for ``stochastic_sign`` in
    eval mode, which binarises deterministically there.
    """
    if quantizer is None:
        return False
    if getattr(quantizer, "forward_is_sign", False):
        return True
    return isinstance(quantizer, StochasticSign) and not quantizer.training


def binary_weight_parts(
    quantizer: Optional[nn.Module], weight: torch.Tensor, ndim: Optional[int] = None
) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(sign(W), alpha) with ``quantizer(W) == sign(W) * alpha`` for scaled-sign weight quantizers, else None.

    alpha is mean|W| over every dim but the output channel, shape (C_out, 1, ..., 1)
    (0-d for ``xnor_weight(per_channel=False)``), as ``lowbit.quant.mean_abs``
    computes it; None (= 1) for a plain sign quantizer. Both parts carry the
    quantizer's own gradient: the product is ``quantizer(W)``'s autograd graph,
    factored. ``ndim`` (default ``weight.dim()``) lets ``torch.fx`` trace this with
    a symbolic weight.
    """
    ndim = weight.dim() if ndim is None else ndim
    channel_dims = tuple(range(1, ndim))
    if isinstance(quantizer, XNORWeight):
        alpha = weight.abs().mean(dim=channel_dims, keepdim=True) if quantizer.per_channel else weight.abs().mean()
        return sign_ste(weight, "ste"), alpha
    if isinstance(quantizer, MagnitudeAwareSign):
        alpha = weight.abs().mean(dim=channel_dims, keepdim=True).detach()
        return sign_ste(weight, "ste_clipped", clip=quantizer.clip), alpha
    if is_sign_quantizer(quantizer):
        return quantizer(weight), None
    return None


class QuantizedWeightLayer:
    """Mixin for a Linear/Conv2d whose input and weight pass through quantizers.

    Holds the two quantizer submodules and the two quantization steps; the
    concrete layer's ``forward`` applies its float op to
    ``quantize_input(x)`` and ``quantized_weight()``. ``lowbit.models.summary``
    recognises any module with these two attributes as a quantized layer.
    """

    input_quantizer: Optional[nn.Module]
    weight_quantizer: Optional[nn.Module]
    exact_eval: bool = False  # see the module docstring; set per layer or with set_exact_eval(model)
    # Larq's weight_clip constraint: after each optimizer step the training loop (or the user) calls
    # clip_latent_weights_(), which clamps the latent weight to [-weight_clip, weight_clip]; None: no clipping.
    weight_clip: Optional[float] = None

    def _set_quantizers(self, input_quantizer: QuantizerSpec, weight_quantizer: QuantizerSpec) -> None:
        # register_module accepts None, so the slot is a submodule either way
        # and can be reassigned to a module later.
        self.register_module("input_quantizer", fresh_quantizer(input_quantizer))  # type: ignore[attr-defined]
        self.register_module("weight_quantizer", fresh_quantizer(weight_quantizer))  # type: ignore[attr-defined]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        return weight if self.weight_quantizer is None else self.weight_quantizer(weight)

    def exact_eval_parts(self, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(sign(W), alpha) when this layer runs the exact eval path (module docstring), else None.

        Under ``torch.fx`` symbolic tracing (``x`` a Proxy) the layer keeps the one-op
        form op(q_x(x), q_w(W)), the graph that ``lowbit.estimators.GraphObjective``
        pattern-matches; it is the same function.
        """
        if not self.exact_eval or self.training or isinstance(x, torch.fx.Proxy):  # type: ignore[attr-defined]
            return None
        if not is_sign_quantizer(self.input_quantizer):
            return None
        ndim = 4 if isinstance(self, nn.Conv2d) else 2
        return binary_weight_parts(self.weight_quantizer, self.weight, ndim)  # type: ignore[attr-defined]


    def clip_latent_weights_(self) -> None:
        """Clamp the latent weight in place to [-weight_clip, weight_clip] (see :mod:`lowbit.nn.latent`)."""
        clip_latent_weight_(self)


def set_exact_eval(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the exact eval form (module docstring) on or off in every binary layer of ``model``; returns it.

    Layers whose quantizers do not allow it (float inputs, k-bit weights) ignore the flag.
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    for module in model.modules():
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            module.exact_eval = enabled
    return model


class BinaryLinear(QuantizedWeightLayer, nn.Linear):
    """y = q_w(W) q_x(x) + b, x: (..., in_features) -> y: (..., out_features).

    ``input_quantizer`` / ``weight_quantizer`` are quantizer specs (a registry
    name, a dict ``{"name": ..., **params}``, a module, or None for float).
    Bias defaults to False, as in XNOR-Net (a BatchNorm usually follows).
    ``weight_clip`` (> 0 or None) is Larq's ``weight_clip`` constraint on the latent weight.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        input_quantizer: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "xnor_weight",
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        weight_clip: Optional[float] = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._set_quantizers(input_quantizer, weight_quantizer)
        self.weight_clip = check_weight_clip(weight_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = self.exact_eval_parts(x)
        if exact is None:
            return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)
        signs, alpha = exact
        y = F.linear(self.quantize_input(x), signs)  # (..., out): integers, exact in float32
        if alpha is not None:
            y = y * alpha.reshape(-1)  # (out,) or 0-d
        return y if self.bias is None else y + self.bias


class BinaryConv2d(QuantizedWeightLayer, nn.Conv2d):
    """y = conv2d(q_x(x), q_w(W)) + b, x: (N, C_in, H, W) -> y: (N, C_out, H', W').

    Same arguments as ``nn.Conv2d`` plus the two quantizer specs; bias
    defaults to False. See the module docstring for the zero-padding caveat.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        input_quantizer: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "xnor_weight",
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        weight_clip: Optional[float] = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._set_quantizers(input_quantizer, weight_quantizer)
        self.weight_clip = check_weight_clip(weight_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = self.exact_eval_parts(x)
        if exact is None:
            return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)
        signs, alpha = exact
        y = self._conv_forward(self.quantize_input(x), signs, None)  # (N, C_out, H', W'): integers, exact
        if alpha is not None:
            y = y * alpha.reshape(1, -1, 1, 1)  # (C_out,1,1,1) or 0-d -> broadcast over (N, C_out, H', W')
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "QuantizedWeightLayer",
    "binary_weight_parts",
    "is_sign_quantizer",
    "set_exact_eval",
]
