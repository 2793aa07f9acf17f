"""STE gradient statistics over many mini-batches: mean, variance, signal-to-noise ratio.

For one surrogate and one layer with weight w ∈ R^n, let g^(b) be the STE
gradient of the mini-batch loss L_b at the current weights, b = 1..B (i.i.d.
mini-batches). Per coordinate, with float64 sums,

    m_i = (1/B) Σ_b g_i^(b),        s_i² = 1/(B−1) Σ_b (g_i^(b) − m_i)²,

and per layer the records

    ste_mean_norm        ‖m‖                          (size of the expected step)
    ste_mean_abs         (1/n) Σ_i |m_i|
    ste_std              (1/n) Σ_i s_i                 (typical per-coordinate noise)
    ste_total_variance   Σ_i s_i²  = E‖g − m‖²         (noise of one mini-batch gradient)
    ste_snr              ‖m‖² / Σ_i s_i²               (>1: one mini-batch points mostly along the mean)
    ste_coord_snr_median median_i |m_i| / s_i          (coordinates with s_i = 0 left out)

These are the notes' "STE variance and mean on ResNet" (2021-06-16), per
surrogate, so that windows and variants can be compared by how much of a
mini-batch gradient is signal (cf. the gradient-noise scale of McCandlish et
al., "An Empirical Model of Large-Batch Training", 2018, whose B_simple is
tr Σ / ‖G‖² = 1/ste_snr at batch size 1).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.estimators.objective import ModuleObjective, resolve_surrogate
from lowbit.estimators.ste import ste_gradient


def ste_gradients(
    model: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    params: Sequence[str],
    surrogate: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> Iterable[Dict[str, torch.Tensor]]:
    """The STE gradient of ``loss_fn`` (default: the mean cross-entropy) for each mini-batch (one dict per batch)."""
    for x, y in batches:
        objective = ModuleObjective(model, (x, y), loss_fn=loss_fn, params=params)
        yield ste_gradient(objective, surrogate)


def gradient_statistics(gradients: Iterable[Mapping[str, torch.Tensor]]) -> Dict[str, Dict[str, float]]:
    """Per parameter: the statistics of the module docstring from B >= 2 gradient samples."""
    sums: Dict[str, torch.Tensor] = {}
    squares: Dict[str, torch.Tensor] = {}
    count = 0
    for grads in gradients:
        count += 1
        for name, g in grads.items():
            g = g.detach().double().reshape(-1)
            if name not in sums:
                sums[name], squares[name] = torch.zeros_like(g), torch.zeros_like(g)
            sums[name] += g
            squares[name] += g * g
    if count < 2:
        raise ValueError(f"gradient statistics need at least 2 mini-batches, got {count}")
    out: Dict[str, Dict[str, float]] = {}
    for name in sums:
        mean = sums[name] / count
        # Σ(g − m)² = Σg² − B m²; clamp the float64 rounding below zero.
        var = ((squares[name] - count * mean * mean) / (count - 1)).clamp_min(0.0)
        std = var.sqrt()
        total = float(var.sum())
        positive = std > 0
        ratio = mean.abs()[positive] / std[positive]
        out[name] = {
            "ste_mean_norm": float(mean.norm()),
            "ste_mean_abs": float(mean.abs().mean()),
            "ste_std": float(std.mean()),
            "ste_total_variance": total,
            "ste_snr": float(mean.square().sum()) / total if total > 0 else float("nan"),
            "ste_coord_snr_median": float(ratio.median()) if ratio.numel() else float("nan"),
        }
    return out


def minibatches(
    images: torch.Tensor, labels: torch.Tensor, count: int, batch_size: int, generator: torch.Generator
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``count`` i.i.d. mini-batches, each ``batch_size`` distinct images drawn uniformly."""
    if batch_size > len(labels):
        raise ValueError(f"stats.batch_size={batch_size} is larger than the split ({len(labels)} images)")
    out = []
    for _ in range(count):
        idx = torch.randperm(len(labels), generator=generator)[:batch_size]
        out.append((images[idx], labels[idx]))
    return out


def ste_statistics_records(
    model: nn.Module,
    batches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    layers: Mapping[str, str],
    surrogates: Mapping[str, Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> List[Dict[str, Any]]:
    """Records ``{estimator, probed_layer, metric, value}`` for every surrogate × layer.

    ``layers``: probed layer name -> parameter name; ``surrogates``: label ->
    surrogate spec (as :class:`lowbit.estimators.STE` takes it).
    """
    rows: List[Dict[str, Any]] = []
    names = list(layers.values())
    for label, spec in surrogates.items():
        surrogate = resolve_surrogate(spec) if isinstance(spec, (str, dict)) else spec
        stats = gradient_statistics(ste_gradients(model, batches, names, surrogate, loss_fn))
        for layer, param in layers.items():
            for metric, value in stats[param].items():
                rows.append({"estimator": label, "probed_layer": layer, "metric": metric, "value": value})
    return rows


__all__ = ["gradient_statistics", "minibatches", "ste_gradients", "ste_statistics_records"]
