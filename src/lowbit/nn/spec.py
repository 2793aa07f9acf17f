"""Quantizer specs: how a layer is told which quantizer to use, and how many bits it yields.

A *quantizer spec* is whatever a config can hold:

- a registry name, ``"ste_clipped"`` -> ``get_quantizer("ste_clipped")``;
- a dict, ``{"name": "ste_clipped", "clip": 0.5}`` -> ``get_quantizer("ste_clipped", clip=0.5)``;
- a module, used as is (any ``nn.Module`` mapping a tensor to a tensor);
- ``None`` or the string ``"none"``: no quantization (the float path).

:func:`quantizer_bits` says how many bits a quantizer's output needs, for
memory and MAC accounting (``lowbit.models.summary``): a module may declare it
with an integer ``bits`` attribute; otherwise it is derived from the
quantizer's registry name and parameters (sign family -> 1, ternary -> 2,
``dorefa(k_bit)`` -> k, ``uniform_weight(bits)`` -> bits,
``uniform_act(levels)`` -> ceil(log2(levels + 1)), its n steps having n + 1
values); no quantizer -> 32.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Optional, Union

from torch import nn

from lowbit.quant import QUANTIZERS, get_quantizer, list_quantizers

QuantizerSpec = Union[str, Mapping[str, Any], nn.Module, None]

FLOAT_BITS = 32  # an unquantized float32 tensor

# Registry name -> bits of the quantizer's output when it has no ``bits`` attribute.
# Ternary {-a, 0, +a} needs log2(3) = 1.58 bits; stored in 2 (the usual packing).
_BITS_BY_NAME = {
    "ste": 1,
    "ste_clipped": 1,
    "steep": 1,
    "swish_sign": 1,
    "approx_sign": 1,
    "vste": 1,
    "step01": 1,
    "stochastic_sign": 1,
    "ste_heaviside": 1,
    "magnitude_aware_sign": 1,
    "xnor_weight": 1,
    "ste_tern": 2,
}


def make_quantizer(spec: QuantizerSpec) -> Optional[nn.Module]:
    """A quantizer module from a spec (see the module docstring); None means no quantization.

    A module spec is returned as is (not copied): use :func:`fresh_quantizer`
    to give each layer its own instance.
    """
    if spec is None:
        return None
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        if spec.lower() == "none":
            return None
        return get_quantizer(spec)
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"a quantizer spec dict needs a string 'name' key, got {dict(spec)!r}")
        if name.lower() == "none":
            if params:
                raise ValueError(f"quantizer 'none' takes no parameters, got {params!r}")
            return None
        return get_quantizer(name, **params)
    raise TypeError(
        "a quantizer spec is a name, a dict {'name': ..., **params}, an nn.Module or None, "
        f"got {type(spec).__name__}: {spec!r}"
    )


def fresh_quantizer(spec: QuantizerSpec) -> Optional[nn.Module]:
    """Like :func:`make_quantizer`, but a module spec is deep-copied (one instance per layer)."""
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    return make_quantizer(spec)


def quantizer_name(quantizer: Optional[nn.Module]) -> str:
    """The registry name of a quantizer module, its class name if unregistered, ``"none"`` for None."""
    if quantizer is None:
        return "none"
    for name in list_quantizers():
        if QUANTIZERS.get(name) is type(quantizer):
            return name
    return type(quantizer).__name__


def quantizer_bits(quantizer: Optional[nn.Module]) -> int:
    """Bits per value of a quantizer's output (32 for None or an unknown module).

    Order: an integer ``bits`` attribute on the module; an integer ``k_bit``
    (DoReFa); an integer ``levels`` (``uniform_act``: n steps, n + 1 values,
    ceil(log2(n + 1)) bits); a sign quantizer (``forward_is_sign``) -> 1; the
    registry-name table above; else 32, i.e. an unknown module counts as float.
    """
    if quantizer is None:
        return FLOAT_BITS
    for attribute in ("bits", "k_bit"):
        value = getattr(quantizer, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    levels = getattr(quantizer, "levels", None)
    if isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1:
        return math.ceil(math.log2(levels + 1))
    if getattr(quantizer, "forward_is_sign", False):
        return 1
    return _BITS_BY_NAME.get(quantizer_name(quantizer), FLOAT_BITS)


__all__ = [
    "FLOAT_BITS",
    "QuantizerSpec",
    "fresh_quantizer",
    "make_quantizer",
    "quantizer_bits",
    "quantizer_name",
]
