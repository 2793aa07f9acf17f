"""The sign family: forward q(x) = sign(x) in {-1, +1} (sign(0) = +1), backward a surrogate.

All six quantizers here share the forward and differ only in the surrogate
derivative s(x) that replaces d sign(x)/dx = 0 in the backward pass,
grad_x = s(x) * grad_q (``vste`` also clips grad_q). The functional form is
``sign_ste(x, surrogate, **params)``; the modules hold the parameters.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict

import torch

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import (
    check_positive,
    hard_sign,
    identity_grad,
    pass_where,
    pass_within,
    quantize_with_surrogate,
)
from lowbit.quant.fused import fused_sign_ste, sign_rule
from lowbit.registry import UnknownNameError, unknown_name_message

# --- surrogate derivatives: each returns grad_x = s(x) * grad ------------------------


def _clipped_grad(x: torch.Tensor, grad: torch.Tensor, clip: float) -> torch.Tensor:
    # s(x) = 1{|x| <= clip}
    return pass_within(x, clip, grad)


def _steep_grad(x: torch.Tensor, grad: torch.Tensor, slope: float) -> torch.Tensor:
    # s(x) = slope * 1{|x| <= 1/slope}, the derivative of hardtanh(slope * x)
    return pass_within(x, 1.0 / slope, grad * slope)


def _swish_grad(x: torch.Tensor, grad: torch.Tensor, beta: float) -> torch.Tensor:
    # s(x) = beta (2 - z tanh(z/2)) / (1 + cosh z), z = beta x. Since
    # 1 + cosh z = 2 cosh^2(z/2) = 1 / (2 sigmoid(z) sigmoid(-z)), this equals
    # 2 beta sigmoid(z) sigmoid(-z) (2 - z tanh(z/2)), which decays like |z| e^-|z|
    # instead of overflowing cosh (float32 overflows for |z| > 89). Where the
    # bump underflows to 0 the derivative is 0 (this also keeps z = inf from
    # giving 0 * inf = NaN).
    z = beta * x
    bump = torch.sigmoid(z) * torch.sigmoid(-z)
    return pass_where(bump > 0, grad * (2.0 * beta) * bump * (2.0 - z * torch.tanh(0.5 * z)))


def _approx_sign_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # s(x) = (2 - 2|x|) 1{|x| <= 1}
    return pass_within(x, 1.0, grad * (2.0 - 2.0 * x.abs()))


def _vste_grad(x: torch.Tensor, grad: torch.Tensor, grad_clip: float, clip: float) -> torch.Tensor:
    # grad_x = clamp(grad, -grad_clip, grad_clip) 1{|x| <= clip}
    return pass_within(x, clip, grad.clamp(-grad_clip, grad_clip))


# name -> (surrogate, default parameters); every parameter must be > 0.
_SURROGATES: Dict[str, tuple[Callable[..., torch.Tensor], Dict[str, float]]] = {
    "ste": (identity_grad, {}),
    "ste_clipped": (_clipped_grad, {"clip": 1.0}),
    "steep": (_steep_grad, {"slope": 2.0}),
    "swish_sign": (_swish_grad, {"beta": 5.0}),
    "approx_sign": (_approx_sign_grad, {}),
    "vste": (_vste_grad, {"grad_clip": 0.5, "clip": 1.0}),
}


def sign_surrogates() -> list[str]:
    """The surrogate names ``sign_ste`` accepts (the same names as the quantizers)."""
    return sorted(_SURROGATES)


def sign_ste(x: torch.Tensor, surrogate: str = "ste", **params: float) -> torch.Tensor:
    """sign(x) (sign(0) = +1) with the named surrogate derivative in the backward pass.

    ``surrogate`` is one of :func:`sign_surrogates`; ``params`` override its
    defaults (``clip``, ``slope``, ``beta``, ``grad_clip``), all > 0.

    >>> x = torch.tensor([-2.0, 0.0, 0.5], requires_grad=True)
    >>> sign_ste(x, "ste_clipped", clip=1.0).sum().backward()
    >>> x.grad
    tensor([0., 1., 1.])
    """
    if surrogate not in _SURROGATES:
        raise UnknownNameError(unknown_name_message("sign surrogate", surrogate, _SURROGATES))
    derivative, defaults = _SURROGATES[surrogate]
    unexpected = sorted(set(params) - set(defaults))
    if unexpected:
        raise TypeError(
            f"sign surrogate {surrogate!r} takes parameters {sorted(defaults)}, got {unexpected}"
        )
    values = {name: check_positive(name, params.get(name, default)) for name, default in defaults.items()}
    rule = sign_rule(surrogate, values)
    fused = None if rule is None else fused_sign_ste(x, rule)  # one pass each way where it applies
    if fused is not None:
        return fused
    backward_fn = functools.partial(derivative, **values) if values else derivative
    return quantize_with_surrogate(x, hard_sign, backward_fn)


class _SignQuantizer(Quantizer):
    """A sign quantizer whose surrogate is ``sign_ste``'s entry of the same name."""

    forward_is_sign = True
    surrogate: str = "ste"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.surrogate, **{name: getattr(self, name) for name in self.param_names})


