"""XNOR ResNet-18: binary weights and binary activations in every residual-block conv.

    stem:   conv3x3(in -> w) -> BN -> ReLU                       float
    layer1..4: 2 x XnorBasicBlock(w, 2w, 4w, 8w; strides 1, 2, 2, 2)
    head:   BN -> ReLU -> global average pool -> linear(8w -> classes)   float

XnorBasicBlock (XNOR-Net's ordering BN -> binary activation -> binary conv, so each
binary conv sees a freshly normalised, centred input before the sign):

    out = BinConv3x3(stride)( q_a( BN(x) ) )
    out = BinConv3x3( q_a( BN(out) ) )
    out = out + shortcut(x)

where q_a is the activation quantizer ``act`` (a sign with a surrogate gradient;
``ste_clipped`` by default) and the binary convs use ``xnor_weight`` weights
(sign(W) times the mean |W| per output channel). In the code q_a is the
``input_quantizer`` of each :class:`lowbit.nn.BinaryConv2d`, so the conv *sees*
binary inputs and the summary counts its MACs as binary x binary. There is no
float nonlinearity inside the blocks: the sign is the nonlinearity, and the
identity shortcut carries the real-valued signal past it (Bi-Real Net's point).

Shortcuts: where the shape changes, the downsample is a *float* conv1x1(stride)
-> BN (the kuangliu ResNet shortcut). Bi-Real Net and most binary ResNets keep
this path real-valued too (Bi-Real after a 2x2 average pool): binarising it costs
accuracy, and these convs hold only ~1.5% of the weights (0.17M of 11.2M at
w = 64). The
first conv and the last FC stay float, as in XNOR-Net. Any width w >= 1 (the
notes use 8, 16, 96, 192, 256).

Rastegari et al., "XNOR-Net", ECCV 2016; Liu et al., "Bi-Real Net", ECCV 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.layers import check_width, projection_shortcut
from lowbit.models.registry import register_model
from lowbit.nn import BinaryConv2d, QuantizerSpec, make_quantizer


class XnorBasicBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride); BN -> q_a -> BinConv, twice, plus a float shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "xnor_weight",
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = BinaryConv2d(
            in_channels, out_channels, 3, stride, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = BinaryConv2d(
            out_channels, out_channels, 3, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.bn2(out))
        return out + self.shortcut(x)


class XnorResNet18(nn.Module):
    """(N, C, 32, 32) -> (N, num_classes); see the module docstring."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        act: QuantizerSpec = "ste_clipped",
        weight_quantizer: QuantizerSpec = "xnor_weight",
    ) -> None:
        super().__init__()
        width = check_width(width)
        # Validate both specs once, up front, so a typo fails before 16 layers are built.
        make_quantizer(act)
        make_quantizer(weight_quantizer)
        self.input_shape = (in_channels, 32, 32)
        self.min_input_size = 8  # three stride-2 stages (lowbit.models.fit)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),  # (N, w, 32, 32), float
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages = []
        channels = width
        for i in range(4):
            out_channels = width * 2**i
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    XnorBasicBlock(channels, out_channels, stride, act, weight_quantizer),
                    XnorBasicBlock(out_channels, out_channels, 1, act, weight_quantizer),
                )
            )
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # (N, 8w, 4, 4) after layer4
        self.head_bn = nn.BatchNorm2d(channels)
        self.head_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)  # float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.head_act(self.head_bn(x))
        x = torch.flatten(self.pool(x), 1)  # (N, 8w)
        return self.linear(x)


@register_model("xnor_resnet18")
def xnor_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    width: int = 64,
    act: QuantizerSpec = "ste_clipped",
    weight_quantizer: QuantizerSpec = "xnor_weight",
) -> XnorResNet18:
    """XNOR ResNet-18 of any ``width``; ``act`` is the binary activation quantizer spec (name or dict)."""
    return XnorResNet18(num_classes, in_channels, width=width, act=act, weight_quantizer=weight_quantizer)


__all__ = ["XnorBasicBlock", "XnorResNet18", "xnor_resnet18"]
