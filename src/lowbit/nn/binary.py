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
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.latent import check_weight_clip, clip_latent_weight_
from lowbit.nn.spec import QuantizerSpec, fresh_quantizer


class QuantizedWeightLayer:
    """Mixin for a Linear/Conv2d whose input and weight pass through quantizers.

    Holds the two quantizer submodules and the two quantization steps; the
    concrete layer's ``forward`` applies its float op to
    ``quantize_input(x)`` and ``quantized_weight()``. ``lowbit.models.summary``
    recognises any module with these two attributes as a quantized layer.
    """

    input_quantizer: Optional[nn.Module]
    weight_quantizer: Optional[nn.Module]
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

    def clip_latent_weights_(self) -> None:
        """Clamp the latent weight in place to [-weight_clip, weight_clip] (see :mod:`lowbit.nn.latent`)."""
        clip_latent_weight_(self)


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
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


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
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


__all__ = ["BinaryConv2d", "BinaryLinear", "QuantizedWeightLayer"]
