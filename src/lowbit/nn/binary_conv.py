"""Binary Conv1d and ConvTranspose2d: the same XNOR layer as :class:`lowbit.nn.BinaryConv2d`, other ops.

    BinaryConv1d:           y = conv1d(q_x(x), q_w(W)) + b,            x: (N, C_in, L)
    BinaryConvTranspose2d:  y = conv_transpose2d(q_x(x), q_w(W)) + b,  x: (N, C_in, H, W)

As Larq's ``QuantConv1D`` / ``QuantConv2DTranspose``. Defaults as the other
binary layers: ``ste_clipped`` inputs, ``xnor_weight`` weights, no bias.

A transposed convolution stores its weight as (C_in, C_out / groups, kh, kw),
with the *input* channel first. The weight quantizer is applied in the
(C_out, C_in / groups, kh, kw) layout of an ordinary convolution, so that
per-channel scales (``xnor_weight``: alpha = mean |W| per dim-0 entry) are per
*output* channel here too, as in the other binary layers.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.binary import QuantizedWeightLayer
from lowbit.nn.latent import check_weight_clip
from lowbit.nn.spec import QuantizerSpec


class BinaryConv1d(QuantizedWeightLayer, nn.Conv1d):
    """y = conv1d(q_x(x), q_w(W)) + b, (N, C_in, L) -> (N, C_out, L'); ``nn.Conv1d``'s arguments plus the quantizers."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] | str = 0,
        dilation: int | tuple[int] = 1,
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


class BinaryConvTranspose2d(QuantizedWeightLayer, nn.ConvTranspose2d):
    """y = conv_transpose2d(q_x(x), q_w(W)) + b; ``nn.ConvTranspose2d``'s arguments plus the quantizers.

    The weight quantizer sees W in the (C_out, C_in / groups, kh, kw) layout (module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = False,
        dilation: int | tuple[int, int] = 1,
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
            output_padding=output_padding,
            groups=groups,
            bias=bias,
            dilation=dilation,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._set_quantizers(input_quantizer, weight_quantizer)
        self.weight_clip = check_weight_clip(weight_clip)

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_quantizer is None:
            return self.weight
        g = self.groups
        c_in, c_out_g, kh, kw = self.weight.shape  # (C_in, C_out / g, kh, kw)
        # (g, C_in/g, C_out/g, kh, kw) -> (g, C_out/g, C_in/g, kh, kw) -> (C_out, C_in/g, kh, kw): conv layout
        conv_layout = self.weight.reshape(g, c_in // g, c_out_g, kh, kw).transpose(1, 2).reshape(g * c_out_g, c_in // g, kh, kw)
        q = self.weight_quantizer(conv_layout)
        # and back to (C_in, C_out / g, kh, kw)
        return q.reshape(g, c_out_g, c_in // g, kh, kw).transpose(1, 2).reshape(c_in, c_out_g, kh, kw)

    def forward(self, x: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("only 'zeros' padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation  # type: ignore[arg-type]
        )
        return F.conv_transpose2d(
            self.quantize_input(x),
            self.quantized_weight(),
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )


__all__ = ["BinaryConv1d", "BinaryConvTranspose2d"]
