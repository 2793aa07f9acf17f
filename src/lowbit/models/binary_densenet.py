"""BinaryDenseNet-28, -37 and -45: dense blocks of binary 3x3 convs, real-valued transitions.

    stem "imagenet": conv7x7/2 (w) -> BN -> ReLU -> maxpool 3x3/2              224 -> 56   float
    stem "small":    conv3x3 (w)                                                32 -> 32    float
    4 dense blocks of n_b layers; between blocks a transition
    head:            BN -> ReLU -> global average pool -> linear(c -> classes, bias)      float

Dense layer (growth rate g = ``width``; the input keeps all its channels)::

    x <- concat(x, BinConv3x3(q_a(BN(x))))          (N, c, H, W) -> (N, c + g, H, W)

Transition (after blocks 1-3; real-valued, as in the paper, to keep information
through the downsampling)::

    x -> BN -> maxpool 2x2/2 -> ReLU -> float conv1x1 (c' channels)
    c' = round(floor(c / r_b) / q) * q,  q = 32 (w / 2 in general): c / r_b rounded to a multiple of 32

q_a and the weights: signs with the straight-through gradient clipped at
|x| <= 1.3 (``ste_clipped`` clip 1.3; Larq's ``SteSign(1.3)``), no weight scale.
BatchNorm momentum 0.9, epsilon 1e-5.

Variants (layers per block; reduction r): 28 (6, 6, 6, 5; 2.7, 2.7, 2.2),
37 (6, 8, 12, 6; 3.3, 3.3, 4), 45 (6, 12, 14, 8; 2.7, 3.3, 4), w = 64. The
small stem is the reference implementation's own for inputs under 50 pixels.
Counts at 224x224, 1000 classes: docs/models.md (larq-zoo ``BinaryDenseNet*``).

Bethge, Yang, Bornstein & Meinel, "Back to Simplicity: How to Train Accurate
BNNs from Scratch?", arXiv:1906.08637, 2019 (BinaryDenseNet).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from lowbit.models.binary_blocks import batch_norm, declare_input, resnet_stem, width_options
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import BinaryConv2d, QuantizerSpec

BN_MOMENTUM, BN_EPS = 0.9, 1e-5
SIGN_13 = {"name": "ste_clipped", "clip": 1.3}
VARIANTS = {
    "binary_densenet28": ((6, 6, 6, 5), (2.7, 2.7, 2.2)),
    "binary_densenet37": ((6, 8, 12, 6), (3.3, 3.3, 4.0)),
    "binary_densenet45": ((6, 12, 14, 8), (2.7, 3.3, 4.0)),
}


class DenseLayer(nn.Module):
    """(N, c, H, W) -> (N, c + g, H, W): concat(x, BinConv3x3(q_a(BN(x))))."""

    def __init__(self, in_channels: int, growth: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec) -> None:
        super().__init__()
        self.bn = batch_norm(in_channels, BN_MOMENTUM, BN_EPS)
        self.conv = BinaryConv2d(
            in_channels, growth, 3, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bn(x))], dim=1)


def transition_channels(channels: int, reduction: float, multiple: int) -> int:
    """round(floor(channels / reduction) / multiple) * multiple (at least ``multiple``): the reference's rule."""
    return max(multiple, round((channels // reduction) / multiple) * multiple)


class BinaryDenseNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        layers: Sequence[int],
        reductions: Sequence[float],
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        act: QuantizerSpec = SIGN_13,
        weight_quantizer: QuantizerSpec = SIGN_13,
        name: str = "binary_densenet",
    ) -> None:
        super().__init__()
        width = width_options(name, stem, width, act, weight_quantizer)
        # The small stem is a bare conv (the reference's own for inputs under 50 pixels).
        self.stem = resnet_stem(
            stem, in_channels, width, lambda: [batch_norm(width, BN_MOMENTUM, BN_EPS), nn.ReLU()], small_norm_act=False
        )
        declare_input(self, in_channels, stem)
        multiple = max(1, round(width / 2))  # 32 at the reference width 64
        body: list = []
        channels = width
        for block, n in enumerate(layers):
            for _ in range(n):
                body.append(DenseLayer(channels, width, act, weight_quantizer))
                channels += width
            if block < len(layers) - 1:
                out_channels = transition_channels(channels, reductions[block], multiple)
                body += [
                    batch_norm(channels, BN_MOMENTUM, BN_EPS),
                    nn.MaxPool2d(2, stride=2),
                    nn.ReLU(),
                    nn.Conv2d(channels, out_channels, 1, bias=False),
                ]
                channels = out_channels
        self.body = nn.Sequential(*body)
        self.head_bn = batch_norm(channels, BN_MOMENTUM, BN_EPS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.head_bn(self.body(self.stem(x))))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, c) -> (N, classes)


def _densenet(variant: str, num_classes, in_channels, width, stem, act, weight_quantizer) -> BinaryDenseNet:
    layers, reductions = VARIANTS[variant]
    return BinaryDenseNet(layers, reductions, num_classes, in_channels, width, stem, act, weight_quantizer, variant)


def _densenet_entry(variant: str, doc: str):
    return register_width_entry(
        variant,
        BinaryDenseNet,
        doc,
        build=functools.partial(_densenet, variant),
    )


binary_densenet28 = _densenet_entry(
    "binary_densenet28", "BinaryDenseNet-28 (6, 6, 6, 5 layers; growth rate and stem channels ``width``)."
)
binary_densenet37 = _densenet_entry(
    "binary_densenet37", "BinaryDenseNet-37 (6, 8, 12, 6 layers; growth rate and stem channels ``width``)."
)
binary_densenet45 = _densenet_entry(
    "binary_densenet45", "BinaryDenseNet-45 (6, 12, 14, 8 layers; growth rate and stem channels ``width``)."
)


__all__ = [
    "BinaryDenseNet",
    "DenseLayer",
    "binary_densenet28",
    "binary_densenet37",
    "binary_densenet45",
    "transition_channels",
]
