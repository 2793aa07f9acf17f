"""The teacher–student toy with binary weights: XNOR weights on latent float weights, exact sign flips.

With ``ToyTask(weights="binary")`` student layer l computes with

    Q(W_l) = α_l ⊙ sign(W_l),   α_{l,i} = (1/d) Σ_j |W_{l,ij}|,   sign(0) = +1

(XNOR-Net's per-output-channel scale, ``lowbit.quant.xnor_weight``; Rastegari
et al., ECCV 2016), the binary activations of the toy unchanged. The studied
parameters are the latent float weights W, as an optimizer of a binary network
sees them; the teacher, the data and the latent initial weights are those of
the real-weight student at the same seed.

What an estimator gets:

- ``loss(params, surrogate)``: differentiable through ``xnor_weight`` (identity
  surrogate for the weights' sign, α differentiated exactly), so the STE of a
  binary-weight network;
- ``losses`` / ``line_losses`` / ``coordinate_deltas``: exact, through the
  real-weight toy's batched fast path at Q(W) (a latent move of ±ε changes one
  row's α as well as, maybe, one sign);
- ``flip_deltas()``: ΔL_ij of negating W_ij — a sign flip of one binary weight,
  α unchanged since |−W_ij| = |W_ij| — for every coordinate at once. On Q(W)
  a flip is the move −2Q_ij of one effective coordinate, whose magnitude 2α_i
  is constant along each row: the real-weight toy's CDG fast path (a pass per
  sign) computes all of them. A latent weight that is exactly 0 has no flip
  (−0 has sign +1): its ΔL is 0.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch

from lowbit.estimators.objective import Objective, SurrogateSpec
from lowbit.probe.toy import ToyActivation, ToyObjective, layer_name


def binarize(weights: torch.Tensor) -> torch.Tensor:
    """Q(W) = α ⊙ sign(W) per row of the last two dims (any leading population dims), sign(0) = +1, no grad.

    The same numbers as ``lowbit.quant.xnor_weight`` on one (d, d) weight.
    """
    sign = torch.where(weights >= 0, 1.0, -1.0).to(weights.dtype)
    return sign * weights.abs().mean(dim=-1, keepdim=True)


class BinaryWeightToyObjective(Objective):
    """The toy's Objective with XNOR weights (module docstring); params are the latent weights of ``layers``."""

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        activation: ToyActivation,
        x: torch.Tensor,
        y: torch.Tensor,
        layers: Sequence[int],
    ) -> None:
        self.latent = [w.detach() for w in weights]
        self.activation, self.x, self.y = activation, x, y
        self.effective = ToyObjective([binarize(w) for w in self.latent], activation, x, y, layers)
        self.layers = self.effective.layers
        self.params = {layer_name(l): self.latent[l] for l in self.layers}

    dtype = property(lambda self: self.effective.dtype)
    batch_size = property(lambda self: self.effective.batch_size)

    def loss(self, params: Optional[Mapping[str, torch.Tensor]] = None, surrogate: SurrogateSpec = None) -> torch.Tensor:
        from lowbit.quant import xnor_weight

        latent = self.with_params(params)
        return self.effective.loss({name: xnor_weight(w) for name, w in latent.items()}, surrogate=surrogate)

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from lowbit.estimators.objective import stacked_size

        stacked_size(stacked, self.params)
        return self.effective.losses({name: binarize(w) for name, w in stacked.items()})  # (pop, d, d) each

    def flip_deltas(self, params: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """ΔL of negating each studied latent weight (a binary weight's sign flip); name -> (d, d) float64."""
        latent = self.with_params(params)
        effective = {name: binarize(w) for name, w in latent.items()}
        step = {name: torch.where(latent[name] == 0, 0.0, -2.0 * q.double()) for name, q in effective.items()}
        deltas = self.effective.coordinate_deltas([step], effective)
        return {name: d[0] for name, d in deltas.items()}

    def at(self, params: Mapping[str, torch.Tensor]) -> "BinaryWeightToyObjective":
        """The same objective (batch, layers, fixed weights) at the latent weights ``params``."""
        latent = list(self.latent)
        for name, value in self.with_params(params).items():
            latent[int(name.split(".")[1])] = value.detach()
        return BinaryWeightToyObjective(latent, self.activation, self.x, self.y, self.layers)


__all__ = ["BinaryWeightToyObjective", "binarize"]
