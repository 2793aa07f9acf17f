"""Binary ResNetE-18: ResNet-18 with a shortcut around every single binary conv (Bethge et al. 2019).

    stem "imagenet": conv7x7/2 (w) -> BN -> ReLU -> maxpool 3x3/2 -> BN      224 -> 56   float
    stem "small":    conv3x3 (w)                                              32 -> 32    float
    16 blocks:       w x4, 2w x4, 4w x4, 8w x4 (the first of each later stage stride 2)
    head:            ReLU -> global average pool -> linear(8w -> classes, bias)         float

Block ("E" for the extra shortcuts: ResNet-18's 8 two-conv blocks become 16
one-conv blocks, as in Bi-Real Net)::

    out = BN( BinConv3x3(stride)( q_a(x) ) ) + shortcut(x)

q_a and the weights are signs with a straight-through gradient clipped at
|x| <= 1.25 (``ste_clipped`` with clip 1.25, Larq's ``SteSign(clip_value=1.25)``),
no scaling factor. shortcut = identity, or 2x2 average pool -> float 1x1 conv
-> BN where the shape changes. BatchNorm momentum 0.9, epsilon 1e-5. The small
stem is the reference implementation's own for inputs under 50 pixels (one
3x3 conv, no BN, no pooling).

With w = 64, 1000 classes, ImageNet stem: 10,985,472 binary weights, 11,689,640
parameters (larq-zoo ``BinaryResNetE18``; docs/models.md).

Bethge, Yang, Bornstein & Meinel, "Back to Simplicity: How to Train Accurate
BNNs from Scratch?", arXiv:1906.08637, 2019.
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

BN_MOMENTUM, BN_EPS = 0.9, 1e-5
SIGN_125 = {"name": "ste_clipped", "clip": 1.25}


class ResNetEBlock(BinaryConvResidual):
    """(N, in, H, W) -> (N, out, H/stride, W/stride): BN(BinConv3x3(q_a(x))) + shortcut(x)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec
    ) -> None:
        super().__init__(in_channels, out_channels, stride, act, weight_quantizer, BN_MOMENTUM, BN_EPS)


class BinaryResNetE18(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        act: QuantizerSpec = SIGN_125,
        weight_quantizer: QuantizerSpec = SIGN_125,
    ) -> None:
        super().__init__()
        width = width_options("binary_resnet_e18", stem, width, act, weight_quantizer)

        def bn() -> nn.Module:
            return batch_norm(width, BN_MOMENTUM, BN_EPS)

        # The small stem is a bare conv (the reference's own for inputs under 50 pixels).
        self.stem = resnet_stem(
            stem, in_channels, width, lambda: [bn(), nn.ReLU()], small_norm_act=False, after_pool=lambda: [bn()]
        )
        declare_input(self, in_channels, stem)
        channels = bireal_channels(width)  # stride 2 where the channels double
        self.blocks = nn.Sequential(
            *(ResNetEBlock(cin, cout, 1 if cin == cout else 2, act, weight_quantizer) for cin, cout in channels)
        )
        self.head_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)  # the last stage's channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_act(self.blocks(self.stem(x)))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 8w) -> (N, classes)


binary_resnet_e18 = register_width_entry(
    "binary_resnet_e18",
    BinaryResNetE18,
    'Binary ResNetE-18; ``stem`` "imagenet" (224x224) or "small" (32x32, 28x28); ``width`` = first-stage channels.',
)


__all__ = ["BinaryResNetE18", "ResNetEBlock", "binary_resnet_e18"]
