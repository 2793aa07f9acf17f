"""The registered factory functions of the binary zoo, written once for all its entries.

A zoo entry is a function ``factory(num_classes=10, in_channels=3, *, <options>)``
that passes its arguments on to the model's class; the registry reads the
signature to reject an option the model does not take
(:func:`lowbit.models.create_model`). The binary zoo has two option sets:

- :func:`register_width_entry`, the ResNet- and MobileNet-style entries (Bi-Real
  Net, ResNetE, Real-to-Binary Net, ReActNet, QuickNet, BinaryDenseNet):
  ``width``, ``stem``, ``act``, ``weight_quantizer``;
- :func:`register_fixed_size_entry`, the AlexNet-style entries built for one
  input size (XNOR-Net, DoReFa-Net, Binary AlexNet): ``input_size``, ``stem``,
  ``width_mult``, ``act``, ``weight_quantizer``.

An option's default is the model class's own (the paper's quantizers, its
reference width), so it is stated once, in the class; only ``num_classes``
defaults to 10 instead of ImageNet's 1000. The function made here has the
entry's name, docstring, module and return annotation, so ``help()`` and
``inspect.signature`` show it as if written out in the model's module.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence

from torch import nn

from lowbit.models.registry import register_model
from lowbit.nn import QuantizerSpec


def register_width_entry(
    name: str,
    model: type,
    doc: str,
    *,
    build: Optional[Callable[..., nn.Module]] = None,
    default_width: Optional[int] = None,
) -> Callable[..., nn.Module]:
    """Register ``name`` as ``factory(num_classes=10, in_channels=3, *, width, stem, act, weight_quantizer)``.

    It returns ``build(num_classes, in_channels, width, stem, act, weight_quantizer)``,
    a ``model``; ``build`` defaults to the class ``model`` itself, and
    ``default_width`` to the class's ``width`` default (give it where the class
    takes no ``width``, e.g. QuickNet's per-section channels).
    """
    build = model if build is None else build
    defaults = _class_defaults(model, ("width", "stem", "act", "weight_quantizer"), width=default_width)

    def factory(
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        width: int = defaults["width"],
        stem: str = defaults["stem"],
        act: QuantizerSpec = defaults["act"],
        weight_quantizer: QuantizerSpec = defaults["weight_quantizer"],
    ):
        return build(num_classes, in_channels, width, stem, act, weight_quantizer)

    return _register(name, factory, model, doc)


def register_fixed_size_entry(name: str, model: type, doc: str) -> Callable[..., nn.Module]:
    """Register ``name`` as ``factory(num_classes=10, in_channels=3, *, input_size, stem, width_mult, act,
    weight_quantizer)``, returning ``model(num_classes, in_channels, input_size, stem, width_mult, act,
    weight_quantizer)``; the defaults are the class's."""
    defaults = _class_defaults(model, ("input_size", "stem", "width_mult", "act", "weight_quantizer"))

    def factory(
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        input_size: int = defaults["input_size"],
        stem: str = defaults["stem"],
        width_mult: float = defaults["width_mult"],
        act: QuantizerSpec = defaults["act"],
        weight_quantizer: QuantizerSpec = defaults["weight_quantizer"],
    ):
        return model(num_classes, in_channels, input_size, stem, width_mult, act, weight_quantizer)

    return _register(name, factory, model, doc)


def _class_defaults(model: type, names: Sequence[str], **given: Any) -> Dict[str, Any]:
    """``model.__init__``'s default for each of ``names``, or the value in ``given`` where that is not None."""
    parameters = inspect.signature(model).parameters
    defaults = {}
    for option in names:
        if given.get(option) is not None:
            defaults[option] = given[option]
        elif option in parameters and parameters[option].default is not inspect.Parameter.empty:
            defaults[option] = parameters[option].default
        else:
            raise TypeError(f"{model.__name__} has no default for {option!r}: pass default_{option}")
    return defaults


def _register(name: str, factory: Callable[..., nn.Module], model: type, doc: str):
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = model.__module__
    factory.__doc__ = doc
    factory.__annotations__["return"] = model.__name__  # a string, as `from __future__ import annotations` writes it
    return register_model(name)(factory)


__all__ = ["register_fixed_size_entry", "register_width_entry"]
