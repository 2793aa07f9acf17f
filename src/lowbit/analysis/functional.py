"""The functional core of the analyses: a model's loss and gradient at *given* weights.

Every analysis asks "what are L(w') and ∇L(w') at some other weights w'?"
without disturbing the model it was handed. :func:`loss_and_grad` answers it
with :func:`torch.func.functional_call`:

- the weights are a dict ``{name: tensor}``; the module's own parameters are
  never written, so nothing has to be restored afterwards;
- the buffers (BatchNorm running statistics) are **copies**: in train mode
  BatchNorm normalises with the batch statistics and updates its running
  statistics *in place*; here the update lands in the throw-away copies, so
  probing never changes the model's running statistics;
- the gradient comes from :func:`torch.autograd.grad`, which returns it
  instead of accumulating into ``.grad``: gradients of successive probes
  cannot add up (the "forgot to zero the gradients" bug of many public
  reproductions cannot happen);
- ``seed``: forward passes run under a forked RNG seeded with it, so layers
  with randomness (dropout) draw the same masks at every probed point.

Weight dicts ("trees") are plain ``dict[str, Tensor]``; :func:`tree_norm` and
friends do the vector arithmetic on them in float64 sums.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "LossFn",
    "Tree",
    "buffers_of",
    "forked_rng",
    "loss_and_grad",
    "loss_at",
    "params_of",
    "tree_axpy",
    "tree_dot",
    "tree_norm",
    "tree_sub",
]

Tree = Dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> scalar


def params_of(model: nn.Module) -> Tree:
    """Detached copies of the model's parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def buffers_of(model: nn.Module) -> Tree:
    """Detached copies of the model's buffers (BatchNorm running stats), by name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@contextlib.contextmanager
def forked_rng(seed: Optional[int]) -> Iterator[None]:
    """Run the block with torch's RNG seeded with ``seed`` (CPU and current CUDA device), restoring it after; no-op for None."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []  # the CUDA stream too
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _call(model: nn.Module, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x: torch.Tensor):
    copies = {name: b.clone() for name, b in buffers.items()}  # running-stat updates land here, then vanish
    return functional_call(model, (dict(params), copies), (x,))


def loss_at(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    seed: Optional[int] = None,
) -> torch.Tensor:
    """L(params) on the batch (x, y) in the model's current mode, without gradient; a 0-d tensor."""
    with torch.no_grad(), forked_rng(seed):
        return loss_fn(_call(model, params, buffers, x), y).detach()


def loss_and_grad(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    seed: Optional[int] = None,
) -> Tuple[torch.Tensor, Tree]:
    """(L(params), ∇L(params)) on the batch (x, y), in the model's current mode.

    Neither the module's parameters, its buffers nor any ``.grad`` change.
    Parameters the loss does not depend on get a zero gradient.
    """
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    with torch.enable_grad(), forked_rng(seed):
        loss = loss_fn(_call(model, leaves, buffers, x), y)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    tree = {name: (torch.zeros_like(p) if g is None else g.detach()) for (name, p), g in zip(leaves.items(), grads)}
    return loss.detach(), tree


def tree_sub(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Tree:
    """a − b, key by key."""
    return {name: a[name] - b[name] for name in a}


def tree_axpy(alpha: float, x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> Tree:
    """y + alpha·x, key by key (keys of y missing from x are copied)."""
    return {name: (y[name] + alpha * x[name]) if name in x else y[name] for name in y}


def tree_dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """⟨a, b⟩ summed in float64."""
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def tree_norm(a: Mapping[str, torch.Tensor]) -> float:
    """‖a‖₂ over all tensors, summed in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in a.values()))
