"""MaxDropout: drop the largest activations instead of random ones.

In training, with m = min(x), M = max(x) over the whole tensor (batch included)
and the min-max normalisation x' = (x - m) / (M - m) in [0, 1],

    y = x * 1{x' <= 1 - p},

i.e. every entry in the top p of the tensor's value *range* is zeroed (not the
top p *fraction* of entries). No rescaling of the survivors (unlike Dropout's
1/(1-p)); in eval mode y = x. A constant tensor (M = m) is left unchanged.
The gradient is the mask (the mask itself is not differentiated).

Santos & Papa, "MaxDropout: Deep Neural Network Regularization Based on
Maximum Output Values", ICPR 2020; the formula follows their reference
implementation, which normalises over the whole tensor.
"""

from __future__ import annotations

import torch
from torch import nn


def max_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the entries of ``x`` whose min-max normalised value exceeds 1 - p (always applied)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p!r}")
    with torch.no_grad():
        low, high = torch.aminmax(x)
        # x' > 1 - p  <=>  x - m > (1 - p)(M - m) for M > m; no division, so a
        # constant tensor (M = m) drops nothing instead of producing NaN.
        drop = (x - low) > (1.0 - p) * (high - low)
    return x.masked_fill(drop, 0.0)


class MaxDropout(nn.Module):
    """MaxDropout(p): in training zero entries with min-max normalised value > 1 - p; identity in eval.

    ``p`` in [0, 1) (p = 0 drops nothing); any shape. See the module docstring.
    """

    def __init__(self, p: float = 0.3) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return max_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


__all__ = ["MaxDropout", "max_dropout"]
