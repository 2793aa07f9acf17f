"""Stochastic binarisation: +1 with probability (1 + hardtanh(x)) / 2, else -1."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lowbit.quant.base import Quantizer, register_quantizer
from lowbit.quant.functional import check_generator, pass_within, quantize_with_surrogate, uniform_noise
from lowbit.quant.sign import sign_ste


def _sign_with_probability(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    # P(+1) = P(u < p) = p for u ~ U[0, 1); p in float32 (see uniform_noise).
    p_plus = 0.5 * (1.0 + F.hardtanh(x.to(noise.dtype)))
    return torch.where(noise < p_plus, 1.0, -1.0).to(x.dtype)


def _clipped_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return pass_within(x, 1.0, grad)


def stochastic_sign(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stochastic sign; see :class:`StochasticSign`."""
    return quantize_with_surrogate(x, _sign_with_probability, _clipped_grad, uniform_noise(x, generator))


@register_quantizer("stochastic_sign")
class StochasticSign(Quantizer):
    """Stochastic binarisation of BinaryConnect / BinaryNet.

    q(x) = +1 with probability p = (1 + hardtanh(x)) / 2, else -1, so
    E[q(x)] = hardtanh(x);  dq/dx := 1{|x| <= 1} (clipped STE).

    Eval mode is deterministic: q(x) = sign(x) (sign(0) = +1), the sign of
    E[q(x)], with the same surrogate; this is how BinaryNet runs at test time,
    and it keeps an eval-mode model a function of its input (so it compiles and
    exports). The functional form ``stochastic_sign`` always draws.

    Randomness (training mode): draws come from ``generator`` (a ``torch.Generator`` on the
    input's device) or from the global RNG if None. Under ``torch.func.vmap``
    pass ``randomness="different"`` (independent draws per sample) or
    ``"same"``; vmap's default ``"error"`` raises a RuntimeError on the draw.

    Courbariaux, Bengio & David, "BinaryConnect", NeurIPS 2015; Hubara,
    Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016.
    """

    def __init__(self, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.generator = check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return sign_ste(x, "ste_clipped", clip=1.0)
        return stochastic_sign(x, self.generator)


__all__ = ["StochasticSign", "stochastic_sign"]
