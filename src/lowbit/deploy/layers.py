"""Inference-only binary layers on packed bits: the modules a packed model is made of.

:class:`PackedBinaryConv2d` / :class:`PackedBinaryLinear` compute exactly what a
``lowbit.nn`` binary layer computes in its exact eval form,

    y = op(sign(x), sign(W)) * alpha + b,

from bits: the input arrives as float (its signs are packed here: x >= 0, as
``hard_sign``) or already packed by the previous layer; the weights are stored
packed, 64 signs per int64 word (1/32 of float32); windows are gathered as words
(``im2col``), the accumulator is K - 2 popcount(x XOR w) (plus the padding
correction), and the output is either float (alpha d + b) or, when the layer
feeds a sign through an optional BatchNorm, bits again (``fold.sign_thresholds``).

Tensors between packed layers: (N, H, W, G, Wg) int64 words, G the channel groups
of the consumer (a linear layer's input is (N, 1, 1, 1, Wg)).

The kernels are called through ``lowbit.deploy.ops``: directly in eager mode, as the
torch custom ops ``lowbit::pack_signs`` / ``lowbit::binary_layer`` while torch.export,
torch.compile or torch.jit.trace records the forward.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from lowbit.deploy import ops
from lowbit.deploy.bits import pack_bits
from lowbit.deploy.fold import sign_thresholds
from lowbit.deploy.im2col import conv_output_size, padding_correction
from lowbit.nn.binary import BinaryConv2d, BinaryLinear, binary_weight_parts

_PANEL_COLUMNS = 32  # the C++ GEMM reads the transposed weights in panels of 32 output channels


def _pair(value: Any) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_padding(layer: nn.Conv2d) -> Tuple[int, int]:
    """A conv's padding as two ints ('valid' -> 0; 'same' -> symmetric where it exists; else ValueError)."""
    padding = layer.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [layer.dilation[i] * (layer.kernel_size[i] - 1) for i in range(2)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even dilated kernel pads asymmetrically")
        return (total[0] // 2, total[1] // 2)
    return _pair(padding)


def _weight_parts(layer: nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(sign(W), alpha) of a binary layer, detached; ValueError if its weights are not a scaled sign."""
    parts = binary_weight_parts(layer.weight_quantizer, layer.weight.detach())
    if parts is None:
        raise ValueError(f"weight quantizer {layer.weight_quantizer!r} is not a scaled sign")
    signs, alpha = parts
    return signs.detach(), None if alpha is None else alpha.detach()


class _PackedBinaryLayer(nn.Module):
    """The weight, scale and output stage shared by the packed conv and linear layers.

    Buffers (the packed format's state dict): ``weight_words`` (C_out, Kw) int64,
    the packed signs of each output channel's K = C_in/G k_h k_w weights in
    (tap, word) order, Kw = k_h k_w ceil(C_in/G / 64); ``alpha`` (C_out,) float32;
    ``bias`` (C_out,) float32 when the layer has one; ``tap_sums`` (C_out, k_h, k_w)
    int32 (the padding correction's table; convs with padding only); and for bits
    output ``out_sign`` / ``out_threshold`` (C_out,) int32.
    """

    def _init_stage(
        self,
        layer: nn.Module,
        signs: torch.Tensor,  # (C_out, C_in/G, k_h, k_w) float +-1 (a linear: (C_out, C_in, 1, 1))
        alpha: Optional[torch.Tensor],
        groups: int,
        input_is_bits: bool,
        out_bn: Optional[nn.Module],
        out_groups: Optional[int],
    ) -> None:
        c_out, per_group, kh, kw = signs.shape
        self.groups, self.input_is_bits = groups, input_is_bits
        self.out_channels, self.k = c_out, per_group * kh * kw
        self.output_bits = out_groups is not None
        self.out_groups = out_groups
        bits = (signs > 0).permute(0, 2, 3, 1)  # (C_out, k_h, k_w, C_in/G): the im2col order
        self.register_buffer("weight_words", pack_bits(bits).reshape(c_out, -1).contiguous())  # (C_out, Kw)
        scale = torch.ones(c_out) if alpha is None else alpha.detach().reshape(-1).expand(c_out)
        self.register_buffer("alpha", scale.to(torch.float32).contiguous())
        bias = getattr(layer, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).reshape(-1).contiguous())
        if self.output_bits:
            s, t = sign_thresholds(self.alpha, self.bias, out_bn, self.k, spatial=isinstance(self, PackedBinaryConv2d))
            self.register_buffer("out_sign", s)
            self.register_buffer("out_threshold", t)
        # Derived from weight_words, so not in the state dict; a buffer (not a cache filled at the first
        # call) so that torch.export and torch.compile see a module buffer, never a tensor made while tracing.
        self.register_buffer("weight_panel", self._make_panel(), persistent=False)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.weight_panel = self._make_panel()  # from the loaded weight_words

    def _make_panel(self) -> torch.Tensor:
        c_per_group = self.out_channels // self.groups
        padded = -(-c_per_group // _PANEL_COLUMNS) * _PANEL_COLUMNS
        words = self.weight_words.reshape(self.groups, c_per_group, -1).transpose(1, 2)  # (G, Kw, C/G)
        return torch.nn.functional.pad(words, (0, padded - c_per_group)).contiguous()  # (G, Kw, Np)

    def panel(self) -> torch.Tensor:
        """(G, Kw, Np) int64: weight_words per group, transposed, columns zero-padded to a multiple of 32."""
        return self._buffers["weight_panel"]  # not self.weight_panel: nn.Module.__getattr__ costs 0.5 us a call

    def _run(self, bits: torch.Tensor, geometry: Sequence[int], correction: Optional[torch.Tensor]) -> torch.Tensor:
        """Bits (N, H, W, G, Wg) -> float (N, C_out, H', W') or bits (N, H', W', G', Wg')."""
        n = self.out_channels // self.groups
        if self.output_bits:
            return ops.binary_layer(
                bits, self.panel(), n, geometry, self.k, correction,
                sign=self.out_sign, threshold=self.out_threshold, out_groups=self.out_groups,
            )
        return ops.binary_layer(bits, self.panel(), n, geometry, self.k, correction, alpha=self.alpha, bias=self.bias)

    @property
    def custom_ops(self) -> Tuple[str, ...]:
        """The torch custom ops this layer calls (``lowbit.deploy.ops``): what a graph of it contains."""
        return ("lowbit::binary_layer",) if self.input_is_bits else ("lowbit::pack_signs", "lowbit::binary_layer")

    def packed_bytes(self) -> Dict[str, int]:
        """Bytes of the packed weights and of the per-channel extras (scale, bias, thresholds, padding table)."""
        extras = sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name not in ("weight_words", "weight_panel"))
        return {"weights": self.weight_words.numel() * 8, "extras": extras}


class PackedBinaryConv2d(_PackedBinaryLayer):
    """A packed :class:`lowbit.nn.BinaryConv2d` (sign inputs, scaled-sign weights, zero padding).

    ``input_is_bits``: the input is packed (N, H, W, G, Wg) words from the previous
    layer, else a float (N, C, H, W) tensor whose signs are packed here.
    ``out_bn`` / ``out_groups``: emit bits for a consumer with ``out_groups`` channel
    groups, after ``out_bn`` (an eval-mode BatchNorm2d, or None); else float output.
    """

    def __init__(
        self,
        layer: BinaryConv2d,
        input_is_bits: bool = False,
        out_bn: Optional[nn.Module] = None,
        out_groups: Optional[int] = None,
    ) -> None:
        super().__init__()
        signs, alpha = _weight_parts(layer)
        self.in_channels = layer.in_channels
        self.kernel_size, self.stride, self.dilation = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
        self.padding = conv_padding(layer)
        self._init_stage(layer, signs, alpha, layer.groups, input_is_bits, out_bn, out_groups)
        if self.padding != (0, 0):
            self.register_buffer("tap_sums", signs.sum(dim=1).round().to(torch.int32))  # (C_out, k_h, k_w)
        self._geometry = [*self.kernel_size, *self.stride, *self.padding, *self.dilation]
        self._corrections: Dict[Tuple[int, int], Optional[torch.Tensor]] = {}  # per input size, checked once

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._corrections = {}

    def correction(self, size: Tuple[int, int]) -> Optional[torch.Tensor]:
        """(H' W', C_out) int32 padding correction for input size ``size`` (cached), None without padding.

        The first call for a size also checks that the conv window fits the input.
        """
        size = (int(size[0]), int(size[1]))  # plain ints (torch.jit.trace gives 0-d tensors: the size is fixed there)
        if size in self._corrections:
            return self._corrections[size]
        if min(conv_output_size(size, self.kernel_size, self.stride, self.padding, self.dilation)) <= 0:
            raise ValueError(f"input {size[0]}x{size[1]} is smaller than the conv window of {self.extra_repr()}")
        table = None if self.padding == (0, 0) else padding_correction(
            self.tap_sums, size, self.groups, self.kernel_size, self.stride, self.padding, self.dilation
        )
        if table is None or ops.concrete(table):  # a table computed on fake tensors (torch.export) is not kept
            self._corrections[size] = table
        return table

    # No torch.no_grad(): the kernels record no autograd graph (their inputs are bits and buffers), and the
    # context manager would cost a tenth of a small layer's time.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_is_bits:
            bits = x  # (N, H, W, G, Wg)
        else:
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
            bits = ops.pack_signs(x, self.groups)
        return self._run(bits, self._geometry, self.correction((bits.shape[1], bits.shape[2])))

    def extra_repr(self) -> str:
        out = f"bits, {self.out_groups} group(s)" if self.output_bits else "float"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"input={'bits' if self.input_is_bits else 'float'}, output={out}"
        )


class PackedBinaryLinear(_PackedBinaryLayer):
    """A packed :class:`lowbit.nn.BinaryLinear`; float input (..., C_in) or bits (N, 1, 1, 1, Wg)."""

    def __init__(
        self,
        layer: BinaryLinear,
        input_is_bits: bool = False,
        out_bn: Optional[nn.Module] = None,
        out_groups: Optional[int] = None,
    ) -> None:
        super().__init__()
        signs, alpha = _weight_parts(layer)
        self.in_features = layer.in_features
        self._init_stage(layer, signs[:, :, None, None], alpha, 1, input_is_bits, out_bn, out_groups)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_is_bits:
            leading: Tuple[int, ...] = (x.shape[0],)
            bits = x  # (N, 1, 1, 1, Wg)
        else:
            if x.shape[-1] != self.in_features:
                raise ValueError(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
            leading = tuple(x.shape[:-1])
            flat = x.reshape(-1, self.in_features, 1, 1)  # (N, C_in, 1, 1)
            bits = ops.pack_signs(flat, 1)
        out = self._run(bits, (1, 1, 1, 1, 0, 0, 1, 1), None)
        if self.output_bits:
            return out  # (N, 1, 1, G', Wg')
        return out.reshape(*leading, self.out_channels)

    def extra_repr(self) -> str:
        out = f"bits, {self.out_groups} group(s)" if self.output_bits else "float"
        return (
            f"in_features={self.in_features}, out_features={self.out_channels}, "
            f"input={'bits' if self.input_is_bits else 'float'}, output={out}"
        )


__all__ = ["PackedBinaryConv2d", "PackedBinaryLinear", "conv_padding"]
