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

**Coordinate subsets.** On a real network a layer has 10^3–10^5 coordinates,
each costing one or two loss evaluations. With ``coords = m`` only m
coordinates, drawn uniformly without replacement from the generator, are
measured; ĝ is 0 elsewhere and ``last_subset`` holds the boolean mask, so
that comparisons can be restricted to the measured coordinates
(:func:`lowbit.estimators.subset.subset_cosine` gives the cosine on the subset with
its sampling error).

**Relative ε.** With ``relative=True`` each studied tensor (a layer) gets its
own step ε_l = eps · mean_i |w_{l,i}|, so one ``eps`` means the same fraction
of a weight's typical size in every layer of a network whose layers are
initialised at different scales (a conv with fan-in 9·C has |w| ~ 1/√(9C)).
ĝ_i is then the difference quotient with that layer's ε_l.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from lowbit.estimators.base import (
    GradientEstimator,
    Params,
    check_bool,
    check_int,
    check_positive,
    register_estimator,
    validated,
)
from lowbit.estimators.budget import unflatten


def coordinate_deltas(objective: Any, steps, params=None) -> Params:
    """``objective.coordinate_deltas`` if it has one, else the generic batched path (steps as there)."""
    method = getattr(objective, "coordinate_deltas", None)
    if method is not None:
        return method(steps, params)
    from lowbit.estimators.objective import generic_coordinate_deltas

    return generic_coordinate_deltas(objective, steps, params)


def random_subset(total: int, size: int, generator: Optional[torch.Generator], seed: Optional[int] = None) -> torch.Tensor:
    """``size`` of ``range(total)`` drawn uniformly without replacement, sorted; from ``seed`` when given."""
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


@register_estimator("cdg")
class CDG(GradientEstimator):
    """ĝ_i = [L(w + ε e_i) − L(w − ε e_i)] / (2ε) (forward difference if ``central=False``).

    Args:
        eps: the coordinate step ε > 0.
        central: central (default) or forward differences.
        coords: measure only this many coordinates, a uniform random subset
            (None: all). ĝ is 0 on the others; ``last_subset`` is the mask.
        relative: ε_l = eps · mean|w_l| per studied tensor (module docstring).
        subset_seed: draw the coordinate subset from this seed rather than from the
            generator, so that several estimators (CDG at several ε, ``flip_cdg``)
            measure the same coordinates and compare pairwise on them.

    Deterministic without ``coords`` (the generator draws the subset only).
    Returns tensors in the parameters' dtype (the differences are accumulated
    in float64).
    """

    param_names = ("eps", "central", "coords", "relative", "subset_seed")

    def __init__(
        self,
        eps: float = 0.1,
        central: bool = True,
        coords: Optional[int] = None,
        relative: bool = False,
        subset_seed: Optional[int] = None,
    ) -> None:
        v = validated(
            {
                "eps": lambda: check_positive("eps", eps),
                "central": lambda: check_bool("central", central),
                "coords": lambda: None if coords is None else check_int("coords", coords),
                "relative": lambda: check_bool("relative", relative),
                "subset_seed": lambda: None if subset_seed is None else check_int("subset_seed", subset_seed, 0),
            }
        )
        self.eps, self.central, self.coords, self.relative = v["eps"], v["central"], v["coords"], v["relative"]
        self.subset_seed = v["subset_seed"]
        self.last_subset: Optional[Dict[str, torch.Tensor]] = None

    def steps_for(self, params: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """ε per studied tensor: ``eps``, or eps · mean|w| with ``relative`` (ValueError for an all-zero tensor)."""
        if not self.relative:
            return {name: self.eps for name in params}
        out = {}
        for name, w in params.items():
            scale = float(w.detach().double().abs().mean())
            if not scale > 0:
                raise ValueError(f"relative eps: {name} is all zeros (mean |w| = 0), so eps * mean|w| = 0; use an absolute eps")
            out[name] = self.eps * scale
        return out

    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        like = objective.params
        eps = self.steps_for(like)
        steps = (eps, {k: -v for k, v in eps.items()}) if self.central else (eps,)
        if not self.relative:  # a plain number: the objective's fastest path
            steps = tuple(next(iter(s.values())) if s else 0.0 for s in steps)
        total = objective.numel()
        if self.coords is None or self.coords >= total:
            self.last_subset = None
            deltas = coordinate_deltas(objective, steps)
            return {k: self._combine(d, eps[k]).to(like[k].dtype) for k, d in deltas.items()}
        from lowbit.estimators.objective import step_vector, subset_coordinate_deltas

        chosen = random_subset(total, self.coords, generator, self.subset_seed)
        device = next(iter(like.values())).device
        deltas = subset_coordinate_deltas(objective, steps, chosen).to(device)  # (n_steps, m)
        chosen = chosen.to(device)
        flat = torch.zeros(total, dtype=torch.float64, device=device)
        flat[chosen] = self._combine(deltas, step_vector(eps, like)[chosen])
        mask = torch.zeros(total, dtype=torch.bool, device=device)
        mask[chosen] = True
        self.last_subset = {k: v.bool() for k, v in unflatten(mask.double(), like).items()}
        return {k: v.to(like[k].dtype) for k, v in unflatten(flat, like).items()}

    def _combine(self, deltas: torch.Tensor, eps: Any) -> torch.Tensor:
        return (deltas[0] - deltas[1]) / (2.0 * eps) if self.central else deltas[0] / eps


__all__ = ["CDG", "coordinate_deltas", "random_subset"]
