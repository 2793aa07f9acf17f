"""Bi-Real Net-18: one binary 3x3 conv per residual block, real-valued shortcuts around every one.

    stem "imagenet": conv7x7/2 (w) -> BN -> maxpool 3x3/2           224 -> 56   float
    stem "small":    conv3x3 (w) -> BN                              32 -> 32    float
    16 blocks:       w x4, 2w x4, 4w x4, 8w x4 (the first of each later stage stride 2)
    head:            global average pool -> linear(8w -> classes, bias)          float

Block (Liu et al.'s Fig. 2, "Bi-Real" connection)::

    out = BN( BinConv3x3(stride)( q_a(x) ) ) + shortcut(x)

with q_a = ``act`` (``approx_sign`` by default: sign forward, Bi-Real's
piecewise-quadratic derivative 2 - 2|x| on [-1, 1] backward) as the conv's input
quantizer and ``magnitude_aware_sign`` weights (sign(W) times the mean |W| of
the output channel, scale not differentiated, clipped straight-through
gradient). shortcut = identity, or where the shape changes
:func:`~lowbit.models.binary_blocks.downsample_shortcut` (2x2 average pool ->
float 1x1 conv -> BN). There is no other nonlinearity: the sign is it, and the
shortcut carries the real-valued signal past every binary conv.

BatchNorms as in the Keras reference (momentum 0.8, epsilon 1e-3). With w = 64,
1000 classes, ImageNet stem: 10,985,472 binary weights and 11,689,512
parameters (larq-zoo ``BiRealNet``; figures and sources in docs/models.md).
Deviation from larq-zoo: no weight-clip constraint (the optimizer's job in
lowbit), symmetric padding (see :mod:`lowbit.models.binary_blocks`).

Liu, Wu, Luo, Yang, Liu & Cheng, "Bi-Real Net: Enhancing the Performance of
1-bit CNNs with Improved Representational Capability and Advanced Training
Algorithm", ECCV 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import (
    BinaryConvResidual,
    batch_norm,
    bireal_channels,
    declare_input,
    resnet_stem,
    width_options,
)
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import QuantizerSpec

BN_MOMENTUM = 0.8  # Keras momentum of the reference implementation (PyTorch 0.2)


class BiRealBlock(BinaryConvResidual):
    """(N, in, H, W) -> (N, out, H/stride, W/stride): BN(BinConv3x3(q_a(x))) + shortcut(x)."""

    def __init__(self, in_channels: int, out_channels: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec):
        stride = 1 if in_channels == out_channels else 2
        super().__init__(in_channels, out_channels, stride, act, weight_quantizer, BN_MOMENTUM)


class BiRealNet18(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        act: QuantizerSpec = "approx_sign",
        weight_quantizer: QuantizerSpec = "magnitude_aware_sign",
    ) -> None:
        super().__init__()
        width = width_options("birealnet18", stem, width, act, weight_quantizer)
        self.stem = resnet_stem(stem, in_channels, width, lambda: [batch_norm(width, BN_MOMENTUM)])
        declare_input(self, in_channels, stem)  # 32x in all: the stem's 4x (or 1x), then three stride-2 stages
        channels = bireal_channels(width)
        self.blocks = nn.Sequential(  # (N, 8w, S/32, S/32) with the ImageNet stem
            *(BiRealBlock(cin, cout, act, weight_quantizer) for cin, cout in channels)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)  # the last stage's channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 8w) -> (N, classes)


birealnet18 = register_width_entry(
    "birealnet18",
    BiRealNet18,
    'Bi-Real Net-18; ``stem`` "imagenet" (224x224) or "small" (32x32, 28x28); ``width`` = first-stage channels.',
)


__all__ = ["BiRealBlock", "BiRealNet18", "birealnet18"]
