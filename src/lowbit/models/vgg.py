"""VGG-A (VGG-11) for 32x32 inputs, with and without BatchNorm.

    conv64 - P - conv128 - P - conv256 - conv256 - P - conv512 - conv512 - P - conv512 - conv512 - P
    -> flatten (512 at 1x1) -> FC 512 -> FC 512 -> FC num_classes

All convs 3x3 'same' (with bias), P = 2x2 max pool (32 -> 1 after five),
ReLU after every conv and hidden FC. ``bn=True`` inserts a BatchNorm after every
conv / FC but the last (before the ReLU) -- the pair of models of the notes'
"VGG and BatchNorm" study (Santurkar et al., "How Does Batch Normalization Help
Optimization?", NeurIPS 2018). No dropout. 9,750,922 parameters without BN.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (configuration A); the 512-wide classifier for CIFAR
replaces the 4096-wide ImageNet one.
"""

from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from lowbit.models.registry import register_model

# Configuration A: channel counts, "M" = 2x2 max pool.
VGG_A_CONFIG: List[Union[int, str]] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """(N, C, 32, 32) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, bn: bool = False, config=VGG_A_CONFIG) -> None:
        super().__init__()
        self.input_shape = (in_channels, 32, 32)
        self.fixed_input_size = True  # the classifier expects 1x1 maps after five pools
        layers: List[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            if bn:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU())
            channels = item
        self.features = nn.Sequential(*layers)  # (N, 512, 1, 1)
        hidden: List[nn.Module] = []
        for fan_in in (channels, 512):
            hidden.append(nn.Linear(fan_in, 512))
            if bn:
                hidden.append(nn.BatchNorm1d(512))
            hidden.append(nn.ReLU())
        self.classifier = nn.Sequential(*hidden, nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)  # (N, 512)
        return self.classifier(x)


@register_model("vgg_a")
def vgg_a(num_classes: int = 10, in_channels: int = 3, *, bn: bool = False) -> VGG:
    """VGG-A for 32x32 inputs; ``bn=True`` adds BatchNorm after every conv and hidden FC."""
    return VGG(num_classes, in_channels, bn=bn)


__all__ = ["VGG", "VGG_A_CONFIG", "vgg_a"]
