"""Latent weights of binary layers: which parameters they are, and Larq's latent-weight clipping.

A *binary layer* is a quantized layer (a module with ``input_quantizer`` and
``weight_quantizer`` attributes, e.g. :class:`lowbit.nn.BinaryConv2d`) whose
weight quantizer outputs 1 bit (:func:`lowbit.nn.quantizer_bits`): the forward
uses q_w(W) in {-a, +a}, and ``.weight`` is the float *latent* weight W the
optimizer moves. Its parameter is a *binary weight* (what Bop trains, what
the flip ratio counts).

Clipping (Larq's ``weight_clip`` kernel constraint; Courbariaux et al.,
"BinaryConnect", NeurIPS 2015, and "Binarized Neural Networks", 2016): after
every optimizer step

    W <- clamp(W, -c, c),   c = ``weight_clip`` > 0.

Without it a latent weight can drift far from 0, where it would take as many
steps back to flip its sign; with the clipped STE (``ste_sign``: gradient
1{|W| <= 1}) a latent weight beyond the window gets no gradient at all and is
frozen for good (Larq warns about such "starved" weights). Clipping does not
change any sign, so it changes nothing in the forward pass of the step it
follows.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn

from lowbit.nn.spec import quantizer_bits


def is_quantized_layer(module: nn.Module) -> bool:
    """A layer whose input and weight pass through quantizers (``lowbit.models.summary``'s definition)."""
    return hasattr(module, "input_quantizer") and hasattr(module, "weight_quantizer") and hasattr(module, "weight")


def is_binary_layer(module: nn.Module) -> bool:
    """A quantized layer whose weight quantizer outputs 1 bit (sign, xnor_weight, magnitude_aware_sign, ...)."""
    return is_quantized_layer(module) and module.weight_quantizer is not None and quantizer_bits(module.weight_quantizer) == 1


def binary_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, layer) of every binary layer of ``model``, in registration order (``model`` itself: name "")."""
    return [(name, m) for name, m in model.named_modules() if is_binary_layer(m)]


def binary_weights(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """(parameter name, latent weight) of every binary layer; a weight shared by two layers is listed once."""
    seen, weights = set(), []
    for name, layer in binary_layers(model):
        if id(layer.weight) not in seen:
            seen.add(id(layer.weight))
            weights.append((f"{name}.weight" if name else "weight", layer.weight))
    return weights


def check_weight_clip(value: Optional[float]) -> Optional[float]:
    """``value`` as a float if it is a finite number > 0, None for None; else ValueError quoting it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"weight_clip must be a finite number > 0 (the latent weights are clamped to [-clip, clip]) "
            f"or None (no clipping), got {value!r}"
        )
    return float(value)


@torch.no_grad()
def clip_latent_weight_(layer: nn.Module) -> None:
    """W <- clamp(W, -c, c) in place for a layer with ``weight_clip = c``; nothing if it is None."""
    clip = getattr(layer, "weight_clip", None)
    if clip is not None:
        layer.weight.clamp_(-clip, clip)


def clip_latent_weights_(model: nn.Module) -> int:
    """Clip every layer of ``model`` that has a ``weight_clip``; returns how many layers were clipped.

    Call it after each optimizer step (``lowbit train`` does).
    """
    clipped = 0
    for module in model.modules():
        if getattr(module, "weight_clip", None) is not None and is_quantized_layer(module):
            clip_latent_weight_(module)
            clipped += 1
    return clipped


def set_weight_clip(model: nn.Module, clip: Optional[float], layers: Optional[Iterable[str]] = None) -> List[str]:
    """Set ``weight_clip`` on the binary layers of ``model`` (all, or those named in ``layers``); their names.

    Raises ValueError for a clip <= 0 and for a model without binary layers
    (a clip that clips nothing is a mistake, not a no-op).
    """
    clip = check_weight_clip(clip)
    found = binary_layers(model)
    if layers is not None:
        wanted = set(layers)
        found = [(n, m) for n, m in found if n in wanted]
    if not found and clip is not None:
        raise ValueError(
            f"weight_clip={clip} but the model has no binary layer to clip; binarize it first "
            "(lowbit.nn.binarize, or the binarize: section of a training config)"
        )
    for _, layer in found:
        layer.weight_clip = clip
    return [name for name, _ in found]


__all__ = [
    "binary_layers",
    "binary_weights",
    "check_weight_clip",
    "clip_latent_weight_",
    "clip_latent_weights_",
    "is_binary_layer",
    "is_quantized_layer",
    "set_weight_clip",
]
