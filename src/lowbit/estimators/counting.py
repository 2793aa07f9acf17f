"""An Objective that counts the loss evaluations an estimator asks for (for equal-budget comparisons).

One *loss evaluation* is the loss of one parameter set on the objective's
batch, whatever path computes it: ``loss`` counts 1 (a backward through it,
as the STE takes, is not counted separately: it costs about two forwards, and
comparisons say so), ``losses`` the members, ``line_losses`` the lrs,
``coordinate_deltas`` one per coordinate and step plus one for L(w),
``flip_deltas`` one per coordinate plus one. Fast paths that compute many of
these at once (the toy's CDG) are still charged for all of them: the count is
the number of loss values the method consumed, the budget a black-box search
would need. ``evaluations`` is shared by every objective ``at`` derives.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch

from lowbit.estimators.objective import Objective, as_lr_tensor, stacked_size


class CountingObjective(Objective):
    """Wraps ``inner`` and counts loss evaluations in ``counter[0]`` (see the module docstring)."""

    def __init__(self, inner: Objective, counter: Optional[List[int]] = None) -> None:
        self.inner = inner
        self.counter = counter if counter is not None else [0]

    @property
    def evaluations(self) -> int:
        return self.counter[0]

    @property
    def params(self):  # type: ignore[override]
        return self.inner.params

    def loss(self, params: Optional[Mapping[str, torch.Tensor]] = None, surrogate: Any = None) -> torch.Tensor:
        self.counter[0] += 1
        return self.inner.loss(params, surrogate=surrogate)

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.counter[0] += stacked_size(stacked, self.params)
        return self.inner.losses(stacked)

    def line_losses(self, direction: Mapping[str, torch.Tensor], lrs: Any) -> torch.Tensor:
        self.counter[0] += len(as_lr_tensor(lrs))
        return self.inner.line_losses(direction, lrs)

    def coordinate_deltas(self, steps: Sequence[Any], params: Optional[Mapping[str, torch.Tensor]] = None):
        self.counter[0] += self.numel() * len(steps) + 1
        return self.inner.coordinate_deltas(steps, params)

    def __getattr__(self, name: str) -> Any:
        if name == "flip_deltas" and hasattr(self.inner, "flip_deltas"):
            def flip_deltas(params: Optional[Mapping[str, torch.Tensor]] = None):
                self.counter[0] += self.numel() + 1
                return self.inner.flip_deltas(params)

            return flip_deltas
        if name in ("inner", "counter"):
            raise AttributeError(name)
        return getattr(self.inner, name)  # read-only attributes of the wrapped objective (dtype, x, ...)

    def at(self, params: Mapping[str, torch.Tensor]) -> "CountingObjective":
        """The wrapped objective ``at`` new parameters, sharing this counter."""
        return CountingObjective(self.inner.at(params), self.counter)


__all__ = ["CountingObjective"]
