"""ResNet-18 for 32x32 inputs (the kuangliu/pytorch-cifar CIFAR variant).

    stem (default "3x3": conv3x3 w -> BN -> act; 32x32 kept)
    layer1: 2 x BasicBlock(w,  stride 1)     32x32
    layer2: 2 x BasicBlock(2w, stride 2)     16x16
    layer3: 2 x BasicBlock(4w, stride 2)      8x8
    layer4: 2 x BasicBlock(8w, stride 2)      4x4
    global average pool -> linear(8w -> num_classes)

BasicBlock: conv3x3 -> BN -> act -> conv3x3 -> BN, plus the shortcut (identity,
or conv1x1(stride) -> BN when the shape changes), then act. Convs have no bias.
With w = 64, 10 classes and the "3x3" stem: 11,173,962 parameters.

Options (the notes' §1.4, §1.6, §1.8 studies):

- ``stem``: "7x7" (He et al.'s 7x7 stride-2 conv + 3x3 stride-2 max pool, so the
  stages run at 8, 4, 2, 1 pixels), "3x3", "3x3,5x5", "3x3,3x3", "3x3,3x3,3x3"
  (stride-1 convs in -> w -> ... -> w, each followed by BN + act); see
  :func:`lowbit.models.layers.make_stem`.
- ``act``: relu | gelu | mish | elu | rrelu, everywhere in the network.
- ``max_dropout``: None or p; a :class:`lowbit.nn.MaxDropout` (p) after each of
  the four stages.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
Deviation from the paper: the CIFAR "3x3" stem replaces 7x7 + max pool by default.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lowbit.models.layers import (
    check_max_dropout,
    check_width,
    declare_stem_input,
    make_activation,
    make_stem,
    projection_shortcut,
)
from lowbit.models.registry import register_model
from lowbit.nn import MaxDropout


class BasicBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride); two 3x3 convs and a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(act)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)
        self.act2 = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """(N, C, 32, 32) -> (N, num_classes); ``num_blocks`` per stage, (2, 2, 2, 2) = ResNet-18."""

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "3x3",
        act: str = "relu",
        max_dropout: Optional[float] = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must have 4 entries (one per stage), got {tuple(num_blocks)!r}")
        width = check_width(width)
        max_dropout = check_max_dropout(max_dropout)
        make_activation(act)  # validate the name before building anything
        declare_stem_input(self, in_channels, stem)  # three stride-2 stages (and the 7x7 stem's /4)
        self.stem = make_stem(stem, in_channels, width, act)  # (N, w, 32, 32); 8x8 for "7x7"
        stages = []
        channels = width
        for i, blocks in enumerate(num_blocks):
            out_channels = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride if b == 0 else 1, act))
                channels = out_channels
            if max_dropout is not None:
                layers.append(MaxDropout(max_dropout))
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # (N, 8w, 4, 4) after layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.pool(x), 1)  # (N, 8w)
        return self.linear(x)


@register_model("resnet18")
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    width: int = 64,
    stem: str = "3x3",
    act: str = "relu",
    max_dropout: Optional[float] = None,
) -> ResNet:
    """CIFAR ResNet-18 (11,173,962 parameters at the defaults); see the module docstring."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width=width, stem=stem, act=act, max_dropout=max_dropout)


__all__ = ["BasicBlock", "ResNet", "resnet18"]
