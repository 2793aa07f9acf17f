"""Run under torchrun with 2 ranks: lowbit's SyncBatchNorm against one process's BatchNorm on the whole batch.

Writes OUT/rank<r>.json with the largest differences found.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lowbit.train.distributed import from_environment
from lowbit.train.sync_batchnorm import convert_sync_batchnorm

out = Path(sys.argv[1])
rank = from_environment()
rank.start(torch.device("cpu"))
torch.manual_seed(0)
reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2), nn.BatchNorm1d(2))
synced = convert_sync_batchnorm(nn.Sequential(*[m for m in __import__("copy").deepcopy(reference)]), torch.device("cpu"))
x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
part = rank.local_part(torch.arange(8))

x_ref = x.clone().requires_grad_(True)
full = reference(x_ref)
full.square().mean().backward()  # the single process's loss: the mean over the global batch
x_local = x[part].clone().requires_grad_(True)
y_local = synced(x_local)
y_local.square().mean().backward()  # each rank's loss: the mean over its part
for p in synced.parameters():  # what DistributedDataParallel does: average the gradients
    dist.all_reduce(p.grad)
    p.grad /= rank.world_size

diff = {
    "output": (y_local - full[part]).abs().max().item(),
    "input_grad": (x_local.grad / rank.world_size - x_ref.grad[part]).abs().max().item(),
    "param_grad": max((a.grad - b.grad).abs().max().item() for a, b in zip(synced.parameters(), reference.parameters())),
    "running": max((a - b).abs().max().item() for a, b in zip(synced.buffers(), reference.buffers()) if a.dtype.is_floating_point),
    "synced_modules": sum(type(m).__name__ == "SyncBatchNorm" for m in synced.modules()),
}
(out / f"rank{rank.rank}.json").write_text(json.dumps(diff))
rank.stop()
