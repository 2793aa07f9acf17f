"""The coordinate discrete gradient: finite differences along every studied coordinate.

    central:  ĝ_i = [L(w + ε e_i) − L(w − ε e_i)] / (2ε)
    forward:  ĝ_i = [L(w + ε e_i) − L(w)] / ε

For a binary network L is piecewise constant in w, so ε sets the scale of the
"gradient": only samples whose activations flip within ±ε of the current
weights contribute. The research notes (2021-04-30, 2021-05-17) use it as the
reference direction (ε searched per dimension, 0.1 by default); it is the
classical coordinate-wise finite-difference gradient (e.g. Nocedal & Wright,
"Numerical Optimization", 2nd ed., §8.1), with ε far from infinitesimal. The loss changes come from
``objective.coordinate_deltas`` (exact fast paths on the toy task, chunked
batched evaluation otherwise).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lowbit.estimators.base import GradientEstimator, Params, check_bool, check_positive, register_estimator, validated


def coordinate_deltas(objective: Any, steps, params=None) -> Params:
    """``objective.coordinate_deltas`` if it has one, else the generic batched path."""
    method = getattr(objective, "coordinate_deltas", None)
    if method is not None:
        return method(steps, params)
    from lowbit.estimators.objective import generic_coordinate_deltas

    return generic_coordinate_deltas(objective, steps, params)


@register_estimator("cdg")
class CDG(GradientEstimator):
    """ĝ_i = [L(w + ε e_i) − L(w − ε e_i)] / (2ε) (forward difference if ``central=False``).

    Args:
        eps: the coordinate step ε > 0.
        central: central (default) or forward differences.

    Deterministic: the generator is not used. Returns tensors in the
    parameters' dtype (the differences are accumulated in float64).
    """

    param_names = ("eps", "central")

    def __init__(self, eps: float = 0.1, central: bool = True) -> None:
        v = validated({"eps": lambda: check_positive("eps", eps), "central": lambda: check_bool("central", central)})
        self.eps, self.central = v["eps"], v["central"]

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        if self.central:
            deltas = coordinate_deltas(objective, (self.eps, -self.eps))
            grads = {k: (d[0] - d[1]) / (2.0 * self.eps) for k, d in deltas.items()}
        else:
            deltas = coordinate_deltas(objective, (self.eps,))
            grads = {k: d[0] / self.eps for k, d in deltas.items()}
        return {k: g.to(objective.params[k].dtype) for k, g in grads.items()}


__all__ = ["CDG", "coordinate_deltas"]
