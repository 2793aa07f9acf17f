"""The teacher-student toy: a bias-free MLP with quantized activations between layers.

    h_0 = x,  h_l = W_l h_{l-1} for l = 1..L,  with a_l = q(h_l) fed to layer l+1 for l < L,

i.e. ``Linear -> q -> Linear -> q -> ... -> Linear`` with L = ``depth`` square
dim x dim layers and no activation after the last one. ``q`` is a quantizer
from ``lowbit.quant`` (``"ste"``: sign forward, identity backward; a dict
``{"name": "ste_clipped", "clip": 0.5}`` for parameters) or ``"none"`` for the
float control (a deep *linear* network: no activation at all). This is the
model of the gradient-quality notes (3-layer MLP, num_dim in 2..64, inputs
N(0, 1)), where a teacher with the same architecture labels the data.

Layers are exposed in order as ``model.layers`` (parameter names
``layers.0.weight``, ``layers.1.weight``, ...), the activations as
``model.acts``. Weights are float; initialisation is PyTorch's default for
``nn.Linear`` (U(-1/sqrt(dim), 1/sqrt(dim))). With ``weight_quantizer`` (e.g.
``"xnor_weight"``: α_i sign(W_ij), α_i = mean_j |W_ij|) the layers are
``lowbit.nn.BinaryLinear`` with float inputs: the forward uses the quantized
weights, ``.weight`` stays the latent float weight (the notes' networks with
binary weights as well as binary activations).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lowbit.models.registry import register_model
from lowbit.nn import BinaryLinear, QuantizerSpec, fresh_quantizer


class ToyMLP(nn.Module):
    """x: (N, dim) -> (N, dim); ``depth`` bias-free Linear(dim, dim) with ``act`` between them."""

    def __init__(self, dim: int, depth: int = 3, act: QuantizerSpec = "ste", weight_quantizer: QuantizerSpec = None) -> None:
        super().__init__()
        bad = {
            k: v for k, v in (("dim", dim), ("depth", depth)) if isinstance(v, bool) or not isinstance(v, int) or v < 1
        }
        if bad:
            raise ValueError(f"{' and '.join(bad)} must be integers >= 1, got {bad!r}")
        self.dim = dim
        self.depth = depth
        self.act_spec = act
        self.weight_quantizer_spec = weight_quantizer
        if weight_quantizer is None:
            self.layers = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(depth))
        else:
            self.layers = nn.ModuleList(
                BinaryLinear(dim, dim, input_quantizer=None, weight_quantizer=weight_quantizer) for _ in range(depth)
            )
        # One quantizer per gap between layers; an empty list for depth 1.
        acts = [fresh_quantizer(act) for _ in range(depth - 1)]
        self.acts = nn.ModuleList(a if a is not None else nn.Identity() for a in acts)
        self.input_shape = (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (N, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < self.depth - 1:
                h = self.acts[i](h)
        return h


@register_model("toy_mlp")
def toy_mlp(
    dim: int = 16,
    depth: int = 3,
    act: Optional[QuantizerSpec] = "ste",
    weight_quantizer: Optional[QuantizerSpec] = None,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
) -> ToyMLP:
    """The teacher-student MLP (see the module docstring). ``num_classes`` and ``in_channels`` are ignored:
    input and output are both ``dim`` wide. ``dim`` defaults to 16 (the notes sweep 2..64)."""
    return ToyMLP(dim, depth=depth, act=act, weight_quantizer=weight_quantizer)


__all__ = ["ToyMLP", "toy_mlp"]
