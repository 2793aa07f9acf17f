"""The honest NaN stop: a checkpoint is written only of a finite model.

The loop checks the training loss before every backward pass; that alone
misses an update that makes the weights non-finite on the *last* step of an
epoch, which evaluation and the checkpoint follow. So before every checkpoint
(end of epoch, and the mid-epoch one of a graceful stop) the model's
parameters and buffers and the test loss are checked too; the first
non-finite one stops the run without saving, and the message says where it
went wrong and which checkpoint is kept (:class:`KeptCheckpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["KeptCheckpoint", "TrainingDiverged", "check_checkpointable", "divergence_fix", "nonfinite_tensor"]


class TrainingDiverged(RuntimeError):
    """The loss, the test loss or the weights became NaN or infinite; the last good checkpoint was kept."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class KeptCheckpoint:
    """The checkpoint on disk that a diverged run leaves: where it is and what it holds."""

    path: Path
    epoch: Optional[int] = None  # epochs completed (0-based epoch index of a mid-epoch one)
    step: Optional[int] = None  # optimizer steps taken
    position: int = 0  # next batch of the epoch (0: an end-of-epoch checkpoint)

    def saved(self, epoch: int, step: int, position: int) -> None:
        self.epoch, self.step, self.position = epoch, step, position

    def describe(self) -> str:
        if self.step is None:
            return "no checkpoint was written yet"
        if self.position == 0:
            at = f"end of epoch {self.epoch}, step {self.step}" if self.epoch else "before the first step"
        else:
            at = f"epoch {self.epoch + 1} after batch {self.position}, step {self.step}"
        return f"the last good checkpoint {str(self.path)!r} ({at}) is kept"


def nonfinite_tensor(tensors: Union[Mapping[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]]) -> Optional[Tuple[str, float]]:
    """``(name, a bad value)`` of the first floating-point tensor holding NaN or ±inf, else None."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, tensor in items:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = ~torch.isfinite(tensor)
            if bool(bad.any()):
                return name, float(tensor[bad].flatten()[0])
    return None


def divergence_fix(lr: float, grad_clip: Optional[float]) -> str:
    """The usual cures, with the run's own values."""
    clip = f"lower optim.grad_clip (now {grad_clip})" if grad_clip else "set optim.grad_clip (e.g. optim.grad_clip=1.0)"
    return f"Likely fix: lower the learning rate (optim.lr={lr:g}; try {lr / 10:g}), {clip}, or add warm-up (schedule.warmup_epochs=1)."


def check_checkpointable(
    model: nn.Module,
    *,
    epoch: int,
    step: int,
    batch: int,
    steps_per_epoch: int,
    test_loss: Optional[float],
    kept: KeptCheckpoint,
    run_dir: Path,
    lr: float,
    grad_clip: Optional[float],
) -> None:
    """Raise :class:`TrainingDiverged` unless the model (and ``test_loss``) are finite.

    ``epoch`` is 0-based, ``batch`` the batches of it done, ``step`` the optimizer
    steps taken; they name the update after which the state went bad.
    """
    bad = nonfinite_tensor(model.state_dict())
    where = f"after step {step} (epoch {epoch + 1}, batch {batch} of {steps_per_epoch})"
    if bad is not None:
        name, value = bad
        problem = f"the weights hold {value} ({name!r}) {where}"
    elif test_loss is not None and not torch.isfinite(torch.tensor(test_loss)):
        problem = f"the test loss is {test_loss} {where}, with finite weights that overflow in the forward pass"
    else:
        return
    raise TrainingDiverged(
        f"training diverged: {problem}; stopped without saving, {kept.describe()}. {divergence_fix(lr, grad_clip)}",
        run_dir,
    )
