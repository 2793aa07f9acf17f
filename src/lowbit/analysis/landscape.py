"""Loss along affine slices of weight space: 2-D landscapes and 1-D interpolations.

Both are evaluations of the loss at points of an affine subspace

    θ(c) = θ₀ + Σ_k c_k · d_k            c ∈ R^K,  K = 2 or 1

- **2-D landscape** (Li, Xu, Taylor, Studer & Goldstein, "Visualizing the
  Loss Landscape of Neural Nets", NeurIPS 2018): θ₀ the trained weights,
  d₁, d₂ random filter-normalised directions (:mod:`~lowbit.analysis.directions`),
  c = (α, β) on a grid; plotted as contours and a 3-D surface.
- **1-D interpolation** (Goodfellow, Vinyals & Saxe, "Qualitatively
  characterizing neural network optimization problems", ICLR 2015):
  θ₀ = θ_start, d = θ_end − θ_start, c = t; θ(0) = start, θ(1) = end.

:func:`evaluate_affine` evaluates the points in chunks of ``points_per_batch``:
the chunk's weight sets are built at once, stacked along a new leading
dimension, and the network is run on them either with
``torch.func.vmap(functional_call)`` (``vmap=True``: one call per chunk and
image batch; the way to go on a GPU) or with ``functional_call`` point by point
(``vmap=False``; on the CPU vmap turns every convolution into a grouped one,
measured 2-3x slower than the loop for LeNet-5). Both give the same numbers.
The images go through in batches of ``batch_size``. The loss at a point is
the mean cross-entropy over all the given images (and the accuracy their mean
correctness).

BatchNorm running statistics (``bn``):

- ``eval`` (default): the model in eval mode with the running statistics of
  θ₀'s state (the checkpoint's), unchanged at every point -- what the authors'
  code does (``net.eval()``, BN parameters not perturbed). Far from θ₀ the
  stale statistics can overstate the loss. For an interpolation the float
  buffers are interpolated along with the weights (they are part of
  ``directions`` there), so each end keeps its own statistics.
- ``batch``: BatchNorm normalises with the statistics of each evaluation
  batch (train-mode BN without running statistics; other layers in eval
  mode); nothing is stale, but the loss then depends on the batch size.
- ``recompute``: at each point the running statistics are re-estimated from
  ``bn_images`` (a cumulative average over batches, BN momentum = None), then
  the point is evaluated in eval mode. The most faithful, and point by point
  (no vmap), so the slowest.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Literal, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

__all__ = ["BNMode", "evaluate_affine", "grid_coordinates", "model_state", "recompute_bn_statistics", "state_difference"]

BNMode = Literal["eval", "batch", "recompute"]
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def grid_coordinates(x_range: Sequence[float], y_range: Sequence[float], resolution: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(xs (R,), ys (R,), coords (R·R, 2)); coords row-major with y outer: point j·R + i is (xs[i], ys[j])."""
    xs = torch.linspace(float(x_range[0]), float(x_range[1]), resolution, dtype=torch.float64)
    ys = torch.linspace(float(y_range[0]), float(y_range[1]), resolution, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (R, R) each
    return xs, ys, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)  # (R*R, 2)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


def _prepare(model: nn.Module, bn: BNMode) -> nn.Module:
    """A copy of the model in the mode the evaluation needs (the original is never touched)."""
    work = copy.deepcopy(model)
    work.eval()
    if bn == "batch" and _has_bn(work):
        replace_all_batch_norm_modules_(work)  # running stats -> None: BN always uses batch statistics
        for m in work.modules():
            if isinstance(m, _BN_TYPES):
                m.train()
    return work


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them from ``images`` (in place).

    A cumulative (equal-weight) average over the batches (momentum = None),
    as ``torch.optim.swa_utils.update_bn`` does; other layers stay in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return
    was_training = model.training
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, images.shape[0], batch_size):
        model(images[start : start + batch_size])
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)


