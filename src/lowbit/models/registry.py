"""The model registry: ``create_model(name, **kw)``, ``list_models()``, ``register_model``.

Every factory has the signature ``factory(num_classes=10, in_channels=3, **kw)``
and returns an ``nn.Module`` with an ``input_shape`` attribute: the shape of
one example without the batch dimension, e.g. ``(3, 32, 32)`` or ``(dim,)``.
The tests and ``models_table`` read it to build a dummy input.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, TypeVar

from torch import nn

from lowbit.registry import Registry

MODELS = Registry("model")

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: make ``factory(num_classes=10, in_channels=3, **kw)`` available as ``create_model(name)``."""
    return MODELS.register(name)


def create_model(name: str, /, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> nn.Module:
    """A new model by registry name, e.g. ``create_model("resnet18", width=32, stem="3x3,3x3")``.

    Raises ``lowbit.registry.UnknownNameError`` (a KeyError and a ValueError)
    naming the valid models and the nearest match for an unknown ``name``;
    ValueError listing the model's options for an option it does not take, and
    quoting the value for an invalid argument.
    """
    factory = MODELS.get(name)
    errors = []
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not _positive_int(value):
            errors.append(f"{key} must be an integer >= 1, got {value!r}")
    options = _options(factory)
    unknown = sorted(set(kw) - set(options)) if options is not None else []
    if unknown:
        errors.append(f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(options)}")
    if errors:
        raise ValueError("; ".join(errors))
    return factory(num_classes=num_classes, in_channels=in_channels, **kw)


def list_models() -> List[str]:
    """The names of all registered models, sorted."""
    return MODELS.names()


def _options(factory: Callable[..., Any]) -> Optional[List[str]]:
    """The factory's keyword options besides num_classes/in_channels; None if it takes ``**kwargs``."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.name not in ("num_classes", "in_channels")]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


__all__ = ["MODELS", "create_model", "list_models", "register_model"]
