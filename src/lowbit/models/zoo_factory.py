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

Each model module states its own defaults (the paper's quantizers, its
reference width) and docstring where it registers the entry; the function made
here has that name, docstring, module and return annotation, so it reads in
``help()`` and ``inspect.signature`` as if written out in the model's module.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from lowbit.models.registry import register_model
from lowbit.nn import QuantizerSpec


def register_width_entry(
    name: str,
    model: type,
    doc: str,
    *,
    default_width: int,
    default_act: QuantizerSpec,
    default_weight_quantizer: QuantizerSpec,
    build: Optional[Callable[..., nn.Module]] = None,
) -> Callable[..., nn.Module]:
    """Register ``name`` as ``factory(num_classes=10, in_channels=3, *, width, stem="imagenet", act, weight_quantizer)``.

    It returns ``build(num_classes, in_channels, width, stem, act, weight_quantizer)``,
    a ``model``; ``build`` defaults to the class ``model`` itself.
    """
    build = model if build is None else build

    def factory(
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        width: int = default_width,
        stem: str = "imagenet",
        act: QuantizerSpec = default_act,
        weight_quantizer: QuantizerSpec = default_weight_quantizer,
    ):
        return build(num_classes, in_channels, width, stem, act, weight_quantizer)

    return _register(name, factory, model, doc)


def register_fixed_size_entry(
    name: str,
    model: type,
    doc: str,
    *,
    default_act: QuantizerSpec,
    default_weight_quantizer: QuantizerSpec,
) -> Callable[..., nn.Module]:
    """Register ``name`` as ``factory(num_classes=10, in_channels=3, *, input_size=224, stem="imagenet",
    width_mult=1.0, act, weight_quantizer)``, returning
    ``model(num_classes, in_channels, input_size, stem, width_mult, act, weight_quantizer)``."""

    def factory(
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        input_size: int = 224,
        stem: str = "imagenet",
        width_mult: float = 1.0,
        act: QuantizerSpec = default_act,
        weight_quantizer: QuantizerSpec = default_weight_quantizer,
    ):
        return model(num_classes, in_channels, input_size, stem, width_mult, act, weight_quantizer)

    return _register(name, factory, model, doc)


def _register(name: str, factory: Callable[..., nn.Module], model: type, doc: str):
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = model.__module__
    factory.__doc__ = doc
    factory.__annotations__["return"] = model.__name__  # a string, as `from __future__ import annotations` writes it
    return register_model(name)(factory)


__all__ = ["register_fixed_size_entry", "register_width_entry"]
