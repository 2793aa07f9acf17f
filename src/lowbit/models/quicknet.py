"""QuickNet, QuickNetSmall and QuickNetLarge: binary ResNets designed for Larq Compute Engine's speed.

    stem "imagenet": conv3x3/2 (c0/4) -> BN -> ReLU -> depthwise3x3/2 -> BN* -> conv1x1 (c0) -> BN   224 -> 56
    stem "small":    the same with stride 1 (32 -> 32)
    4 sections of residual blocks, channels c = (c0, c1, c2, c3), a transition before each change
    head:            ReLU -> global average pool -> linear(c3 -> classes, bias)

(BN* has neither scale nor offset.) Residual block::

    out = BN( ReLU( BinConv3x3(q_a(x)) ) ) + x

with q_a and the weights signs with the straight-through gradient clipped at
|x| <= 1.25 (``ste_clipped``, clip 1.25; Larq's ``SteSign(1.25)``) and the
conv's border padded with +1 (:class:`~lowbit.models.binary_blocks.OnePaddedBinaryConv2d`),
so it is an exact XNOR-popcount. Transition (channels change, size halves)::

    x -> ReLU -> maxpool 2x2 (stride 1) -> fixed blur depthwise3x3/2 -> float conv1x1 -> BN

The blur is a frozen binomial filter (anti-aliased downsampling, Zhang 2019):
a parameter with ``requires_grad=False``, as in the reference's non-trainable
layer, so it is counted but never updated.

Variants (blocks per section; channels): ``quicknet`` (4, 4, 4, 4; 64, 128, 256,
512), ``quicknet_small`` (4, 4, 4, 4; 32, 64, 256, 512), ``quicknet_large``
(6, 8, 12, 6; 64, 128, 256, 512). ``width`` scales every channel count by
width / 64. Residual BatchNorms: momentum 0.9, epsilon 1e-5; the stem's Keras
defaults (0.99, 1e-3). Counts at 224x224, 1000 classes: docs/models.md
(larq-zoo ``sota.QuickNet*`` v1.0).

Bannink, Hillier, Geiger, de Bruin, Overweel, Neeven & Helwegen, "Larq Compute
Engine: Design, Benchmark and Deploy State-of-the-Art Binarized Neural
Networks", MLSys 2021.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.binary_blocks import (
    OnePaddedBinaryConv2d,
    batch_norm,
    blur_kernel,
    declare_input,
    scaled,
    zoo_options,
)
from lowbit.models.layers import check_width
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import QuantizerSpec

BN_MOMENTUM, BN_EPS = 0.9, 1e-5
SIGN_125 = {"name": "ste_clipped", "clip": 1.25}
VARIANTS = {
    "quicknet_small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "quicknet": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "quicknet_large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}


class QuickNetResidual(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): BN(ReLU(BinConv3x3(q_a(x)))) + x, one-padded."""

    def __init__(self, channels: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec) -> None:
        super().__init__()
        self.conv = OnePaddedBinaryConv2d(
            channels, channels, 3, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.bn = batch_norm(channels, BN_MOMENTUM, BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x))) + x


class BlurPool(nn.Module):
    """(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)): a fixed 3x3 binomial filter, stride 2, per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
        self.conv.weight = nn.Parameter(blur_kernel(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class QuickNetTransition(nn.Module):
    """(N, in, H, W) -> (N, out, ceil((H-1)/2), ...): ReLU -> maxpool 2/1 -> blur /2 -> conv1x1 -> BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.blur = BlurPool(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = batch_norm(out_channels, BN_MOMENTUM, BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(x), 2, stride=1)  # (N, in, H - 1, W - 1)
        return self.bn(self.conv(self.blur(x)))


class QuickNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        section_blocks: Sequence[int],
        section_channels: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        act: QuantizerSpec = SIGN_125,
        weight_quantizer: QuantizerSpec = SIGN_125,
        name: str = "quicknet",
    ) -> None:
        super().__init__()
        zoo_options(name, stem, act, weight_quantizer)
        c0 = section_channels[0]
        stride = 2 if stem == "imagenet" else 1
        quarter = max(1, c0 // 4)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, quarter, 3, stride=stride, padding=1, bias=False),  # (N, c0/4, S/2, S/2)
            batch_norm(quarter),
            nn.ReLU(),
            nn.Conv2d(quarter, quarter, 3, stride=stride, padding=1, groups=quarter, bias=False),  # (N, c0/4, S/4, S/4)
            batch_norm(quarter, scale=False, center=False),
            nn.Conv2d(quarter, c0, 1, bias=False),
            batch_norm(c0),
        )
        declare_input(self, in_channels, stem)
        layers, channels = [], c0
        for blocks, out_channels in zip(section_blocks, section_channels):
            for _ in range(blocks):
                if out_channels != channels:
                    layers.append(QuickNetTransition(channels, out_channels))
                    channels = out_channels
                layers.append(QuickNetResidual(channels, act, weight_quantizer))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.body(self.stem(x)))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, c3) -> (N, classes)


def _quicknet(variant: str, num_classes: int, in_channels: int, width: int, stem: str, act, weight_quantizer):
    blocks, channels = VARIANTS[variant]
    width = check_width(width)
    channels = tuple(scaled(c, width / 64) for c in channels)
    return QuickNet(blocks, channels, num_classes, in_channels, stem, act, weight_quantizer, name=variant)


def _quicknet_entry(variant: str, doc: str):
    return register_width_entry(
        variant,
        QuickNet,
        doc,
        default_width=64,
        build=functools.partial(_quicknet, variant),
    )


quicknet = _quicknet_entry("quicknet", "QuickNet (channels 64, 128, 256, 512 times width / 64; 4 blocks per section).")
quicknet_small = _quicknet_entry(
    "quicknet_small", "QuickNetSmall (channels 32, 64, 256, 512 times width / 64; 4 blocks per section)."
)
quicknet_large = _quicknet_entry(
    "quicknet_large", "QuickNetLarge (channels 64, 128, 256, 512 times width / 64; 6, 8, 12, 6 blocks)."
)


__all__ = [
    "BlurPool",
    "QuickNet",
    "QuickNetResidual",
    "QuickNetTransition",
    "quicknet",
    "quicknet_large",
    "quicknet_small",
]
