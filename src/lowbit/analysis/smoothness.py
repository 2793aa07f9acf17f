"""Probing the loss along the gradient: the measurements of Santurkar et al. 2018.

Santurkar, Tsipras, Ilyas & Mądry, "How Does Batch Normalization Help
Optimization?", NeurIPS 2018, section 3.2 and Figure 4. At weights w with
mini-batch loss L and gradient g = ∇L(w), move along the descent direction
by step sizes η ∈ [η_lo, η_hi] (the paper: [1/2, 4] × the training lr):

    w_η = w − η·g

and measure, on the **same batch**,

- the *loss landscape*:           L(w_η)                    band (min, max) over η
- the *gradient predictiveness*:  ‖∇L(w_η) − ∇L(w)‖₂         band (min, max) over η
- the *effective β-smoothness*:   max_η ‖∇L(w_η) − ∇L(w)‖₂ / ‖w_η − w‖₂

β is a local estimate of the Lipschitz constant of the gradient (a function
is β-smooth iff ‖∇L(a) − ∇L(b)‖ ≤ β‖a − b‖). For a quadratic
L(w) = ½ wᵀAw it is exactly the curvature along g, ‖A g‖ / ‖g‖ (A symmetric),
whatever η — the check in ``tests/test_analysis.py``.

Two details that public reproductions often get wrong, done right here:

- gradients come from ``torch.autograd.grad`` at every probe (nothing
  accumulates in ``.grad``: no forgotten ``zero_grad``);
- β divides by the distance **actually moved**, ‖w_η − w‖ computed from the
  moved tensors (float32 rounding included), not by the nominal η or η·‖g‖.

BatchNorm. Probes run in **train mode** on the training step's batch (so BN
normalises with that batch's statistics, as the training step does) with
*copies* of the running statistics (:mod:`lowbit.analysis.functional`):
probing never changes the model's ``running_mean``/``running_var``. The
notes' variant (section 2.3) compared gradients of *consecutive* steps on
*different* batches, which mixes batch noise into the measurement; this is
the paper's same-batch version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from lowbit.analysis.functional import LossFn, buffers_of, loss_and_grad, params_of, tree_norm, tree_sub

__all__ = ["GradientProbe", "probe_gradient_direction", "step_sizes"]


def step_sizes(lr: float, eta_range: Sequence[float], num: int, spacing: str = "geometric") -> List[float]:
    """``num`` step sizes η = m·lr for multipliers m spanning ``eta_range`` = [m_lo, m_hi].

    ``geometric``: m_lo·(m_hi/m_lo)^(i/(num−1)) (0.5, 1, 2, 4 for num = 4); ``linear``: evenly spaced.
    One step gives m_hi.
    """
    lo, hi = float(eta_range[0]), float(eta_range[1])
    if not (lr > 0 and 0 < lo <= hi and num >= 1):
        raise ValueError(f"need lr > 0, 0 < low <= high and num >= 1, got lr={lr}, eta_range={list(eta_range)}, num={num}")
    if num == 1:
        return [hi * lr]
    if spacing == "geometric":
        mults = [lo * (hi / lo) ** (i / (num - 1)) for i in range(num)]
    elif spacing == "linear":
        mults = [lo + (hi - lo) * i / (num - 1) for i in range(num)]
    else:
        raise ValueError(f"spacing must be 'geometric' or 'linear', got {spacing!r}")
    return [m * lr for m in mults]


@dataclass
class GradientProbe:
    """The measurements along −g at one point w, one list entry per step size."""

    loss: float  # L(w)
    grad_norm: float  # ‖g‖₂
    etas: List[float] = field(default_factory=list)  # η
    losses: List[float] = field(default_factory=list)  # L(w − η g)
    grad_diffs: List[float] = field(default_factory=list)  # ‖∇L(w − η g) − g‖₂
    distances: List[float] = field(default_factory=list)  # ‖(w − η g) − w‖₂, as moved

    @property
    def ratios(self) -> List[float]:
        """‖∇L(w_η) − g‖ / ‖w_η − w‖ per η (NaN where nothing moved)."""
        return [d / m if m > 0 else math.nan for d, m in zip(self.grad_diffs, self.distances)]

    @property
    def beta(self) -> float:
        """Effective β-smoothness: the largest ratio (NaN if no probe moved)."""
        finite = [r for r in self.ratios if not math.isnan(r)]
        return max(finite) if finite else math.nan

    @property
    def loss_band(self) -> tuple[float, float]:
        return min(self.losses), max(self.losses)

    @property
    def grad_diff_band(self) -> tuple[float, float]:
        return min(self.grad_diffs), max(self.grad_diffs)

    def records(self) -> List[Dict[str, float]]:
        """One flat record per step size."""
        return [
            {
                "eta": eta,
                "loss_at_w": self.loss,
                "grad_norm": self.grad_norm,
                "loss": loss,
                "grad_diff": diff,
                "distance": dist,
                "ratio": ratio,
            }
            for eta, loss, diff, dist, ratio in zip(self.etas, self.losses, self.grad_diffs, self.distances, self.ratios)
        ]


def probe_gradient_direction(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    etas: Sequence[float],
    *,
    train_mode: bool = True,
    seed: Optional[int] = None,
) -> GradientProbe:
    """Loss and gradient along w − η·∇L(w) on the batch (x, y), for each η in ``etas``.

    Args:
        model: the network at its current weights w (left unchanged: weights,
            buffers, ``.grad`` and train/eval mode are as before the call).
        x, y: the batch, (B, ...) inputs and targets for ``loss_fn(model(x), y)``.
        etas: step sizes η > 0 (absolute, e.g. from :func:`step_sizes`).
        train_mode: evaluate in train mode (BatchNorm uses the batch's
            statistics; the default, as in training) or eval mode.
        seed: RNG seed for every forward pass (same dropout masks at every point).

    Cost: 1 + len(etas) forward/backward passes.
    """
    was_training = model.training
    model.train(train_mode)
    try:
        w = params_of(model)
        buffers = buffers_of(model)
        loss0, g = loss_and_grad(model, w, buffers, x, y, loss_fn, seed)
        probe = GradientProbe(loss=float(loss0), grad_norm=tree_norm(g))
        for eta in etas:
            moved = {name: w[name] - eta * g[name] for name in w}
            distance = tree_norm(tree_sub(moved, w))  # the distance actually moved (float32 rounding included)
            loss, g_eta = loss_and_grad(model, moved, buffers, x, y, loss_fn, seed)
            probe.etas.append(float(eta))
            probe.losses.append(float(loss))
            probe.grad_diffs.append(tree_norm(tree_sub(g_eta, g)))
            probe.distances.append(distance)
        return probe
    finally:
        model.train(was_training)
