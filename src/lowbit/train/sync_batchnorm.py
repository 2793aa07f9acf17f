"""BatchNorm with statistics over every rank's part of the batch, on CPU (gloo) as on CUDA.

``torch.nn.SyncBatchNorm`` accepts only GPU inputs; this module computes the
same thing with plain tensor ops and ``all_reduce``, so a model trained by
several CPU processes normalises by the statistics of the *global* batch, as
one process would. Per channel c, over all ranks' samples (n in all):

    mean_c = Σx / n,   var_c = Σx² / n − mean_c²   (sums accumulated in float64)
    y = (x − mean_c) / √(var_c + ε) · γ_c + β_c
    running_mean ← (1 − m) running_mean + m mean_c,   running_var ← (1 − m) running_var + m var_c n/(n − 1)

and the backward pass (Ioffe & Szegedy 2015, eq. for ∂ℓ/∂x, with the sums
all-reduced as torch's SyncBatchNorm does)::

    ∂x = γ / √(var + ε) · (∂y − Σ∂y / n − (x − mean) · Σ(∂y · (x − mean)) / ((var + ε) n))

∂γ = Σ ∂y · x̂ and ∂β = Σ ∂y stay local: DistributedDataParallel averages them
over ranks like every other parameter gradient. On CUDA,
:func:`convert_sync_batchnorm` uses ``torch.nn.SyncBatchNorm`` itself.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, group: Any):
        channels = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.double()
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), x.new_tensor([x.numel() // channels], dtype=torch.float64)])
        dist.all_reduce(local, group=group)  # (2C + 1,): Σx, Σx², n over every rank
        n = local[-1]
        mean64 = local[:channels] / n
        var64 = (local[channels : 2 * channels] / n - mean64 * mean64).clamp_min(0.0)
        shape = [1, channels] + [1] * (x.dim() - 2)
        mean, invstd = mean64.to(x.dtype), torch.rsqrt(var64 + eps).to(x.dtype)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.group, ctx.n = group, float(n)
        return xhat * weight.view(shape) + bias.view(shape), mean64, var64 * n / max(float(n) - 1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor, _mean: Any, _var: Any):
        xhat, weight, invstd = ctx.saved_tensors
        channels = grad_y.shape[1]
        dims = [d for d in range(grad_y.dim()) if d != 1]
        shape = [1, channels] + [1] * (grad_y.dim() - 2)
        sum_dy = grad_y.sum(dims)  # (C,)
        sum_dy_xhat = (grad_y * xhat).sum(dims)  # (C,)
        grad_weight, grad_bias = sum_dy_xhat.clone(), sum_dy.clone()  # local: DDP averages them
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=ctx.group)
        mean_dy, mean_dy_xhat = (both / ctx.n).split(channels)
        grad_x = (weight * invstd).view(shape) * (grad_y - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape))
        return grad_x, grad_weight, grad_bias, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm of any dimension whose training statistics span all ranks of ``group``.

    Outside training, without an initialised process group or with one rank, it
    is an ordinary BatchNorm (``F.batch_norm``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, group: Any = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1
        if not synced:
            return super().forward(x)
        if not (self.affine and self.track_running_stats and self.momentum is not None):
            raise ValueError("lowbit's SyncBatchNorm needs affine=True, track_running_stats=True and a momentum")
        y, mean, var_unbiased = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.group)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(mean.to(self.running_mean.dtype), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(var_unbiased.to(self.running_var.dtype), alpha=self.momentum)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised across ranks: torch's on CUDA, this module's on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                synced.weight.copy_(module.weight)
                synced.bias.copy_(module.bias)
        if module.track_running_stats:
            synced.running_mean.copy_(module.running_mean)
            synced.running_var.copy_(module.running_var)
            synced.num_batches_tracked.copy_(module.num_batches_tracked)
        synced.train(module.training)
        return synced
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child))
    return module
