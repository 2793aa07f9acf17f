"""Binary AlexNet (BinaryNet): every conv and fully connected layer binary, BN after each.

    stem "imagenet": BinConv11x11/4 (64, float input) -> maxpool 3x3/2 -> BN      224 -> 27
    stem "small":    BinConv3x3 (64, float input) -> maxpool 3x3/2 -> BN            32 -> 15
    BinConv5x5 (192) -> maxpool 3x3/2 -> BN -> BinConv3x3 (384) -> BN -> BinConv3x3 (384) -> BN
       -> BinConv3x3 (256) -> maxpool 3x3/2 -> BN                                   (N, 256, 6, 6) at 224
    flatten -> BinLinear (4096) -> BN -> BinLinear (4096) -> BN -> BinLinear (classes) -> BN

Hubara et al.'s BinaryNet on AlexNet as larq-zoo builds it: weights and inputs
are signs with the straight-through gradient clipped at |x| <= 1
(``ste_clipped``, Larq's ``ste_sign``), no scaling factors; only the first
layer's *input* stays float (its weights are binary), so its MACs count at
32 bits; even the classifier is binary, followed by a BatchNorm. BatchNorms have
an offset and no scale (Keras ``scale=False``), momentum 0.9, epsilon 1e-3.

``input_size`` is the side the model is built for (the first linear layer's
width depends on it); ``width_mult`` scales every channel count and the hidden
4096. With 1000 classes at 224x224: 61,827,776 binary weights and 61,838,248
parameters, 61,859,192 with the BatchNorm statistics (larq-zoo
``BinaryAlexNet``; docs/models.md).

Hubara, Courbariaux, Soudry, El-Yaniv & Bengio, "Binarized Neural Networks",
NeurIPS 2016; Krizhevsky, Sutskever & Hinton, "ImageNet Classification with
Deep Convolutional Neural Networks", NeurIPS 2012.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import batch_norm, conv_out, declare_fixed_input, fixed_size_options
from lowbit.models.zoo_factory import register_fixed_size_entry
from lowbit.nn import BinaryConv2d, BinaryLinear, QuantizerSpec

BN_MOMENTUM = 0.9


class BinaryAlexNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes), S = ``input_size``; see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        stem: str = "imagenet",
        width_mult: float = 1.0,
        act: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "ste_clipped",
    ) -> None:
        super().__init__()
        size, (c1, c2, c3, c4, fc) = fixed_size_options(
            "binary_alexnet", stem, input_size, width_mult, (64, 192, 384, 256, 4096), act, weight_quantizer
        )

        def conv(cin: int, cout: int, k: int, stride: int = 1, float_input: bool = False) -> BinaryConv2d:
            return BinaryConv2d(
                cin, cout, k, stride, padding=k // 2,
                input_quantizer=None if float_input else act, weight_quantizer=weight_quantizer,
            )

        def bn(c: int, dims: int = 2) -> nn.Module:
            return batch_norm(c, BN_MOMENTUM, scale=False, dims=dims)

        if stem == "imagenet":
            first, side = conv(in_channels, c1, 11, 4, float_input=True), conv_out(size, 11, 4, 5)
        else:
            first, side = conv(in_channels, c1, 3, float_input=True), size
        side = conv_out(conv_out(conv_out(side, 3, 2), 3, 2), 3, 2)  # after the three 3x3/2 max pools
        declare_fixed_input(self, "binary_alexnet", in_channels, stem, size, side)
        self.features = nn.Sequential(
            first,  # (N, 64, 56, 56) at 224
            nn.MaxPool2d(3, stride=2),  # (N, 64, 27, 27)
            bn(c1),
            conv(c1, c2, 5),
            nn.MaxPool2d(3, stride=2),  # (N, 192, 13, 13)
            bn(c2),
            conv(c2, c3, 3),
            bn(c3),
            conv(c3, c3, 3),
            bn(c3),
            conv(c3, c4, 3),
            nn.MaxPool2d(3, stride=2),  # (N, 256, 6, 6)
            bn(c4),
        )
        self.classifier = nn.Sequential(
            BinaryLinear(c4 * side * side, fc, input_quantizer=act, weight_quantizer=weight_quantizer),
            bn(fc, dims=1),
            BinaryLinear(fc, fc, input_quantizer=act, weight_quantizer=weight_quantizer),
            bn(fc, dims=1),
            BinaryLinear(fc, num_classes, input_quantizer=act, weight_quantizer=weight_quantizer),
            bn(num_classes, dims=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # (N, 256 * 6 * 6) -> (N, classes)


binary_alexnet = register_fixed_size_entry(
    "binary_alexnet",
    BinaryAlexNet,
    'Binary AlexNet for ``input_size`` x ``input_size`` images; ``stem`` "imagenet" or "small".',
)


__all__ = ["BinaryAlexNet", "binary_alexnet"]
