"""XNOR-Net (AlexNet): binary weights scaled per filter, binary activations, BN before every binary conv.

    stem "imagenet": conv11x11/4 (96) -> BN -> ReLU -> maxpool 3x3/2        224 -> 27   float
    stem "small":    conv3x3 (96) -> BN -> ReLU -> maxpool 3x3/2             32 -> 15   float
    BN -> BinConv5x5 (256) -> maxpool 3x3/2 -> BN -> BinConv3x3 (384) -> BN -> BinConv3x3 (384)
       -> BN -> BinConv3x3 (256) -> maxpool 3x3/2 -> BN
    BinConv kxk valid (4096; k = the map's side, 6 at 224: the first "fully connected" layer)
       -> BN -> BinConv1x1 (4096) -> BN -> ReLU -> linear(4096 -> classes, no bias)   float

Binary convs: inputs through ``act`` (``ste_clipped``: sign, gradient 1{|x| <= 1})
and weights through ``xnor_weight`` (sign(W) times the mean |W| of the output
channel). Every BatchNorm has an offset and no scale (Keras ``scale=False``: the
sign that follows ignores a positive scale), momentum 0.9, epsilon 1e-5 after the
first conv, 1e-3 before the classifier, 1e-4 elsewhere, as in the reference.

``input_size`` is the side the model is built for (the classifier's kernel
depends on it); ``width_mult`` scales every channel count (4096 included).
With 1000 classes at 224x224: 58,236,928 binary weights and 62,377,440
parameters, 62,396,768 with the BatchNorm statistics (larq-zoo ``XNORNet``;
docs/models.md).

Deviations from larq-zoo: its weight quantizer clips W to [-1, 1] before the
scale and passes a clipped straight-through gradient; ``xnor_weight`` does not
clip (a weight-clip constraint on the latent weights makes the clip a no-op)
and differentiates the scale; no L2 kernel regulariser (``optim.weight_decay``).

Rastegari, Ordonez, Redmon & Farhadi, "XNOR-Net: ImageNet Classification
Using Binary Convolutional Neural Networks", ECCV 2016.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.binary_blocks import batch_norm, conv_out, declare_fixed_input, fixed_size_options
from lowbit.models.zoo_factory import register_fixed_size_entry
from lowbit.nn import BinaryConv2d, QuantizerSpec

BN_MOMENTUM = 0.9


class XNORNet(nn.Module):
    """(N, C, S, S) -> (N, num_classes), S = ``input_size``; see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        stem: str = "imagenet",
        width_mult: float = 1.0,
        act: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "xnor_weight",
    ) -> None:
        super().__init__()
        size, (c1, c2, c3, c4, fc) = fixed_size_options(
            "xnornet", stem, input_size, width_mult, (96, 256, 384, 256, 4096), act, weight_quantizer
        )

        def binary(cin: int, cout: int, k: int, padding: int) -> BinaryConv2d:
            return BinaryConv2d(cin, cout, k, padding=padding, input_quantizer=act, weight_quantizer=weight_quantizer)

        def bn(c: int, eps: float = 1e-4) -> nn.Module:
            return batch_norm(c, BN_MOMENTUM, eps, scale=False)

        if stem == "imagenet":
            first = nn.Conv2d(in_channels, c1, 11, stride=4, padding=5, bias=False)
            side = conv_out(size, 11, 4, 5)
        else:
            first = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
            side = size
        side = conv_out(conv_out(conv_out(side, 3, 2), 3, 2), 3, 2)  # after the three 3x3/2 max pools
        declare_fixed_input(self, "xnornet", in_channels, stem, size, side)
        self.features = nn.Sequential(
            first,  # (N, 96, 56, 56) at 224
            bn(c1, 1e-5),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),  # (N, 96, 27, 27)
            bn(c1),
            binary(c1, c2, 5, 2),
            nn.MaxPool2d(3, stride=2),  # (N, 256, 13, 13)
            bn(c2),
            binary(c2, c3, 3, 1),
            bn(c3),
            binary(c3, c3, 3, 1),
            bn(c3),
            binary(c3, c4, 3, 1),
            nn.MaxPool2d(3, stride=2),  # (N, 256, 6, 6)
            bn(c4),
            binary(c4, fc, side, 0),  # (N, 4096, 1, 1): a fully connected layer as a conv
            bn(fc),
            binary(fc, fc, 1, 0),
            bn(fc, 1e-3),
            nn.ReLU(),
        )
        self.linear = nn.Linear(fc, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.features(x), 1))  # (N, 4096) -> (N, classes)


xnornet = register_fixed_size_entry(
    "xnornet",
    XNORNet,
    'XNOR-Net (AlexNet) for ``input_size`` x ``input_size`` images; ``stem`` "imagenet" or "small".',
)


__all__ = ["XNORNet", "xnornet"]
