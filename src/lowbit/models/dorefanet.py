"""DoReFa-Net (AlexNet): 1-bit weights, 2-bit activations, float first and last layers.

    stem "imagenet": conv12x12/4 valid (96, bias)                            224 -> 54   float
    stem "small":    conv3x3 (96, bias)                                       32 -> 32    float
    QConv5x5 (256) -> BN -> maxpool 3x3/2 -> QConv3x3 (384) -> BN -> maxpool 3x3/2
       -> QConv3x3 (384) -> BN -> QConv3x3 (256) -> BN -> maxpool 3x3/2 valid      (N, 256, 6, 6) at 224
    flatten -> QLinear (4096) -> BN -> QLinear (4096) -> BN -> clip(0, 1) -> linear(classes, bias)

QConv / QLinear: inputs through ``act`` (``dorefa`` with ``k_bit`` = 2: clip to
[0, 1], round to 2^k - 1 steps, straight-through inside [0, 1]) and weights
through ``weight_quantizer`` (sign(W) times the mean |W| of the whole tensor).
MACs of 2-bit inputs with 1-bit weights count at 2 bits (the larger precision).
BatchNorms have an offset and no scale, momentum 0.9, epsilon 1e-4.

``input_size`` is the side the model is built for; ``width_mult`` scales every
channel count and the hidden 4096. With 1000 classes at 224x224: 58,236,928
binary weights and 62,384,968 parameters, 62,403,912 with the BatchNorm
statistics (larq-zoo ``DoReFaNet``; docs/models.md).

Deviation from larq-zoo: its weight scale is a stopped gradient with an
identity straight-through sign; here ``xnor_weight`` (per tensor) differentiates
the scale (a 1/n correction per weight).

Zhou, Wu, Ni, Zhou, Wen & Zou, "DoReFa-Net: Training Low Bitwidth
Convolutional Neural Networks with Low Bitwidth Gradients", arXiv:1606.06160, 2016.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import batch_norm, conv_out, declare_fixed_input, fixed_size_options
from lowbit.models.zoo_factory import register_fixed_size_entry
from lowbit.nn import BinaryConv2d, BinaryLinear, QuantizerSpec

BN_MOMENTUM, BN_EPS = 0.9, 1e-4
DOREFA_2BIT = {"name": "dorefa", "k_bit": 2}
TENSOR_SIGN = {"name": "xnor_weight", "per_channel": False}


class DoReFaNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes), S = ``input_size``; see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        stem: str = "imagenet",
        width_mult: float = 1.0,
        act: QuantizerSpec = DOREFA_2BIT,
        weight_quantizer: QuantizerSpec = TENSOR_SIGN,
    ) -> None:
        super().__init__()
        size, (c1, c2, c3, c4, fc) = fixed_size_options(
            "dorefanet", stem, input_size, width_mult, (96, 256, 384, 256, 4096), act, weight_quantizer
        )

        def conv(cin: int, cout: int, k: int) -> BinaryConv2d:
            return BinaryConv2d(cin, cout, k, padding=k // 2, input_quantizer=act, weight_quantizer=weight_quantizer)

        def bn(c: int, dims: int = 2) -> nn.Module:
            return batch_norm(c, BN_MOMENTUM, BN_EPS, scale=False, dims=dims)

        if stem == "imagenet":
            first, side = nn.Conv2d(in_channels, c1, 12, stride=4), conv_out(size, 12, 4)
        else:
            first, side = nn.Conv2d(in_channels, c1, 3, padding=1), size
        side = conv_out(conv_out(conv_out(side, 3, 2, 1), 3, 2, 1), 3, 2)  # two "same" pools, one "valid"
        declare_fixed_input(self, "dorefanet", in_channels, stem, size, side)
        self.features = nn.Sequential(
            first,  # (N, 96, 54, 54) at 224
            conv(c1, c2, 5),
            bn(c2),
            nn.MaxPool2d(3, stride=2, padding=1),  # (N, 256, 27, 27)
            conv(c2, c3, 3),
            bn(c3),
            nn.MaxPool2d(3, stride=2, padding=1),  # (N, 384, 14, 14)
            conv(c3, c3, 3),
            bn(c3),
            conv(c3, c4, 3),
            bn(c4),
            nn.MaxPool2d(3, stride=2),  # (N, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            BinaryLinear(c4 * side * side, fc, input_quantizer=act, weight_quantizer=weight_quantizer),
            bn(fc, dims=1),
            BinaryLinear(fc, fc, input_quantizer=act, weight_quantizer=weight_quantizer),
            bn(fc, dims=1),
            nn.Hardtanh(0.0, 1.0),  # clip(x, 0, 1)
            nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # (N, 256 * 6 * 6) -> (N, classes)


dorefanet = register_fixed_size_entry(
    "dorefanet",
    DoReFaNet,
    'DoReFa-Net (AlexNet, W1A2) for ``input_size`` x ``input_size`` images; ``stem`` "imagenet" or "small".',
)


__all__ = ["DoReFaNet", "dorefanet"]
