"""The straight-through estimator: backpropagation with a surrogate derivative for sign.

    ĝ = ∂L/∂w computed by the chain rule, with d sign(z)/dz := s(z)

where s is the derivative of the chosen surrogate (``ste``: s = 1; ``ste_clipped``:
1{|z| <= clip}; ``swish_sign``, ``approx_sign``, ``steep``, ``vste``: see
``lowbit.quant``). The forward pass is the student's exactly; only its backward
changes. ``surrogate=None`` uses the student's own activation backward.

Bengio, Léonard & Courville, "Estimating or propagating gradients through
stochastic neurons for conditional computation", 2013; Yin et al.,
"Understanding Straight-Through Estimator in Training Activation Quantized
Neural Nets", ICLR 2019.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from lowbit.estimators.base import GradientEstimator, Params, register_estimator
from lowbit.estimators.objective import SurrogateSpec, resolve_surrogate


def ste_gradient(objective: Any, surrogate: Any = None, params: Optional[Mapping[str, torch.Tensor]] = None) -> Params:
    """∂L/∂w at ``params`` (default: the objective's) with the surrogate backward; detached tensors."""
    point = objective.with_params(params) if params is not None else objective.params
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in point.items()}
    loss = objective.loss(leaves, surrogate=surrogate)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(v)).detach() for (k, v), g in zip(leaves.items(), grads)}


@register_estimator("ste")
class STE(GradientEstimator):
    """ĝ = ∂L/∂w with d sign(z)/dz replaced by the surrogate's derivative (module docstring).

    Args:
        surrogate: a sign quantizer name (``"ste"``, ``"ste_clipped"``,
            ``"swish_sign"``, ``"approx_sign"``, ``"steep"``, ``"vste"``), a
            dict, a module, or None for the student's own backward.
        **surrogate_params: the surrogate's parameters, e.g. ``clip=0.5``.

    Deterministic: the generator is not used.
    """

    param_names = ("surrogate",)

    def __init__(self, surrogate: SurrogateSpec = "ste", **surrogate_params: Any) -> None:
        self.surrogate = surrogate
        self.surrogate_params: Dict[str, Any] = dict(surrogate_params)
        self._surrogate = resolve_surrogate(surrogate, **surrogate_params)  # validates now

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "surrogate": self.surrogate, **self.surrogate_params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"STE({params})"

    @property
    def resolved_surrogate(self) -> Any:
        """The surrogate module (or None: the model's own backward) this estimator backpropagates with."""
        return self._surrogate

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        return ste_gradient(objective, self._surrogate)


__all__ = ["STE", "ste_gradient"]
