"""Name -> factory registries shared by quantizers, estimators and models.

A config string selects a component: ``get_quantizer("swish_sign", beta=5.0)``.
Registering by decorator makes the component visible to ``list_*()`` and to the
parametrised tests; an unknown name raises an error listing the valid names and
the nearest match. A name a registry does not hold first loads the plugins of
installed packages (entry points of the ``lowbit.plugins`` group, once per
process; :mod:`lowbit.plugins`), as does listing the names.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

T = TypeVar("T")


def nearest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The closest candidate to ``name`` by edit similarity, or None if none is close."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """An error message quoting the bad name, the nearest valid one and all valid ones."""
    valid = sorted(valid)
    hint = nearest(name, valid)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    return f"unknown {kind} {name!r}.{did_you_mean} Valid {kind} names: {', '.join(valid)}"


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; ``str()`` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """A named collection of factories.

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(): return 1
    >>> models.create("tiny")
    1
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries))
        return self._entries[name]

    def create(self, name: str, /, **params: Any) -> Any:
        return self.get(name)(**params)

    def names(self) -> List[str]:
        _load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            _load_entry_points()  # a plugin package may register it
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _load_entry_points() -> None:
    from lowbit.plugins import load_entry_point_plugins  # same layer; once per process, then a no-op

    load_entry_point_plugins()
