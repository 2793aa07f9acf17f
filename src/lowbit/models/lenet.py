"""LeNet-5 in its classic form, with C5 as a convolution.

    input (C, S, S), S = input_size (28 or 32, or larger)
    C1  conv 5x5, 6   (padding p = 2 for S = 28 so that C5 sees 5x5, else 0)  -> act -> S2 maxpool 2
    C3  conv 5x5, 16                                                          -> act -> S4 maxpool 2
    C5  conv 5x5, 120                                                         -> act
    F6  linear 120*s*s -> 84 -> act ;  output linear 84 -> num_classes

For S = 32 (or 28 with its padding) the maps are 28 -> 14 -> 10 -> 5 -> 1, so
C5 is the classic fully connected-like 120-unit layer and F6 sees 120 inputs;
for a larger S the flatten size 120*s*s is computed at construction. Layer
names ``conv1, conv2, conv3, fc1, fc2`` follow the DessiLBI example LeNet whose
``conv3`` / ``fc1`` the notes prune. 61,706 parameters for MNIST (1 channel),
62,006 for 3 channels.

Deviations from LeCun et al., "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998: max pooling instead of trainable subsampling,
full C1-C3 connectivity, ReLU by default (``act="tanh"`` for the original
squashing), a plain linear output instead of RBF units.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.layers import make_activation
from lowbit.models.registry import register_model


def _after_conv_pool(size: int) -> int:
    """Spatial size after a 5x5 valid conv then a 2x2 stride-2 max pool."""
    return (size - 4) // 2


class LeNet5(nn.Module):
    """(N, C, S, S) -> (N, num_classes); see the module docstring."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, act: str = "relu") -> None:
        super().__init__()
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 28:
            raise ValueError(f"input_size must be an integer >= 28, got {input_size!r}")
        # Pad small inputs (MNIST 28x28) up to the 32x32 the architecture was designed for.
        padding = max(0, (32 - input_size + 1) // 2)
        size = _after_conv_pool(_after_conv_pool(input_size + 2 * padding))  # after S4
        size = size - 4  # after C5 (5x5 valid)
        self.input_shape = (in_channels, input_size, input_size)
        self.fixed_input_size = True  # F6's width is computed for input_size
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=padding)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120 * size * size, 84)
        self.fc2 = nn.Linear(84, num_classes)
        self.act1, self.act2, self.act3, self.act4 = (make_activation(act) for _ in range(4))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))  # (N, 6, 14, 14) for S = 32
        x = self.pool(self.act2(self.conv2(x)))  # (N, 16, 5, 5)
        x = self.act3(self.conv3(x))  # (N, 120, 1, 1)
        x = self.act4(self.fc1(torch.flatten(x, 1)))  # (N, 84)
        return self.fc2(x)  # (N, num_classes)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 3, *, input_size: int = 32, act: str = "relu") -> LeNet5:
    """LeNet-5 for S x S inputs (S = 28 for MNIST with ``in_channels=1``, 32 for CIFAR)."""
    return LeNet5(num_classes, in_channels, input_size=input_size, act=act)


__all__ = ["LeNet5", "lenet5"]
