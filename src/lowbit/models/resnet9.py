"""ResNet-9 (the DAWNBench CIFAR-10 network) and simp-ResNet-9 (its bottleneck variant).

ResNet-9, with c = (64, 128, 256, 512) times ``width_mult``:

    prep:   conv3x3 c0 -> BN -> act                                   32x32 (``stem`` option)
    layer1: conv3x3 c1 -> BN -> act -> maxpool 2 -> Residual(block)   16x16
    layer2: conv3x3 c2 -> BN -> act -> maxpool 2                       8x8
    layer3: conv3x3 c3 -> BN -> act -> maxpool 2 -> Residual(block)    4x4
    head:   global max pool -> linear(c3 -> classes, no bias) -> x 0.125

Residual(block)(x) = x + block(x). ``resnet9``: block = two conv3x3 c -> BN -> act
(6,573,120 parameters at the defaults). ``simp_resnet9`` (the notes' "simp-ResNet9",
§1.2): block = bottleneck conv1x1 c -> c/r -> BN -> act, conv3x3 c/r -> BN -> act,
conv1x1 c/r -> c -> BN -> act with r = ``bottleneck_ratio`` = 4 (ResNet-50's ratio).
Convs have no bias; the 0.125 output scale keeps the initial logits small.

Options as in the notes: ``act`` relu | gelu | mish | elu | rrelu (§1.4),
``stem`` one of :data:`lowbit.models.layers.STEMS` replacing the prep conv (§1.6;
"srn9_k333" = ``simp_resnet9(stem="3x3,3x3,3x3")``), ``max_dropout`` None or p:
a MaxDropout after each of the three layers (§1.8).

Page, "How to train your ResNet" (Myrtle.ai, 2018), the DAWNBench entry;
He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, for the
bottleneck block.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lowbit.models.layers import (
    check_max_dropout,
    check_positive_int,
    check_width_mult,
    conv_bn_act,
    declare_stem_input,
    make_activation,
    make_stem,
    scaled,
)
from lowbit.models.registry import register_model
from lowbit.nn import MaxDropout

BASE_CHANNELS = (64, 128, 256, 512)
OUTPUT_SCALE = 0.125  # DAWNBench: scale the logits down so the initial softmax is near uniform


class Residual(nn.Module):
    """x + block(x); block keeps the shape."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def basic_residual(channels: int, act: str) -> Residual:
    """x + (conv3x3-BN-act)^2 (x)."""
    return Residual(
        nn.Sequential(*conv_bn_act(channels, channels, 3, act=act), *conv_bn_act(channels, channels, 3, act=act))
    )


def bottleneck_residual(channels: int, act: str, ratio: int = 4) -> Residual:
    """x + [conv1x1 c->c/r, conv3x3 c/r->c/r, conv1x1 c/r->c] (x), each conv -> BN -> act."""
    mid = max(1, channels // ratio)
    return Residual(
        nn.Sequential(
            *conv_bn_act(channels, mid, 1, act=act),
            *conv_bn_act(mid, mid, 3, act=act),
            *conv_bn_act(mid, channels, 1, act=act),
        )
    )


class ResNet9(nn.Module):
    """(N, C, 32, 32) -> (N, num_classes); ``bottleneck`` selects simp-ResNet-9's residual blocks."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        act: str = "relu",
        stem: str = "3x3",
        max_dropout: Optional[float] = None,
        bottleneck: bool = False,
        bottleneck_ratio: int = 4,
    ) -> None:
        super().__init__()
        width_mult = check_width_mult(width_mult)
        bottleneck_ratio = check_positive_int("bottleneck_ratio", bottleneck_ratio)
        max_dropout = check_max_dropout(max_dropout)
        make_activation(act)  # validate the name before building anything
        c0, c1, c2, c3 = (scaled(c, width_mult) for c in BASE_CHANNELS)
        declare_stem_input(self, in_channels, stem)  # three 2x2 max pools (and the 7x7 stem's /4)

        def residual(channels: int) -> Residual:
            if bottleneck:
                return bottleneck_residual(channels, act, bottleneck_ratio)
            return basic_residual(channels, act)

        def drop() -> list:
            return [MaxDropout(max_dropout)] if max_dropout is not None else []

        self.prep = make_stem(stem, in_channels, c0, act)  # (N, c0, 32, 32)
        self.layer1 = nn.Sequential(*conv_bn_act(c0, c1, 3, act=act), nn.MaxPool2d(2), residual(c1), *drop())  # 16x16
        self.layer2 = nn.Sequential(*conv_bn_act(c1, c2, 3, act=act), nn.MaxPool2d(2), *drop())  # 8x8
        self.layer3 = nn.Sequential(*conv_bn_act(c2, c3, 3, act=act), nn.MaxPool2d(2), residual(c3), *drop())  # 4x4
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(c3, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.flatten(self.pool(x), 1)  # (N, c3)
        return self.linear(x) * OUTPUT_SCALE


@register_model("resnet9")
def resnet9(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    width_mult: float = 1.0,
    act: str = "relu",
    stem: str = "3x3",
    max_dropout: Optional[float] = None,
) -> ResNet9:
    """DAWNBench ResNet-9 (6,573,120 parameters at the defaults); see the module docstring."""
    return ResNet9(num_classes, in_channels, width_mult=width_mult, act=act, stem=stem, max_dropout=max_dropout)


@register_model("simp_resnet9")
def simp_resnet9(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    width_mult: float = 1.0,
    act: str = "relu",
    stem: str = "3x3",
    max_dropout: Optional[float] = None,
    bottleneck_ratio: int = 4,
) -> ResNet9:
    """ResNet-9 with bottleneck residual blocks (1x1 reduce by ``bottleneck_ratio``, 3x3, 1x1 expand)."""
    return ResNet9(
        num_classes,
        in_channels,
        width_mult=width_mult,
        act=act,
        stem=stem,
        max_dropout=max_dropout,
        bottleneck=True,
        bottleneck_ratio=bottleneck_ratio,
    )


__all__ = ["Residual", "ResNet9", "resnet9", "simp_resnet9"]
