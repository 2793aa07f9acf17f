"""The functional core of DessiLBI: proximal maps, update directions, one step.

Everything here is a plain function of tensors (and of the per-parameter state
dicts it updates in place, as ``torch.optim.sgd.sgd`` updates its momentum
buffers); :class:`lowbit.optim.DessiLBI` only holds configuration and state and
calls :func:`dessilbi_step`. The equations, with ν written ``mu`` as in the
public implementation, are in :func:`dessilbi_step` and in ``docs/dessilbi.md``.

Reference: Y. Fu, C. Liu, D. Li, X. Sun, J. Zeng, Y. Yao, "DessiLBI: Exploring
Structural Sparsity of Deep Networks via Differential Inclusion Paths",
ICML 2020 (arXiv:2007.02010); public code: github.com/DessiLBI2020/DessiLBI
(``slbi_opt.py``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

__all__ = [
    "GROUP_LASSO_MODES",
    "adam_direction",
    "dessilbi_step",
    "group_shrink",
    "init_lbi_state",
    "prox",
    "resolve_group_lasso",
    "sgd_direction",
    "shrink",
    "zero_groups",
]

GROUP_LASSO_MODES = ("auto", "elementwise", "filter")


def shrink(z: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Elementwise soft-thresholding, the proximal map of λ‖·‖₁.

        shrink(z, λ) = sign(z) · max(|z| − λ, 0)

    >>> shrink(torch.tensor([-3.0, -0.5, 0.0, 1.0, 2.5]), 1.0)
    tensor([-2.0000, -0.0000,  0.0000,  0.0000,  1.5000])
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    return torch.sign(z) * torch.clamp(z.abs() - lam, min=0)


def group_shrink(z: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Group soft-thresholding over slices along dim 0 (one group per output filter).

    The proximal map of the group lasso λ Σ_g ‖z_g‖₂ with z_g = z[g] (for a
    conv weight (out, in, kh, kw), z_g is the whole g-th filter):

        group_shrink(z, λ)_g = z_g · max(1 − λ / ‖z_g‖₂, 0)

    A group with ‖z_g‖₂ ≤ λ (in particular an all-zero group) maps to exactly 0.
    As in the public code (``shrink_group``), groups are the rows of
    ``z.reshape(z.shape[0], -1)``; a 1-D tensor therefore has one-element
    groups and this reduces to :func:`shrink`.
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if z.dim() == 0:
        return shrink(z, lam)
    flat = z.reshape(z.shape[0], -1)  # (groups, entries per group)
    norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)  # (groups, 1)
    # max(1 − λ/‖z_g‖, 0); a zero norm gives −inf before the clamp, i.e. factor 0, never NaN.
    factor = torch.clamp(1 - lam / norms, min=0)
    return (flat * factor).reshape(z.shape)


def resolve_group_lasso(mode: str, tensor: torch.Tensor) -> str:
    """The sparsity structure used for ``tensor``: ``"elementwise"`` or ``"filter"``.

    ``"auto"`` picks ``"filter"`` for tensors with 3 or more dimensions
    (convolution weights (out, in, *kernel)) and ``"elementwise"`` otherwise
    (linear weights), which is what the public code does for 4-D and 2-D weights.
    """
    if mode == "auto":
        return "filter" if tensor.dim() >= 3 else "elementwise"
    if mode not in GROUP_LASSO_MODES:
        raise ValueError(f"group_lasso must be one of {GROUP_LASSO_MODES}, got {mode!r}")
    return mode


def prox(z: torch.Tensor, lam: float, mode: str) -> torch.Tensor:
    """:func:`shrink` for ``mode="elementwise"``, :func:`group_shrink` for ``"filter"`` (``"auto"`` resolved by dim)."""
    mode = resolve_group_lasso(mode, z)
    return group_shrink(z, lam) if mode == "filter" else shrink(z, lam)


def sgd_direction(
    grad: torch.Tensor,
    buf: Optional[torch.Tensor],
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The heavy-ball direction of ``torch.optim.SGD`` and the new momentum buffer.

        b₁ = g₁;  b_t = m·b_{t−1} + (1 − dampening)·g_t
        d_t = g_t + m·b_t  (Nesterov)   or   d_t = b_t

    ``buf`` is updated in place (None on the first step: a new buffer is
    returned). With ``momentum == 0`` the direction is ``grad`` and the buffer
    stays None. The operations are those of ``torch.optim.sgd`` so that the
    results agree bit for bit.
    """
    if momentum == 0:
        return grad, buf
    if buf is None:
        buf = torch.clone(grad).detach()
    else:
        buf.mul_(momentum).add_(grad, alpha=1 - dampening)
    d = grad.add(buf, alpha=momentum) if nesterov else buf
    return d, buf


