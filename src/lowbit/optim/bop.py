"""Bop, the binary optimizer (Helwegen et al., NeurIPS 2019), for the latent weights of binary layers.

Bop does not move latent weights by a learning rate. Each binary weight
w in {-1, +1} keeps an exponential moving average m of its gradient g and flips
when the average is strong enough and pushes the weight towards the other sign:

    m_t = (1 - gamma) m_{t-1} + gamma g_t
    w_t = -w_{t-1}   where |m_t| > tau and sign(m_t) = sign(w_{t-1}),
          w_{t-1}    elsewhere,

i.e. flip exactly where sign(w_{t-1}) m_t > tau (for tau >= 0). The adaptivity
rate gamma sets how many steps the average remembers (about 1 / gamma), the
threshold tau how consistent the gradient must be. The paper's defaults,
also Larq's: gamma = 1e-4, tau = 1e-8.

Helwegen, Widdicombe, Geiger, Zhang, Cheng & Nusselder, "Latent Weights Do Not
Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019;
Larq's ``larq.optimizers.Bop``.

Conventions and deviations:

- The parameter is overwritten with +-1 (sign(0) = +1) at the first step, as
  Larq does; from then on it *is* the binary weight, so a weight quantizer such
  as ``xnor_weight`` sees |W| = 1 (scale 1) and ``ste_sign`` passes the gradient.
- At the boundary sign(w) m = tau exactly there is no flip (the paper's strict
  ">"). Larq's closed form sign(-sign(w m - tau) w) gives +1 there for either w.
- Larq decides the first step's flips from the raw latent value (w m > tau);
  here from sign(w). They agree once the weights are +-1.
- Schedules: gamma_t = gamma s_gamma(t) and tau_t = tau s_tau(t), where t is the
  number of Bop steps taken before this one (kept in the state dict) and the
  optional ``gamma_schedule`` / ``threshold_schedule`` are plain functions of t
  (lowbit's learning-rate schedules with peak 1 work). The paper decays gamma
  by 10x every 100 epochs on CIFAR-10.
- Bop only makes sense for binary weights. It cannot see which layer a tensor
  belongs to; use it through :class:`lowbit.optim.CaseOptimizer` or ``lowbit
  train`` (``optim.groups``), which refuse to give it any other parameter.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch.optim.optimizer import Optimizer

from lowbit.quant import hard_sign

Schedule = Callable[[int], float]


@torch.no_grad()
def bop_update_(w: torch.Tensor, m: torch.Tensor, grad: torch.Tensor, gamma: float, threshold: float) -> torch.Tensor:
    """One Bop step in place: m <- (1 - gamma) m + gamma g; w <- -sign(w) where sign(w) m > threshold, else sign(w).

    Returns the boolean mask of flipped weights (shape of ``w``).
    """
    m.mul_(1.0 - gamma).add_(grad, alpha=gamma)
    s = hard_sign(w)
    flip = s * m > threshold
    w.copy_(torch.where(flip, -s, s))
    return flip


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma <= 1.0:
        raise ValueError(f"Bop gamma (adaptivity rate) must be in (0, 1], got {gamma!r}; the paper uses 1e-4")
    return float(gamma)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (0.0 <= threshold < math.inf):
        raise ValueError(f"Bop threshold (tau) must be a finite number >= 0, got {threshold!r}; the paper uses 1e-8")
    return float(threshold)


class Bop(Optimizer):
    """Bop over binary latent weights; see the module docstring for the update and its conventions.

    Args:
        params: the binary layers' latent weights (tensors or param-group dicts;
            a group may set its own ``gamma`` / ``threshold``).
        gamma: adaptivity rate in (0, 1].
        threshold: flip threshold tau >= 0.
        gamma_schedule, threshold_schedule: optional ``f(t) -> factor`` with t the
            number of steps taken; gamma_t = gamma f(t) (clipped to (0, 1]).

    State per parameter: ``m`` (the gradient average, the parameter's shape); per
    group: ``step`` (steps taken). ``state_dict`` / ``load_state_dict`` round-trip
    both; the schedules are configuration, not state.
    """

    def __init__(
        self,
        params: Iterable[Any],
        gamma: float = 1e-4,
        threshold: float = 1e-8,
        *,
        gamma_schedule: Optional[Schedule] = None,
        threshold_schedule: Optional[Schedule] = None,
    ) -> None:
        for name, schedule in (("gamma_schedule", gamma_schedule), ("threshold_schedule", threshold_schedule)):
            if schedule is not None and not callable(schedule):
                raise ValueError(f"Bop {name} must be a function of the step or None, got {schedule!r}")
        # "lr" is ignored (Bop has no learning rate); it is there because learning-rate schedulers and
        # training loops set or read group["lr"] on every group, including a CaseOptimizer's Bop groups.
        defaults = {"gamma": _check_gamma(gamma), "threshold": _check_threshold(threshold), "step": 0, "lr": 0.0}
        super().__init__(params, defaults)
        for group in self.param_groups:  # groups may override the defaults: check theirs too
            _check_gamma(group["gamma"])
            _check_threshold(group["threshold"])
        self.gamma_schedule = gamma_schedule
        self.threshold_schedule = threshold_schedule

    def hyper_parameters(self, group: Dict[str, Any]) -> tuple[float, float]:
        """(gamma_t, tau_t) of ``group`` at its current step."""
        t = int(group["step"])
        gamma = group["gamma"] * (1.0 if self.gamma_schedule is None else float(self.gamma_schedule(t)))
        threshold = group["threshold"] * (1.0 if self.threshold_schedule is None else float(self.threshold_schedule(t)))
        return min(max(gamma, 0.0), 1.0), max(threshold, 0.0)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            gamma, threshold = self.hyper_parameters(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Bop does not support sparse gradients")
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bop_update_(p, state["m"], p.grad, gamma, threshold)
            group["step"] = int(group["step"]) + 1
        return loss


__all__ = ["Bop", "bop_update_"]