@register_quantizer("ste")
class SignSTE(_SignQuantizer):
    """Sign with the identity straight-through estimator.

    q(x) = sign(x) (sign(0) = +1);  dq/dx := 1.

    Bengio, Léonard & Courville, "Estimating or propagating gradients through
    stochastic neurons", 2013.
    """

    surrogate = "ste"


@register_quantizer("ste_clipped")
class ClippedSignSTE(_SignQuantizer):
    """Sign with the clipped (hard-tanh) straight-through estimator.

    q(x) = sign(x);  dq/dx := 1{|x| <= clip}, the derivative of clip * hardtanh(x / clip).

    Hubara, Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016.
    """

    surrogate = "ste_clipped"
    param_names = ("clip",)

    def __init__(self, clip: float = 1.0):
        super().__init__()
        self.clip = check_positive("clip", clip)


@register_quantizer("steep")
class SteepSignSTE(_SignQuantizer):
    """Sign with a steeper hard-tanh surrogate.

    q(x) = sign(x);  dq/dx := slope * 1{|x| <= 1/slope}, the derivative of
    hardtanh(slope * x). slope = 1 is ``ste_clipped`` with clip = 1.
    """

    surrogate = "steep"
    param_names = ("slope",)

    def __init__(self, slope: float = 2.0):
        super().__init__()
        self.slope = check_positive("slope", slope)


@register_quantizer("swish_sign")
class SwishSign(_SignQuantizer):
    """Sign with the SignSwish surrogate of BNN+.

    q(x) = sign(x);  dq/dx := beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)),
    the derivative of the smooth SignSwish 2 sigmoid(beta x)(1 + beta x (1 - sigmoid(beta x))) - 1.
    Computed as 2 beta sigmoid(beta x) sigmoid(-beta x) (2 - beta x tanh(beta x / 2)),
    which is equal and finite for every x (it tends to 0 for large |beta x|).

    Darabi, Belbahri, Courbariaux & Nia, "BNN+: Improved Binary Network Training", 2018.
    """

    surrogate = "swish_sign"
    param_names = ("beta",)

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = check_positive("beta", beta)


@register_quantizer("approx_sign")
class ApproxSign(_SignQuantizer):
    """Sign with Bi-Real Net's piecewise-quadratic surrogate.

    q(x) = sign(x);  dq/dx := (2 - 2|x|) 1{|x| <= 1}, the derivative of the
    piecewise polynomial 2x + x|x| on [-1, 1] (sign(x) outside).

    Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs", ECCV 2018.
    """

    surrogate = "approx_sign"


@register_quantizer("vste")
class VariantSignSTE(_SignQuantizer):
    """Sign with the "variant STE": the upstream gradient itself is clipped.

    q(x) = sign(x);  grad_x := clamp(grad_q, -grad_clip, grad_clip) 1{|x| <= clip}.
    Unlike the others this is not s(x) * grad_q: it bounds each backpropagated
    gradient entry. From the research notes (2021-06-16, DG vs multi-step STE),
    which clip the STE gradient to [-0.5, 0.5].
    """

    surrogate = "vste"
    param_names = ("grad_clip", "clip")

    def __init__(self, grad_clip: float = 0.5, clip: float = 1.0):
        super().__init__()
        self.grad_clip = check_positive("grad_clip", grad_clip)
        self.clip = check_positive("clip", clip)


__all__ = [
    "ApproxSign",
    "ClippedSignSTE",
    "SignSTE",
    "SteepSignSTE",
    "SwishSign",
    "VariantSignSTE",
    "sign_ste",
    "sign_surrogates",
]
