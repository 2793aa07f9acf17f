"""The quantizer registry and the base class every quantizer module derives from."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, List, TypeVar

from torch import nn

from lowbit.registry import Registry

QUANTIZERS = Registry("quantizer")

Q = TypeVar("Q", bound=Callable[..., nn.Module])


class Quantizer(nn.Module):
    """A quantizer module: holds configuration only; ``forward`` calls the functional form.

    Subclasses list their hyper-parameters in ``param_names`` (shown by
    ``extra_repr``) and set ``forward_is_sign = True`` when their forward is
    exactly sign(x) in {-1, +1} with sign(0) = +1, i.e. they differ from the
    other sign quantizers only in the surrogate gradient.
    """

    param_names: ClassVar[tuple[str, ...]] = ()
    forward_is_sign: ClassVar[bool] = False

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.param_names)


def register_quantizer(name: str) -> Callable[[Q], Q]:
    """Class decorator: make a quantizer available as ``get_quantizer(name, **params)``."""
    return QUANTIZERS.register(name)


def get_quantizer(name: str, /, **params: Any) -> nn.Module:
    """A new quantizer module by registry name, e.g. ``get_quantizer("swish_sign", beta=5.0)``.

    Larq and bitorch names are aliases (``get_quantizer("ste_sign", clip_value=0.5)``
    is ``ste_clipped`` with clip 0.5; see :mod:`lowbit.quant.aliases`). Raises
    ``lowbit.registry.UnknownNameError`` (a KeyError and a ValueError) listing
    the valid names and the nearest match for an unknown ``name``, and
    ValueError quoting the value for an invalid parameter.
    """
    from lowbit.quant.aliases import resolve_quantizer  # aliases.py imports this module

    target, resolved = resolve_quantizer(name, params)
    return QUANTIZERS.create(target, **resolved)


def list_quantizers() -> List[str]:
    """The names of all registered quantizers, sorted."""
    return QUANTIZERS.names()


def list_sign_quantizers() -> List[str]:
    """Names of the quantizers whose forward is exactly sign(x) (sign(0) = +1).

    They differ only in their surrogate gradient: "sign with any surrogate".
    """
    return [name for name in QUANTIZERS.names() if _forward_is_sign(QUANTIZERS.get(name))]


def _forward_is_sign(factory: Callable[..., Any]) -> bool:
    return isinstance(factory, type) and getattr(factory, "forward_is_sign", False)


__all__ = [
    "QUANTIZERS",
    "Quantizer",
    "get_quantizer",
    "list_quantizers",
    "list_sign_quantizers",
    "register_quantizer",
]
