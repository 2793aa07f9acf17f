"""ReActNet-A: a binary MobileNet-v1 with learned sign thresholds (RSign) and shifted PReLUs (RPReLU).

    stem "imagenet": conv3x3/2 (c0 = 32) -> BN                          224 -> 112   float
    stem "small":    conv3x3 (c0) -> BN                                  32 -> 32     float
    13 blocks with channels 64, 128, 128, 256, 256, 512 x6, 1024 x2
       (stride 2 where the channels grow, except 32 -> 64)
    head:            global average pool -> linear(1024 -> classes, bias)              float

Block (in -> out channels; Liu et al.'s Fig. 3, MobileNet's depthwise 3x3 made a
full binary 3x3 conv)::

    h   = BN( BinConv3x3(stride)( sign(x + b1) ) ) + pool(x)         in channels
    h   = RPReLU1(h)
    y   = BN( BinConv1x1( sign(h + b2) ) ) + h                       if out == in
    y   = concat( BN(BinConv1x1(s)) + h, BN(BinConv1x1'(s)) + h )    if out == 2 in, s = sign(h + b2)
    out = RPReLU2(y)

sign(x + b) is RSign (a learned per-channel threshold, :class:`LearnableBias`),
RPReLU(x) = PReLU(x + b) + b' per channel; pool = 2x2 average pool at stride 2,
identity otherwise. Activations use ``act`` (``approx_sign``, Bi-Real's
piecewise-quadratic surrogate, as in the reference); weights
``magnitude_aware_sign`` (sign(W) times the mean |W| per output channel,
scale not differentiated, clipped straight-through gradient), which is the
reference's ``HardBinaryConv``.

``width`` = c0 scales every channel count by width / 32. With 1000 classes at
224x224: 29,343,592 parameters, 4.82e9 binary and 1.19e7 float MACs, the
figures of the reference implementation (liuzechun/ReActNet, counted by
instantiating it; the paper's 4.82e9 BOPs and 0.12e8 FLOPs; docs/models.md).

Liu, Shen, Savvides & Cheng, "ReActNet: Towards Precise Binary Neural Network
with Generalized Activation Functions", ECCV 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import LearnableBias, declare_input, scaled, width_options
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import BinaryConv2d, QuantizerSpec

STAGE_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class RPReLU(nn.Module):
    """PReLU(x + b) + b' with per-channel b, b' and slopes: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class ReActBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride), out = in or 2 in; see the module docstring."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec
    ) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"a ReActNet block maps C to C or 2C channels, got {in_channels} -> {out_channels}")
        self.move1 = LearnableBias(in_channels)
        self.conv3x3 = BinaryConv2d(
            in_channels, in_channels, 3, stride, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.rprelu1 = RPReLU(in_channels)
        self.move2 = LearnableBias(in_channels)
        copies = out_channels // in_channels  # 1, or 2 for the concatenated halves
        self.pointwise = nn.ModuleList(
            BinaryConv2d(in_channels, in_channels, 1, input_quantizer=act, weight_quantizer=weight_quantizer)
            for _ in range(copies)
        )
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(copies))
        self.rprelu2 = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv3x3(self.move1(x))) + self.pool(x)  # (N, in, H', W')
        h = self.rprelu1(h)
        s = self.move2(h)
        y = torch.cat([bn(conv(s)) + h for conv, bn in zip(self.pointwise, self.bn2)], dim=1)  # (N, out, H', W')
        return self.rprelu2(y)


class ReActNetA(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 32,
        stem: str = "imagenet",
        act: QuantizerSpec = "approx_sign",
        weight_quantizer: QuantizerSpec = "magnitude_aware_sign",
    ) -> None:
        super().__init__()
        width = width_options("reactnet_a", stem, width, act, weight_quantizer)
        channels = [scaled(c, width / 32) for c in STAGE_CHANNELS]
        stride = 2 if stem == "imagenet" else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, stride=stride, padding=1, bias=False),  # (N, c0, S/2, S/2)
            nn.BatchNorm2d(channels[0]),
        )
        declare_input(self, in_channels, stem, small_min=16)  # the blocks downsample 16x
        blocks = []
        for i in range(1, len(channels)):
            # Downsample where the channels grow, except the first block (the reference's 32 -> 64 at stride 1).
            down = channels[i] != channels[i - 1] and i > 1
            blocks.append(ReActBlock(channels[i - 1], channels[i], 2 if down else 1, act, weight_quantizer))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 1024) -> (N, classes)


reactnet_a = register_width_entry(
    "reactnet_a",
    ReActNetA,
    "ReActNet-A (binary MobileNet-v1); ``width`` = stem channels (32), all others scaled alike.",
)


__all__ = ["RPReLU", "ReActBlock", "ReActNetA", "reactnet_a"]
