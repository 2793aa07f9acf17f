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

from lowbit.models.binary_blocks import batch_norm, declare_input, downsample_shortcut, zoo_options
from lowbit.models.layers import check_width
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import BinaryConv2d, QuantizerSpec

BN_MOMENTUM, BN_EPS = 0.9, 1e-5
SIGN_125 = {"name": "ste_clipped", "clip": 1.25}


class ResNetEBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride): BN(BinConv3x3(q_a(x))) + shortcut(x)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec
    ) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            in_channels, out_channels, 3, stride, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.bn = batch_norm(out_channels, BN_MOMENTUM, BN_EPS)
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else downsample_shortcut(in_channels, out_channels, BN_MOMENTUM, BN_EPS)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


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
        width = check_width(width)
        zoo_options("binary_resnet_e18", stem, act, weight_quantizer)
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),  # (N, w, S/2, S/2)
                batch_norm(width, BN_MOMENTUM, BN_EPS),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),  # (N, w, S/4, S/4)
                batch_norm(width, BN_MOMENTUM, BN_EPS),
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False))
        declare_input(self, in_channels, stem)
        blocks, channels = [], width
        for stage in range(4):
            out_channels = width * 2**stage
            for i in range(4):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResNetEBlock(channels, out_channels, stride, act, weight_quantizer))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_act(self.blocks(self.stem(x)))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 8w) -> (N, classes)


binary_resnet_e18 = register_width_entry(
    "binary_resnet_e18",
    BinaryResNetE18,
    'Binary ResNetE-18; ``stem`` "imagenet" (224x224) or "small" (32x32, 28x28); ``width`` = first-stage channels.',
    default_width=64,
    default_act=SIGN_125,
    default_weight_quantizer=SIGN_125,
)


__all__ = ["BinaryResNetE18", "ResNetEBlock", "binary_resnet_e18"]
