"""DLA-34 for 32x32 inputs: Deep Layer Aggregation as in kuangliu/pytorch-cifar.

Channels at the default width w = 16:

    base:   conv3x3 16 -> BN -> ReLU                          32x32
    layer1: conv3x3 16 -> BN -> ReLU                          32x32
    layer2: conv3x3 32 -> BN -> ReLU                          32x32
    layer3: Tree(level 1,  32 ->  64, stride 1)               32x32
    layer4: Tree(level 2,  64 -> 128, stride 2)               16x16
    layer5: Tree(level 2, 128 -> 256, stride 2)                8x8
    layer6: Tree(level 1, 256 -> 512, stride 2)                4x4
    global average pool -> linear(512 -> classes)

Tree (hierarchical deep aggregation), out channels c:

- level 1: left = Block(in -> c, stride), right = Block(c -> c);
  out = Root([left, right]).
- level L > 1: prev = Block(in -> c, stride) applied to the input;
  subtrees level_{L-1}, ..., level_1 applied in a chain (the first one gets the
  input and the stride); then left = Block(c -> c), right = Block(c -> c) on the
  chain's output; out = Root([prev, level_{L-1}, ..., level_1, left, right]).

Channels scale with ``width`` w (default 16): w, w, 2w, then trees of 4w, 8w,
16w, 32w. ``act`` (default relu) is used everywhere.

Root(xs) = act(BN(conv1x1(concat(xs)))) (iterative aggregation of the
branches, (L + 2) c -> c channels). Block = the ResNet BasicBlock. 16,291,386
parameters at 10 classes and w = 16.

Yu, Wang, Shelhamer & Darrell, "Deep Layer Aggregation", CVPR 2018.
Deviations from the paper's code (shared with the kuangliu version): a 32x32
CIFAR stem with no downsampling, and the level-2 trees' extra Root input is a
full Block on the input ("prev") rather than the max-pooled, 1x1-projected
input. Unlike the kuangliu code, for levels >= 3 (unused by DLA-34) the later
subtrees of the chain take c channels at stride 1, so the chain is well formed.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from lowbit.models.layers import check_width, conv_bn_act, make_activation
from lowbit.models.registry import register_model
from lowbit.models.resnet import BasicBlock


class Root(nn.Module):
    """concat(xs) (N, sum c_i, H, W) -> conv1x1 -> BN -> act -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(act)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return self.act(self.bn(self.conv(torch.cat(xs, dim=1))))


class Tree(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, level: int = 1, stride: int = 1, act: str = "relu") -> None:
        super().__init__()
        if level < 1:
            raise ValueError(f"level must be >= 1, got {level}")
        self.level = level
        if level == 1:
            self.root = Root(2 * out_channels, out_channels, act)
            self.left_node = BasicBlock(in_channels, out_channels, stride, act)
            self.right_node = BasicBlock(out_channels, out_channels, 1, act)
            return
        self.root = Root((level + 2) * out_channels, out_channels, act)
        channels, first_stride = in_channels, stride
        for i in reversed(range(1, level)):
            self.add_module(f"level_{i}", Tree(channels, out_channels, i, first_stride, act))
            channels, first_stride = out_channels, 1
        self.prev_root = BasicBlock(in_channels, out_channels, stride, act)
        self.left_node = BasicBlock(out_channels, out_channels, 1, act)
        self.right_node = BasicBlock(out_channels, out_channels, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.prev_root(x)] if self.level > 1 else []
        for i in reversed(range(1, self.level)):
            x = self.get_submodule(f"level_{i}")(x)
            xs.append(x)
        x = self.left_node(x)
        xs.append(x)
        x = self.right_node(x)
        xs.append(x)
        return self.root(xs)


class DLA(nn.Module):
    """(N, C, 32, 32) -> (N, num_classes); DLA-34 (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, act: str = "relu") -> None:
        super().__init__()
        w = check_width(width)
        make_activation(act)  # validate the name before building anything
        self.input_shape = (in_channels, 32, 32)
        self.min_input_size = 8  # three stride-2 trees (lowbit.models.fit)
        self.base = conv_bn_act(in_channels, w, 3, act=act)
        self.layer1 = conv_bn_act(w, w, 3, act=act)
        self.layer2 = conv_bn_act(w, 2 * w, 3, act=act)
        self.layer3 = Tree(2 * w, 4 * w, level=1, stride=1, act=act)  # (N, 4w, 32, 32)
        self.layer4 = Tree(4 * w, 8 * w, level=2, stride=2, act=act)  # (N, 8w, 16, 16)
        self.layer5 = Tree(8 * w, 16 * w, level=2, stride=2, act=act)  # (N, 16w, 8, 8)
        self.layer6 = Tree(16 * w, 32 * w, level=1, stride=2, act=act)  # (N, 32w, 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(32 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.base(x)))
        x = self.layer6(self.layer5(self.layer4(self.layer3(x))))
        x = torch.flatten(self.pool(x), 1)  # (N, 32w)
        return self.linear(x)


@register_model("dla34")
def dla34(num_classes: int = 10, in_channels: int = 3, *, width: int = 16, act: str = "relu") -> DLA:
    """DLA-34 for 32x32 inputs (16,291,386 parameters at the defaults); see the module docstring."""
    return DLA(num_classes, in_channels, width=width, act=act)


__all__ = ["DLA", "Root", "Tree", "dla34"]