def _chunk_weights(
    base: Mapping[str, torch.Tensor], directions: Sequence[Mapping[str, torch.Tensor]], coords: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """θ₀ + Σ_k c_k d_k for each row c of coords (C, K): {name: (C, *shape)} for the moved names."""
    names = [name for name in base if any(name in d for d in directions)]  # base's order
    out = {}
    for name in names:
        w = base[name]
        moved = w.unsqueeze(0).expand((coords.shape[0],) + tuple(w.shape)).clone()  # (C, *shape)
        for k, d in enumerate(directions):
            if name in d:
                c = coords[:, k].to(device=w.device, dtype=w.dtype).reshape((-1,) + (1,) * w.dim())  # (C, 1, ...)
                moved += c * d[name].unsqueeze(0)
        out[name] = moved
    return out


def evaluate_affine(
    model: nn.Module,
    base: Mapping[str, torch.Tensor],
    directions: Sequence[Mapping[str, torch.Tensor]],
    coords: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    batch_size: int = 256,
    points_per_batch: int = 16,
    bn: BNMode = "eval",
    bn_images: Optional[torch.Tensor] = None,
    vmap_points: bool = False,
    progress: bool = False,
    desc: str = "points",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy at each point θ₀ + Σ_k coords[p, k]·directions[k].

    Args:
        model: the architecture (its own weights and buffers are not changed).
        base: θ₀ as ``{name: tensor}``; parameters and buffers missing from it
            are taken from the model (so ``dict(model.named_parameters())`` is enough).
        directions: K dicts over (a subset of) the names of ``base``; a name
            missing from a direction does not move along it.
        coords: (P, K) coordinates.
        images, labels: (N, ...) inputs and (N,) class targets; the loss is
            ``loss_fn(logits, labels, reduction="sum") / N``.
        points_per_batch: points whose weights are built together (and run
            together with ``vmap_points``); memory only. ``bn="recompute"``
            always goes point by point.
        vmap_points: run a chunk's points in one ``torch.func.vmap`` call
            instead of a loop (same results; faster on GPUs, slower on CPUs).
        bn: BatchNorm statistics; see the module docstring.
        bn_images: images for ``bn="recompute"`` (e.g. training images).

    Returns:
        (losses (P,), accuracies (P,)) float64.
    """
    from tqdm.auto import tqdm

    if coords.dim() != 2 or coords.shape[1] != len(directions):
        raise ValueError(f"coords must be (P, {len(directions)}) for {len(directions)} directions, got {tuple(coords.shape)}")
    if bn not in ("eval", "batch", "recompute"):
        raise ValueError(f"bn must be 'eval', 'batch' or 'recompute', got {bn!r}")
    if bn == "recompute" and bn_images is None:
        raise ValueError("bn='recompute' needs bn_images (the images to re-estimate the statistics from)")
    work = _prepare(model, bn)
    state = {**dict(work.named_parameters()), **dict(work.named_buffers())}
    fixed = {name: (base[name] if name in base else t).detach() for name, t in state.items()}
    n = images.shape[0]
    losses = torch.empty(coords.shape[0], dtype=torch.float64)
    accs = torch.empty(coords.shape[0], dtype=torch.float64)
    chunk = 1 if bn == "recompute" else points_per_batch
    starts = range(0, coords.shape[0], chunk)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            c = coords[start : start + chunk]  # (C, K)
            moved = _chunk_weights(fixed, directions, c)  # {name: (C, *shape)}
            still = {name: t for name, t in fixed.items() if name not in moved}
            if bn == "recompute":
                point = {name: t[0] for name, t in moved.items()}
                work.load_state_dict({**still, **point}, strict=False)
                recompute_bn_statistics(work, bn_images, batch_size)
                loss_sum, correct = 0.0, 0
                for s in range(0, n, batch_size):
                    logits = work(images[s : s + batch_size])  # (B, K)
                    loss_sum += float(loss_fn(logits, labels[s : s + batch_size], reduction="sum"))
                    correct += int((logits.argmax(-1) == labels[s : s + batch_size]).sum())
                losses[start], accs[start] = loss_sum / n, correct / n
                continue

            def point_sums(weights: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
                logits = functional_call(work, ({**still, **weights},), (x,))  # (B, classes)
                return loss_fn(logits, y, reduction="sum"), (logits.argmax(-1) == y).sum()

            loss_sum = torch.zeros(c.shape[0], dtype=torch.float64, device=images.device)
            correct = torch.zeros(c.shape[0], dtype=torch.float64, device=images.device)
            for s in range(0, n, batch_size):
                xb, yb = images[s : s + batch_size], labels[s : s + batch_size]
                if vmap_points:
                    l, k = vmap(point_sums, in_dims=(0, None, None))(moved, xb, yb)  # (C,), (C,)
                else:
                    sums = [point_sums({name: t[q] for name, t in moved.items()}, xb, yb) for q in range(c.shape[0])]
                    l, k = torch.stack([v[0] for v in sums]), torch.stack([v[1] for v in sums])  # (C,), (C,)
                loss_sum += l.double()
                correct += k.double()
            losses[start : start + c.shape[0]] = (loss_sum / n).cpu()
            accs[start : start + c.shape[0]] = (correct / n).cpu()
    return losses, accs


def state_difference(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], names: Optional[Sequence[str]] = None
) -> Dict[str, torch.Tensor]:
    """end − start for the floating tensors among ``names`` (default: all of ``start``).

    Integer buffers (``num_batches_tracked``) never move.
    """
    names = list(start) if names is None else list(names)
    return {name: end[name] - start[name] for name in names if start[name].is_floating_point()}


def model_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached copies of parameters and buffers, in the model's order."""
    return {name: t.detach().clone() for name, t in list(model.named_parameters()) + list(model.named_buffers())}

