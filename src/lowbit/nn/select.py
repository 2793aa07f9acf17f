"""Choosing layers and parameters by name pattern and by type (``binarize``'s filters, optimizer groups).

A *pattern* is one of

- a glob on the qualified name (``fnmatch``, ``*`` also matches dots): ``"layer1.*"``,
  ``"*.conv1"``, ``"*.bias"``. A pattern that names a module also matches
  everything inside it: ``"layer4"`` matches ``layer4.1.conv2`` and its weight;
- ``"type:ClassName"``: modules that are instances of a class of that name
  (anywhere in the class's MRO, so ``"type:Conv2d"`` also matches a
  ``BinaryConv2d`` or timm's ``StdConv2d``); for parameters, those owned directly
  by such a module;
- a class itself (Python API only): ``nn.Linear``, isinstance semantics;
- ``"binary"`` (parameters only): the latent weights of the binary layers
  (:func:`lowbit.nn.latent.binary_weights`).

A pattern that matches nothing is an error naming it and the valid names, so a
typo cannot silently select nothing.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, List, Sequence, Tuple, Union

from torch import nn

from lowbit.nn.latent import binary_weights
from lowbit.registry import nearest

Pattern = Union[str, type]
BINARY = "binary"
TYPE_PREFIX = "type:"


def _prefixes(name: str) -> List[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``: the name and the names of its ancestors."""
    parts = name.split(".") if name else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _type_matches(module: nn.Module, pattern: Pattern) -> bool:
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    wanted = pattern[len(TYPE_PREFIX) :]
    return any(cls.__name__ == wanted for cls in type(module).__mro__)


def check_patterns(patterns: Iterable[Any], what: str, allow_binary: bool = False) -> List[Pattern]:
    """The patterns as a list, each a non-empty string or a class; ValueError quoting a bad one."""
    if isinstance(patterns, (str, type)):
        patterns = [patterns]
    checked: List[Pattern] = []
    for pattern in patterns:
        if isinstance(pattern, type) or (isinstance(pattern, str) and pattern.strip()):
            if pattern == BINARY and not allow_binary:
                raise ValueError(f"{what}: 'binary' selects parameters (optimizer groups), not layers")
            if isinstance(pattern, str) and pattern.startswith(TYPE_PREFIX) and not pattern[len(TYPE_PREFIX) :]:
                raise ValueError(f"{what}: {pattern!r} names no class; write e.g. 'type:Conv2d'")
            checked.append(pattern)
        else:
            raise ValueError(
                f"{what}: a pattern is a name glob ('layer1.*'), 'type:ClassName' or a class, got {pattern!r}"
            )
    return checked


def module_matches(name: str, module: nn.Module, pattern: Pattern) -> bool:
    """Does the module called ``name`` match ``pattern`` (see the module docstring)?"""
    if isinstance(pattern, type) or pattern.startswith(TYPE_PREFIX):
        return _type_matches(module, pattern)
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(name))


def _unmatched_error(what: str, pattern: Pattern, names: Sequence[str]) -> ValueError:
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    hint = nearest(str(pattern), names) if isinstance(pattern, str) else None
    did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
    label = pattern.__name__ if isinstance(pattern, type) else repr(pattern)
    return ValueError(f"{what}: pattern {label} matches nothing{did_you_mean}; names here: {shown}")


def select_modules(
    named_modules: Sequence[Tuple[str, nn.Module]], patterns: Sequence[Pattern], what: str
) -> List[Tuple[str, nn.Module]]:
    """The (name, module) pairs matching any pattern; ValueError for a pattern that matches none of them."""
    patterns = check_patterns(patterns, what)
    for pattern in patterns:
        if not any(module_matches(n, m, pattern) for n, m in named_modules):
            raise _unmatched_error(what, pattern, [n for n, _ in named_modules])
    return [(n, m) for n, m in named_modules if any(module_matches(n, m, p) for p in patterns)]


def select_parameters(model: nn.Module, patterns: Sequence[Pattern], what: str) -> List[Tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs of ``model`` matching any pattern, in ``named_parameters`` order.

    ``"binary"`` selects the binary layers' latent weights; ``"type:X"`` / a class
    the parameters owned directly by modules of that type; a glob matches the
    parameter's name or the name of a module holding it. ValueError for a
    pattern that matches no parameter.
    """
    patterns = check_patterns(patterns, what, allow_binary=True)
    named = list(model.named_parameters())
    owner_of = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            owner_of.setdefault(id(param), module)
    binary_ids = {id(p) for _, p in binary_weights(model)}

    def matches(name: str, param: nn.Parameter, pattern: Pattern) -> bool:
        if pattern == BINARY:
            return id(param) in binary_ids
        if isinstance(pattern, type) or pattern.startswith(TYPE_PREFIX):
            return _type_matches(owner_of[id(param)], pattern)
        return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(name))

    for pattern in patterns:
        if not any(matches(n, p, pattern) for n, p in named):
            if pattern == BINARY:
                raise ValueError(
                    f"{what}: 'binary' matches nothing: the model has no binary layer (binarize it first: "
                    "lowbit.nn.binarize, or the binarize: section of a training config)"
                )
            raise _unmatched_error(what, pattern, [n for n, _ in named])
    return [(n, p) for n, p in named if any(matches(n, p, pattern) for pattern in patterns)]


__all__ = ["BINARY", "Pattern", "TYPE_PREFIX", "check_patterns", "module_matches", "select_modules", "select_parameters"]
