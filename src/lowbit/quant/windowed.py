"""ApproxSign with a window: Bi-Real Net's surrogate, narrowed or widened, for scheduled surrogates.

q(x) = sign(x) (sign(0) = +1); the backward pass uses the derivative of the
piecewise-quadratic F_w(x) = 2 (x/w) - (x/w)|x/w| on [-w, w] (sign(x) outside):

    dq/dx := (2 / w) (1 - |x| / w) 1{|x| <= w}

w = 1 is ``approx_sign`` exactly. The surrogate always integrates to 2 (the
jump of the sign), so as the window w shrinks it tends to the sign's true
derivative 2 delta(x): the "shrink the window during training" of DSQ
(Gong et al., "Differentiable Soft Quantization", ICCV 2019), driven by
``surrogate:`` in a training config (``lowbit.train.surrogate_schedule``).

Liu et al., "Bi-Real Net", ECCV 2018 (w = 1).
"""

from __future__ import annotations

import functools

import torch

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import check_positive, hard_sign, pass_where, quantize_with_surrogate


def _windowed_approx_sign_grad(x: torch.Tensor, grad: torch.Tensor, window: float) -> torch.Tensor:
    # s(x) = (2 / w) (1 - |x| / w) on |x| <= w
    r = x.abs() / window
    return pass_where(r <= 1.0, grad * (2.0 / window) * (1.0 - r))


def approx_sign_window(x: torch.Tensor, window: float = 1.0) -> torch.Tensor:
    """sign(x) with the windowed ApproxSign derivative; see :class:`WindowedApproxSign`."""
    window = check_positive("window", window)
    return quantize_with_surrogate(x, hard_sign, functools.partial(_windowed_approx_sign_grad, window=window))


@register_quantizer("approx_sign_window")
class WindowedApproxSign(Quantizer):
    """Sign with Bi-Real's piecewise-quadratic surrogate on the window [-w, w].

    q(x) = sign(x);  dq/dx := (2 / w)(1 - |x| / w) 1{|x| <= w}. ``window`` = 1 is
    ``approx_sign``; a shrinking window approaches the sign's derivative.
    """

    forward_is_sign = True
    param_names = ("window",)

    def __init__(self, window: float = 1.0):
        super().__init__()
        self.window = check_positive("window", window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign_window(x, self.window)


__all__ = ["WindowedApproxSign", "approx_sign_window"]
