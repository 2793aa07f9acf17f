"""``run.precision``: the autocast context of a training step and, for fp16, dynamic loss scaling.

- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast(device, bfloat16)``; bf16 keeps fp32's exponent range,
  so gradients need no scaling.
- ``fp16``: ``torch.autocast(device, float16)`` with dynamic loss scaling
  (Micikevicius et al., "Mixed Precision Training", ICLR 2018), for GPUs without
  bf16 (V100, T4, consumer cards before Ampere). float16's smallest normal number is
  6.1e-5, so small gradients would flush to zero in the backward pass: the loss is
  multiplied by a scale S (a power of 2, 65536 at first) before ``backward``, the
  gradients are divided by S before the optimizer uses them, and a step whose
  gradients overflowed (inf or NaN) is skipped and S halved; after 2000 steps
  without overflow S doubles (``torch.amp.GradScaler``'s defaults).

In every mode the weights, the optimizer state and the loss stay fp32. S and its
counter are part of a checkpoint, so a resumed fp16 run continues with the scale
the interrupted one had (an exact resume).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """One run's precision: ``autocast()`` for the forward, ``backward`` / ``unscale`` / ``step`` for the update."""

    def __init__(self, name: str, device: torch.device):
        if name not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"run.precision must be fp32, bf16 or fp16, got {name!r}")
        self.name = name
        self.dtype = AUTOCAST_DTYPES.get(name)
        self.device_type = device.type
        self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler(device.type) if name == "fp16" else None

    @property
    def autocast(self) -> Callable[[], ContextManager[Any]]:
        """A callable giving the forward's autocast context (a null context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext
        return lambda: torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def loss_scale(self) -> float:
        """S: what the gradients of a backward pass are multiplied by (1 unless fp16)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by S now (before clipping them); ``step`` then does not divide again."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step; False when fp16 skipped it (overflowed gradients) and lowered S."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)  # unscales (unless unscale did), skips the step on inf / NaN
        self.scaler.update()
        return not self.scaler.get_scale() < before

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


__all__ = ["AUTOCAST_DTYPES", "Precision"]
