"""Real-to-Binary Net: a Bi-Real ResNet-18 whose binary convs are rescaled by a real-valued gate.

    stem "imagenet": conv7x7/2 (64) -> BN -> PReLU -> maxpool 3x3/2           224 -> 56   float
    stem "small":    conv3x3 (64) -> BN -> PReLU                               32 -> 32    float
    blocks 2..9:     each two half-blocks; blocks 4, 6, 8 halve the size and double the channels
    head:            global average pool -> linear(8w -> classes, bias)                  float

Half-block (Martinez et al.'s Fig. 1 and Sec. 4.3)::

    z   = BN(x)
    g   = sigmoid(W2 relu(W1 avgpool(z)))             (N, out): data-driven gain per output channel
    out = PReLU( BinConv3x3(stride)(q_a(z)) * g ) + shortcut(x)

W1: in -> in / 8, W2: in / 8 -> out (no biases); shortcut = identity, or 2x2
average pool -> float 1x1 conv -> BN where the shape changes. q_a and the
weights are ``ste_clipped`` signs (Larq's ``ste_sign``), no weight scale: the
gate g supplies it, computed from the real-valued input before binarisation.
The gate's two linear layers are float, so their MACs count at 32 bits.

Two-stage training (the paper's Sec. 4.2): stage 1 trains with binary
activations and real weights (``weight_quantizer: none``), distilled from a
real-valued teacher by attention transfer; stage 2 binarises the weights too,
starting from stage 1 (``run.init_from``). See docs/training.md ("Distillation").

BatchNorm momentum 0.99 (Keras 0.99, the reference's), epsilon 1e-3. With 1000
classes, ImageNet stem: 10,985,472 binary weights and 11,986,920 parameters
(larq-zoo ``RealToBinaryNet``; docs/models.md).

Martinez, Yang, Bulat & Tzimiropoulos, "Training Binary Neural Networks with
Real-to-Binary Convolutions", ICLR 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import batch_norm, declare_input, downsample_shortcut, resnet_stem, width_options
from lowbit.models.zoo_factory import register_width_entry
from lowbit.nn import BinaryConv2d, QuantizerSpec

BN_MOMENTUM = 0.99
GATE_REDUCTION = 8  # the paper's r: the gate's hidden layer has in / 8 units


class ScalingGate(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, 1, 1): sigmoid(W2 relu(W1 mean_hw(x))), the data-driven gain."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = max(1, in_channels // GATE_REDUCTION)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Linear(in_channels, hidden, bias=False)
        self.expand = nn.Linear(hidden, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.flatten(self.pool(x), 1)  # (N, C_in)
        g = torch.sigmoid(self.expand(torch.relu(self.reduce(z))))  # (N, C_out)
        return g[:, :, None, None]


class RealToBinaryHalfBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, act: QuantizerSpec, weight_quantizer: QuantizerSpec):
        super().__init__()
        stride = 1 if in_channels == out_channels else 2
        self.shortcut = (
            nn.Identity() if stride == 1 else downsample_shortcut(in_channels, out_channels, BN_MOMENTUM)
        )
        self.bn = batch_norm(in_channels, BN_MOMENTUM)
        self.gate = ScalingGate(in_channels, out_channels)
        self.conv = BinaryConv2d(
            in_channels, out_channels, 3, stride, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bn(x)
        return self.prelu(self.conv(z) * self.gate(z)) + self.shortcut(x)


class RealToBinaryNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring.

    The outputs of ``blocks.0`` ... ``blocks.7`` are the points where
    Real-to-Binary's attention transfer compares student and teacher.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        act: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "ste_clipped",
    ) -> None:
        super().__init__()
        width = width_options("real_to_binary_net", stem, width, act, weight_quantizer)
        self.stem = resnet_stem(stem, in_channels, width, lambda: [batch_norm(width, BN_MOMENTUM), nn.PReLU(width)])
        declare_input(self, in_channels, stem)
        blocks, channels = [], width
        for block in range(2, 10):
            out_channels = channels * 2 if block in (4, 6, 8) else channels
            blocks.append(
                nn.Sequential(
                    RealToBinaryHalfBlock(channels, out_channels, act, weight_quantizer),
                    RealToBinaryHalfBlock(out_channels, out_channels, act, weight_quantizer),
                )
            )
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 8w) -> (N, classes)


real_to_binary_net = register_width_entry(
    "real_to_binary_net",
    RealToBinaryNet,
    "Real-to-Binary Net (the binary student); ``weight_quantizer: none`` is its stage-1 network.",
)


__all__ = ["RealToBinaryHalfBlock", "RealToBinaryNet", "ScalingGate", "real_to_binary_net"]
