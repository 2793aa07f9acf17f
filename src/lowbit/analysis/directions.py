"""Random directions in weight space, filter-normalised (Li et al. 2018).

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural
Nets", NeurIPS 2018, section 4. A 2-D slice of the loss around trained
weights θ is f(α, β) = L(θ + α·δ + β·η) for two random directions δ, η.
Because of the scale invariance of ReLU networks (and of anything followed by
BatchNorm), a raw Gaussian direction means very different things for filters
of different norms; *filter normalisation* rescales each filter of the
direction to the norm of the matching filter of the weights:

    d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖

for filter j of layer i. A filter is an output unit: ``weight[j]`` of a conv
weight (out, in, kh, kw) or a linear weight (out, in). 1-D parameters (biases,
BatchNorm weight and bias) are set to zero by default ("ignore biasbn" in the
authors' code); ``one_d="copy"`` uses d = θ for them (the code's other branch),
``one_d="normalize"`` treats each 1-D tensor as a single filter.

Other ``norm`` choices: ``layer`` (each tensor scaled to ‖θ_i‖ as a whole),
``none`` (raw N(0, 1) entries). Buffers (running statistics) are not
parameters and are never moved.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch

from lowbit.analysis.functional import Tree

__all__ = ["filter_norms", "normalize_direction", "random_direction"]

Norm = Literal["filter", "layer", "none"]
OneD = Literal["zero", "copy", "normalize"]


def filter_norms(tensor: torch.Tensor) -> torch.Tensor:
    """‖t_j‖₂ of each filter j (the first dimension); a 1-D tensor is one filter. Shape (out,) or (1,)."""
    if tensor.dim() <= 1:
        return tensor.detach().reshape(1, -1).norm(dim=1)  # (1,)
    return tensor.detach().reshape(tensor.shape[0], -1).norm(dim=1)  # (out,)


def _scale_filters(d: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """d with each filter rescaled to the norm of the matching filter of w."""
    shape = (-1,) + (1,) * (d.dim() - 1)  # broadcast (out,) over (out, ...)
    return d * (filter_norms(w) / (filter_norms(d) + eps)).reshape(shape)


def normalize_direction(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    norm: Norm = "filter",
    one_d: OneD = "zero",
    eps: float = 1e-10,
) -> Tree:
    """A copy of ``direction`` normalised against ``weights`` (same keys and shapes).

    ``eps`` guards a zero filter of the direction; a zero filter of the weights
    gives a zero filter of the direction (as in the authors' code).
    """
    if norm not in ("filter", "layer", "none"):
        raise ValueError(f"norm must be 'filter', 'layer' or 'none', got {norm!r}")
    if one_d not in ("zero", "copy", "normalize"):
        raise ValueError(f"one_d must be 'zero', 'copy' or 'normalize', got {one_d!r}")
    out: Tree = {}
    for name, d in direction.items():
        w = weights[name]
        if d.shape != w.shape:
            raise ValueError(f"direction {name!r} has shape {tuple(d.shape)}, the weights {tuple(w.shape)}")
        if d.dim() <= 1:
            if one_d == "zero":
                out[name] = torch.zeros_like(d)
            elif one_d == "copy":
                out[name] = w.detach().clone()
            else:
                out[name] = d * (w.norm() / (d.norm() + eps)) if norm != "none" else d.clone()
            continue
        if norm == "filter":
            out[name] = _scale_filters(d, w, eps)
        elif norm == "layer":
            out[name] = d * (w.norm() / (d.norm() + eps))
        else:
            out[name] = d.clone()
    return out


def random_direction(
    weights: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    norm: Norm = "filter",
    one_d: OneD = "zero",
) -> Tree:
    """A Gaussian direction shaped like ``weights`` (entries N(0, 1) from ``generator``), normalised.

    Tensors are drawn in the order of ``weights`` on the CPU (so a seed gives
    the same direction on any device), then moved to each weight's device.
    """
    raw = {
        name: torch.randn(w.shape, generator=generator, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        for name, w in weights.items()
    }
    return normalize_direction(raw, weights, norm, one_d)