def adam_direction(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    *,
    betas: Tuple[float, float],
    eps: float,
) -> torch.Tensor:
    """The bias-corrected Adam direction (Kingma & Ba, ICLR 2015); moments updated in place.

        m_t = β₁ m_{t−1} + (1 − β₁) g_t,   v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        m̂_t = m_t / (1 − β₁ᵗ),   v̂_t = v_t / (1 − β₂ᵗ)
        d_t = m̂_t / (√v̂_t + ε)

    ``step`` is t ≥ 1 (the caller increments it). This is the direction of the
    notes' ``slbi_opt.py`` Adam variant (section 3.2), where the step size
    lr·κ multiplies d_t.
    """
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)  # √v̂ + ε
    return exp_avg.div(denom).div_(bias_correction1)  # m̂ / (√v̂ + ε)


def dessilbi_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[Dict[str, Any]],
    *,
    lr: float,
    kappa: float,
    mu: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    adam: bool,
    betas: Tuple[float, float],
    eps: float,
    group_lasso: str = "auto",
    track_gamma: bool = True,
) -> None:
    """One DessiLBI step on ``params`` (updated in place), Fu et al. ICML 2020, Algorithm 1.

    For each parameter W with gradient g (``weight_decay`` added first, as in
    ``torch.optim.SGD``: g ← g + λ_wd·W) the direction d is the SGD momentum
    direction (:func:`sgd_direction`) or, with ``adam=True``, the Adam direction
    (:func:`adam_direction`). A parameter whose state holds ``"z"`` and
    ``"gamma"`` (registered for sparsity) takes the split LBI step on the
    loss L̄(W, Γ) = L(W) + ‖W − Γ‖² / (2μ):

        W_{k+1} = W_k − lr·κ·(d_k + (W_k − Γ_k)/μ)
        Z_{k+1} = Z_k − (lr/μ)·(Γ_k − W_k)
        Γ_{k+1} = κ · prox(Z_{k+1}, 1)

    with prox = :func:`shrink` (``group_lasso="elementwise"``) or
    :func:`group_shrink` over output filters (``"filter"``); ``"auto"``
    chooses by tensor dim (:func:`resolve_group_lasso`). Both Z and W use the
    old Γ_k and W_k. Every other parameter (and every parameter when
    ``track_gamma`` is False) takes the plain step W ← W − lr·κ·d, i.e.
    ``torch.optim.SGD`` / ``Adam`` with learning rate lr·κ. μ = ∞ is allowed:
    the coupling vanishes, Z stays 0 and the W step is the plain one.

    ``states[i]`` is parameter i's state dict, read and updated in place:
    ``"momentum_buffer"`` (SGD flavour), ``"step"``, ``"exp_avg"``,
    ``"exp_avg_sq"`` (Adam flavour), ``"z"``, ``"gamma"`` (registered).

    Deviations from the public ``slbi_opt.py``: weight decay is added to the
    gradient before the momentum buffer (there it is added to the buffer
    itself, after the momentum update, and only to non-BN tensors of dim > 1;
    choose per group here instead); Nesterov momentum and the Adam direction
    (notes section 3.2) are additions; ``"auto"`` grouping also gives
    filter-wise sparsity to 3-D and 5-D weights, which the public code leaves
    at Γ = 0.
    """
    if not (len(params) == len(grads) == len(states)):
        raise ValueError(
            f"params, grads and states must have equal lengths, got {len(params)}, {len(grads)}, {len(states)}"
        )
    lr_kappa = lr * kappa  # one Python float, as torch.optim.SGD(lr=lr*kappa) would see it
    for param, grad, state in zip(params, grads, states):
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if adam:
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
            d = adam_direction(grad, state["exp_avg"], state["exp_avg_sq"], state["step"], betas=betas, eps=eps)
        else:
            d, buf = sgd_direction(
                grad, state.get("momentum_buffer"), momentum=momentum, dampening=dampening, nesterov=nesterov
            )
            if buf is not None:
                state["momentum_buffer"] = buf
        if track_gamma and "z" in state:
            z, gamma = state["z"], state["gamma"]
            w_old = param.detach().clone()
            param.add_(d + (w_old - gamma) / mu, alpha=-lr_kappa)  # W − lr·κ·(d + (W − Γ)/μ)
            z.add_(gamma - w_old, alpha=-(lr / mu))  # Z − (lr/μ)(Γ − W)
            gamma.copy_(kappa * prox(z, 1.0, resolve_group_lasso(group_lasso, param)))  # κ·prox(Z, 1)
        else:
            param.add_(d, alpha=-lr_kappa)


def init_lbi_state(param: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Z₀ = 0 and Γ₀ = 0, as in the paper's Algorithm 1 and the public ``initialize_slbi``."""
    return {"z": torch.zeros_like(param.detach()), "gamma": torch.zeros_like(param.detach())}


def zero_groups(gamma: torch.Tensor, mode: str) -> Tuple[int, int]:
    """``(number of zero groups, number of groups)`` of Γ: entries (elementwise) or output filters (filter)."""
    if resolve_group_lasso(mode, gamma) == "filter" and gamma.dim() > 0:
        nonzero = gamma.reshape(gamma.shape[0], -1).ne(0).any(dim=1)  # (filters,)
    else:
        nonzero = gamma.ne(0).reshape(-1)
    return int(nonzero.numel() - nonzero.sum()), int(nonzero.numel())

