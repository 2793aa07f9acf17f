"""A small float64 network of binary convs whose numbers another summation order must not change."""

from __future__ import annotations

import torch


def float_then_binary_convs() -> torch.nn.Sequential:
    """Two binary convs in float64, each after a float conv with a bias (seeded: the same weights each call).

    The float convs are there for the ties: a binary conv's outputs are sums of ±α, many exactly 0,
    and a sum in another order (inductor's, a GPU's) can leave 1e-17 of either sign, which a sign
    straight after would turn into ±1 (BatchNorm of such outputs ties the same way; docs/training.md,
    "torch.compile"). After a biased float conv no input of a sign is 0 up to rounding.
    """
    from lowbit.nn import BinaryConv2d

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        BinaryConv2d(8, 8, 3, padding=1, input_quantizer="ste_clipped", weight_quantizer="xnor_weight"),
        torch.nn.Conv2d(8, 8, 1),
        BinaryConv2d(8, 8, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="xnor_weight"),
    ).double()
