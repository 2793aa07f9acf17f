"""Line searches along an estimate: L(w − lr·d) on a grid of lrs, and the best point.

The notes (2021-06-16) normalise the single-step STE gradient and scan lr over
[1e-5, 1e-1] in steps of 1e-5 (10^4 lrs), keeping the best loss:

    d = ĝ / ‖ĝ‖,   L*(ĝ) = min_lr L(w − lr·d),   ΔL = L(w) − L*.

With a unit-norm direction lr is the distance moved, so the grid's upper end is
the step budget (0.1). The losses come from ``objective.line_losses`` — exact
fast paths on the toy task, chunked batched evaluation otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from lowbit.estimators.budget import NORMS, norm_of

# The notes' scan: 1e-5, 2e-5, ..., 1e-1 (lr is a distance for a unit direction).
NOTES_LR_MIN = 1e-5
NOTES_LR_MAX = 1e-1
NOTES_LR_STEP = 1e-5


def notes_lr_grid(lo: float = NOTES_LR_MIN, hi: float = NOTES_LR_MAX, step: float = NOTES_LR_STEP) -> torch.Tensor:
    """lo, lo + step, ..., hi as float64 (computed as k·step, so 1e-5·k has no accumulated error)."""
    if not (step > 0 and 0 < lo <= hi):
        raise ValueError(f"need step > 0 and 0 < lo <= hi, got lo={lo}, hi={hi}, step={step}")
    first, last = round(lo / step), round(hi / step)
    return torch.arange(first, last + 1, dtype=torch.float64) * step


def normalized(direction: Mapping[str, torch.Tensor], norm: Optional[str] = "l2") -> Dict[str, torch.Tensor]:
    """d / ‖d‖_norm over all tensors jointly (``norm=None``: unchanged); a zero direction stays zero."""
    d = {k: v.detach() for k, v in direction.items()}
    if norm is None:
        return d
    if norm not in NORMS:
        raise ValueError(f"norm must be None or one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    length = norm_of(d, norm)
    return {k: v / length if length > 0 else v.clone() for k, v in d.items()}


@dataclass(frozen=True)
class LineSearch:
    """The result of a scan: every lr and loss, the start and the best point."""

    lrs: torch.Tensor  # (n,) float64
    losses: torch.Tensor  # (n,) float64, L(w − lr·d)
    base_loss: float  # L(w)

    @property
    def decrease(self) -> torch.Tensor:
        """L(w) − L(w − lr·d) for every lr (positive = better)."""
        return self.base_loss - self.losses

    @property
    def best_index(self) -> int:
        return int(torch.argmin(self.losses))

    @property
    def best_lr(self) -> float:
        return float(self.lrs[self.best_index])

    @property
    def best_loss(self) -> float:
        return float(self.losses[self.best_index])

    @property
    def best_decrease(self) -> float:
        return self.base_loss - self.best_loss


def line_search(
    objective: Any,
    direction: Mapping[str, torch.Tensor],
    lrs: Optional[torch.Tensor] = None,
    norm: Optional[str] = "l2",
) -> LineSearch:
    """Scan L(w − lr·d) with d = direction normalised in ``norm`` (None: as given).

    ``lrs`` defaults to the notes' grid (:func:`notes_lr_grid`). Ties for the
    best loss go to the smallest lr.
    """
    grid = notes_lr_grid() if lrs is None else torch.as_tensor(lrs, dtype=torch.float64).reshape(-1)
    d = normalized(direction, norm)
    with torch.no_grad():
        base = float(objective.loss())
    return LineSearch(lrs=grid, losses=objective.line_losses(d, grid).double(), base_loss=base)


__all__ = ["LineSearch", "NOTES_LR_MAX", "NOTES_LR_MIN", "NOTES_LR_STEP", "line_search", "normalized", "notes_lr_grid"]
