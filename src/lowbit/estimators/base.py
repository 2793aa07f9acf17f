"""The GradientEstimator interface, its registry and the shared parameter checks.

Every estimator maps an :class:`~lowbit.estimators.objective.Objective` to a
dict ``ĝ`` (one tensor per studied parameter, same shapes) with one contract:

    the step this method would take is  w − lr·ĝ.

Gradient methods (STE, NES, CDG) return a gradient of the loss; methods that
choose a point themselves (DG, multi-step STE) return ĝ = −Δw, the negated
displacement they chose, so ``lr = 1`` reproduces their point. They set
``returns_displacement = True``.

``estimate(objective, generator)`` is pure with respect to ``generator``: the
same generator state gives the same ĝ. ``generator=None`` draws from torch's
global RNG.
"""

from __future__ import annotations

import abc
import math
import operator
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, TypeVar

import torch

from lowbit.registry import Registry

ESTIMATORS = Registry("estimator")

E = TypeVar("E", bound=Callable[..., "GradientEstimator"])

Params = Dict[str, torch.Tensor]


class GradientEstimator(abc.ABC):
    """Proposes a step on an Objective: ``estimate(objective, generator) -> ĝ`` (see module docstring).

    Subclasses hold configuration only (validated at construction) and list
    their hyper-parameters in ``param_names`` so that ``config()`` and
    ``repr`` show them.
    """

    name: ClassVar[str] = ""
    param_names: ClassVar[Tuple[str, ...]] = ()
    returns_displacement: ClassVar[bool] = False

    @abc.abstractmethod
    def estimate(self, objective: Any, generator: Optional[torch.Generator] = None) -> Params:
        """ĝ for every studied parameter of ``objective``, with w − lr·ĝ the proposed step."""

    def config(self) -> Dict[str, Any]:
        """The resolved hyper-parameters, ``{"name": ..., **params}`` (saved with every record)."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.param_names}}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.param_names)
        return f"{type(self).__name__}({params})"


def register_estimator(name: str) -> Callable[[E], E]:
    """Class decorator: make an estimator available as ``get_estimator(name, **params)``."""

    def decorator(cls: E) -> E:
        cls.name = name  # type: ignore[attr-defined]
        return ESTIMATORS.register(name)(cls)

    return decorator


def get_estimator(name: str, /, **params: Any) -> GradientEstimator:
    """A new estimator by registry name, e.g. ``get_estimator("nes", population=500)``.

    An unknown name raises ``lowbit.registry.UnknownNameError`` (a KeyError and a
    ValueError) listing the valid names and the nearest one; an invalid
    parameter raises ValueError quoting the value.
    """
    return ESTIMATORS.create(name, **params)


def list_estimators() -> List[str]:
    """The names of all registered estimators, sorted."""
    return ESTIMATORS.names()


# --- parameter validation: ValueError quoting the value, at construction -------------


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def raise_collected(errors: List[str]) -> None:
    """Raise one ValueError naming every invalid option at once (none: no-op)."""
    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError("invalid options:\n  - " + "\n  - ".join(errors))


def validated(checks: Mapping[str, Callable[[], Any]]) -> Dict[str, Any]:
    """Run every check, collect all failures, raise them together; return the checked values."""
    values: Dict[str, Any] = {}
    errors: List[str] = []
    for key, check in checks.items():
        try:
            values[key] = check()
        except ValueError as error:
            errors.append(str(error))
    raise_collected(errors)
    return values


__all__ = [
    "ESTIMATORS",
    "GradientEstimator",
    "Params",
    "get_estimator",
    "list_estimators",
    "register_estimator",
]
