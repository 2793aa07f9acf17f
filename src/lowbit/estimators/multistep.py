"""Multi-step STE: K optimizer steps on the STE gradient inside a budget ball.

From δ_0 (0, or a random point at radius noise·budget), for t = 1..K:

    g_t = ∇_w L(w + δ_{t−1}) with the surrogate backward (STE);
    δ_t = Π_B(optimizer_step(δ_{t−1}, g_t)),   B = {‖δ‖_norm <= budget},

where Π_B is the exact Euclidean projection (``budget.project``) and the
optimizer is SGD (δ ← δ − lr·g), SGD with momentum 0.9 (PyTorch's convention,
v ← 0.9v + g, δ ← δ − lr·v) or Adam (β = (0.9, 0.999), ε = 1e-8, PyTorch's).
Returns ĝ = −δ_K, so w − 1·ĝ is the point it reached.

The research notes (2021-06-16) compare it with one normalised STE step of the
same budget, on full-precision and binary MLPs; "clip δ to 0.1" there is the
projection here. With ``noise`` > 0 the start is δ_0 = noise·budget·ξ/‖ξ‖_norm,
ξ ~ N(0, I) from the generator ("在原始参数之上引入一定随机噪声"). This is projected
gradient descent in a norm ball from a random start, as in Madry et al.,
"Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
(there on inputs, here on weights, with the STE in place of the gradient).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
    raise_collected,
    register_estimator,
)
from lowbit.estimators.budget import check_norm, norm_of, project
from lowbit.estimators.objective import SurrogateSpec, resolve_surrogate
from lowbit.estimators.ste import ste_gradient

OPTIMIZERS: Tuple[str, ...] = ("sgd", "sgdm", "adam")

MOMENTUM = 0.9  # "SGDm" of the notes: PyTorch SGD with the usual momentum 0.9
ADAM_BETAS = (0.9, 0.999)  # PyTorch's Adam defaults
ADAM_EPS = 1e-8


class Optimizer:
    """The update rules of ``torch.optim.SGD`` / ``SGD(momentum=0.9)`` / ``Adam`` (default settings),
    written out so that they apply to plain tensors (and skip torch.optim's seconds-long first import).

    - sgd:  p ← p − lr·g
    - sgdm: b ← g (first step), b ← μ·b + g;  p ← p − lr·b
    - adam: m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², t ← t + 1;
            p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(self, name: str, lr: float) -> None:
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r}")
        self.name, self.lr = name, float(lr)
        self.state: Dict[int, Dict[str, Any]] = {}

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """Update every tensor of ``params`` in place with its gradient."""
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.to(p.dtype)
            if self.name == "sgd":
                p.sub_(g, alpha=self.lr)
                continue
            state = self.state.setdefault(i, {})
            if self.name == "sgdm":
                buf = state.get("momentum")
                buf = g.clone() if buf is None else buf.mul_(MOMENTUM).add_(g)
                state["momentum"] = buf
                p.sub_(buf, alpha=self.lr)
                continue
            beta1, beta2 = ADAM_BETAS
            if not state:
                state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
            state["t"] += 1
            t, m, v = state["t"], state["m"], state["v"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(ADAM_EPS)
            p.addcdiv_(m, denom, value=-self.lr / (1 - beta1**t))


def make_optimizer(name: str, lr: float) -> Optimizer:
    """An optimizer by the names used in the notes: sgd, sgdm (momentum 0.9), adam."""
    return Optimizer(name, lr)


@register_estimator("multistep_ste")
class MultiStepSTE(GradientEstimator):
    """K projected optimizer steps on the STE gradient; ĝ = −δ_K (see the module docstring).

    Args:
        optimizer: ``"sgd"``, ``"sgdm"`` or ``"adam"``.
        steps: K >= 1.
        lr: the optimizer's step size (> 0).
        budget: radius of the budget ball (> 0).
        norm: ``"l2"``, ``"l1"`` or ``"linf"``.
        noise: start at radius noise·budget in a random direction, in [0, 1].
        surrogate: the STE's surrogate (see ``ste``); ``**surrogate_params`` its parameters.
    """

    param_names = ("optimizer", "steps", "lr", "budget", "norm", "noise", "surrogate")
    returns_displacement = True

    def __init__(
        self,
        optimizer: str = "sgd",
        steps: int = 10,
        lr: float = 0.01,
        budget: float = 0.1,
        norm: str = "l2",
        noise: float = 0.0,
        surrogate: SurrogateSpec = "ste",
        **surrogate_params: Any,
    ) -> None:
        errors = []
        for key, check in {
            "optimizer": lambda: check_choice("optimizer", optimizer, OPTIMIZERS),
            "steps": lambda: check_int("steps", steps, 1),
            "lr": lambda: check_positive("lr", lr),
            "budget": lambda: check_positive("budget", budget),
            "norm": lambda: check_norm(norm),
            "noise": lambda: check_fraction("noise", noise),
            "surrogate": lambda: resolve_surrogate(surrogate, **surrogate_params),
        }.items():
            try:
                value = check()
                if key == "surrogate":
                    self._surrogate = value
                    value = surrogate
                setattr(self, key, value)
            except ValueError as error:
                errors.append(str(error))
        raise_collected(errors)
        self.surrogate_params: Dict[str, Any] = dict(surrogate_params)

    def config(self) -> Dict[str, Any]:
        return {**super().config(), **self.surrogate_params}

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        w = {k: v.detach() for k, v in objective.params.items()}
        delta = {k: torch.zeros_like(v) for k, v in w.items()}
        if self.noise > 0:
            xi = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device) for k, v in w.items()}
            length = norm_of(xi, self.norm)
            if length > 0:
                delta = {k: v * (self.noise * self.budget / length) for k, v in xi.items()}
            delta = project(delta, self.budget, self.norm)  # float rounding only
        delta = {k: v.clone() for k, v in delta.items()}
        opt = make_optimizer(self.optimizer, self.lr)
        for _ in range(self.steps):
            grad = ste_gradient(objective, self._surrogate, {k: w[k] + delta[k] for k in w})
            opt.step(list(delta.values()), [grad[k] for k in delta])
            delta = project(delta, self.budget, self.norm)
        return {k: -v for k, v in delta.items()}


__all__ = ["ADAM_BETAS", "ADAM_EPS", "MOMENTUM", "MultiStepSTE", "OPTIMIZERS", "Optimizer", "make_optimizer"]
