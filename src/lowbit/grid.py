"""Grids of settings: the one expansion behind probe units and sweep cells.

A grid is an ordered list of *axes*; each axis varies one or more keys over
its values. ``cartesian`` crosses the axes, the first one outermost (the
order ``itertools.product`` gives); an axis that varies several keys together
(``zipped``) contributes one point per position, like ``zip``::

    points = cartesian([axis("dim", [4, 8]), zipped({"lr": [0.1, 0.01], "opt": ["sgd", "adam"]})])
    # [{dim: 4, lr: 0.1, opt: sgd}, {dim: 4, lr: 0.01, opt: adam}, {dim: 8, ...}, {dim: 8, ...}]

``select`` keeps the points whose coordinates are in given sets, in their
original order, so a part of a grid (a sweep cell of a probe, say) holds the
same points, in the same relative order, as the whole.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, List, Mapping, Sequence

Point = Dict[str, Any]
Axis = List[Point]  # the points one axis contributes, e.g. [{dim: 4}, {dim: 8}]


def axis(key: str, values: Iterable[Any]) -> Axis:
    """One key over its values: ``axis("dim", [4, 8]) == [{"dim": 4}, {"dim": 8}]``."""
    return [{key: value} for value in values]


def zipped(values: Mapping[str, Sequence[Any]], what: str = "zip") -> Axis:
    """Several keys varied together, position by position; all lists must have one length."""
    lengths = {key: len(v) for key, v in values.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{what}: lists varied together must have the same length, got "
            + ", ".join(f"{key}: {n}" for key, n in lengths.items())
        )
    if not values:
        return [{}]
    return [dict(zip(values, items)) for items in zip(*values.values())]


def cartesian(axes: Sequence[Axis]) -> List[Point]:
    """Every combination of one point per axis, the first axis outermost; ``[{}]`` for no axes."""
    points: List[Point] = []
    for combination in itertools.product(*axes):
        point: Point = {}
        for part in combination:
            clash = set(point) & set(part)
            if clash:
                raise ValueError(f"key {sorted(clash)[0]!r} is varied by two axes of one grid")
            point.update(part)
        points.append(point)
    return points


def select(points: Iterable[Point], keep: Mapping[str, Iterable[Any]]) -> List[Point]:
    """The points whose value of every key in ``keep`` is one of its listed values (order kept).

    A key that no point has is an error naming the keys there are (a typo would
    otherwise select nothing silently).
    """
    points = list(points)
    wanted = {key: list(values) for key, values in keep.items()}
    known = set().union(*(p.keys() for p in points)) if points else set()
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise ValueError(f"select: {unknown} are not coordinates of this grid (coordinates: {', '.join(sorted(known))})")
    return [p for p in points if all(_member(p[key], values) for key, values in wanted.items())]


def _member(value: Any, values: List[Any]) -> bool:
    # a selection written in YAML compares by value, so 1 and 1.0 match but "1" and 1 do not
    return any(value == v and isinstance(value, str) == isinstance(v, str) for v in values)
