"""One training run over several processes: ``torchrun --nproc_per_node N -m lowbit train CONFIG``.

torchrun starts N processes and sets the rendezvous variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`from_environment` reads them and the training loop then runs as one
process would, with the work of each step divided:

- **data**: every rank draws the same seeded permutation and the same global
  batch of ``data.batch_size`` images, augments the whole batch with the same
  generator (so every random draw is the one a single process makes) and keeps
  its own contiguous slice of ``batch_size / world_size`` images;
- **gradients**: ``DistributedDataParallel`` averages them over ranks, which
  equals the gradient of the mean loss over the global batch;
- **BatchNorm**: per rank by default; ``model.sync_bn: true`` normalises by the
  statistics of the global batch (:mod:`lowbit.train.sync_batchnorm`), as one
  process does;
- **metrics**: loss sums, correct counts and test-set sums are all-reduced;
- **files**: rank 0 alone writes the run directory and checkpoints; a resumed
  run's ranks all read rank 0's checkpoint (one machine, or a shared filesystem).

Backends: gloo on CPU, nccl on CUDA (``LOCAL_RANK`` picks the GPU).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Distributed:
    """This process's place in a multi-process run, and the collectives the loop needs."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs, else the CPU."""
        if name.startswith("cuda"):
            gpus = torch.cuda.device_count()
            if torch.cuda.is_available() and self.local_rank >= gpus:
                raise ValueError(
                    f"run.device={name!r} under torchrun puts rank LOCAL_RANK={self.local_rank} on cuda:{self.local_rank}, "
                    f"but this machine has {gpus} CUDA device(s); start at most {gpus} ranks per machine "
                    f"(torchrun --nproc_per_node {gpus}), or use run.device=cpu (gloo)"
                )
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    def start(self, device: torch.device, timeout_s: float = 1800.0) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA); returns once every rank has joined."""
        if dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def stop(self, wait_for_all: bool = False) -> None:
        """Leave the process group. ``wait_for_all`` (a run that ended normally on every rank): a barrier first,
        so that no rank tears its connections down while another still uses them (without it about one 2-rank
        gloo run in 8 aborted in the teardown, "terminate called without an active exception", on a 2-core machine)."""
        if dist.is_initialized():
            if wait_for_all:
                dist.barrier()
            dist.destroy_process_group()

    def local_part(self, indices: torch.Tensor) -> slice:
        """This rank's contiguous slice of a global batch of ``len(indices)`` (divisible by the world size)."""
        part = indices.shape[0] // self.world_size
        return slice(self.rank * part, (self.rank + 1) * part)

    def sum(self, values: Sequence[float], device: torch.device) -> List[float]:
        """Element-wise sums over ranks (float64, so counts and loss sums stay exact)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (a stop request seen by one rank stops all)."""
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (e.g. the run directory rank 0 just made)."""
        box = [text]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def from_environment(environ: Optional[Dict[str, str]] = None) -> Optional[Distributed]:
    """The rank set by torchrun, or None for a plain single-process run.

    A partial set of rendezvous variables is an error naming the missing ones
    (a run started by hand with ``WORLD_SIZE`` but no ``MASTER_ADDR`` would
    otherwise hang or fail deep inside torch).
    """
    env = os.environ if environ is None else environ
    present = [k for k in RENDEZVOUS if k in env]
    if not present:
        return None
    missing = [k for k in RENDEZVOUS if k not in env]
    if missing:
        raise ValueError(
            f"a distributed run needs the rendezvous variables {', '.join(RENDEZVOUS)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Start it with torchrun: "
            "torchrun --nproc_per_node N -m lowbit train CONFIG ..."
        )
    try:
        rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    except ValueError as error:
        raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {error}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not make a valid rank")
    if world == 1:
        return None  # torchrun --nproc_per_node 1: an ordinary run
    return Distributed(rank, local_rank, world)


def check_divisible(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size={batch_size} is not divisible by the world size {world_size}: every rank takes "
            f"batch_size / world_size images of each global batch; use e.g. data.batch_size="
            f"{max(world_size, batch_size // world_size * world_size)}"
        )
