"""Sweep cells: the points of a spec's grid, each a fully resolved and validated config.

A cell's config is exactly what ``lowbit <command> BASE key=value ...`` would
run: the base config's data, then the spec's ``overrides``, then the cell's own
settings (its grid, zip and seed values; for a split probe its
``probe.select``), merged the way command-line overrides merge
(:func:`lowbit.config.deep_merge`); the spec's ``plugins`` join the config's,
so the worker that builds the cell imports them first. ``expand_cells`` builds and checks every
cell before any runs; all problems of all cells are reported together, each
naming its cells and the key.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lowbit.config import deep_merge, format_override, parse_overrides, set_dotted, to_dict
from lowbit.grid import axis, cartesian, zipped
from lowbit.plugins import import_flags, merge_plugins
from lowbit.registry import nearest
from lowbit.sweep.commands import CommandAdapter
from lowbit.sweep.spec import PROBE_AXES, SweepSpec


class SweepConfigError(ValueError):
    """One or more cells of a sweep do not validate; the message names each cell and key."""


@dataclass
class Cell:
    """One run of the sweep: its position in the grid and its resolved config."""

    index: int
    varied: Dict[str, Any]  # what tells it apart: {model.width: 16, seed: 1} (split probes: {dim: 8})
    settings: Dict[str, Any]  # dotted key -> value applied on top of base + overrides
    config: Any = field(repr=False, default=None)

    @property
    def id(self) -> str:
        return f"c{self.index:03d}"

    @property
    def label(self) -> str:
        """``model.width=16, seed=1`` (or ``all`` for a sweep of one cell)."""
        return ", ".join(f"{k}={_show(v)}" for k, v in self.varied.items()) or "all"

    @property
    def dirname(self) -> str:
        """The cell's run-directory name inside ``cells/``: ``c003_width16_seed1``.

        No ``=`` in it, so the path of its config is never mistaken for a ``key=value`` override.
        """
        parts = [re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{k.split('.')[-1]}{_show(v)}").strip("-") for k, v in self.varied.items()]
        slug = "_".join(parts)[:80].strip("_-.")
        return f"{self.id}_{slug}" if slug else self.id

    def override_args(self) -> List[str]:
        """The cell's settings as ``key=value`` arguments (YAML flow values)."""
        return [format_override(k, v) for k, v in self.settings.items()]


def expand_cells(spec: SweepSpec, adapter: CommandAdapter, base_data: Dict[str, Any]) -> List[Cell]:
    """Every cell of ``spec``, resolved and checked; ``SweepConfigError`` lists every bad cell."""
    common = deep_merge(base_data, common_overrides(spec.overrides))
    if spec.plugins and isinstance(common.get("plugins", []), list):  # (another type: the cell's config says so)
        common["plugins"] = merge_plugins(common.get("plugins", []), spec.plugins)  # workers import them first
    seed_key = spec.seed_key or adapter.seed_key
    if spec.seeds is not None and seed_key is None:
        raise SweepConfigError(
            f"{adapter.words} has no seed of its own: vary what you want repeated in grid:, or set seed_key"
        )
    axes = [axis(key, values) for key, values in spec.grid.items()] + [zipped(group) for group in spec.zip]
    if spec.seeds is not None:
        axes.append(axis("seed", spec.seeds))
    points = cartesian(axes)
    cells: List[Cell] = []
    problems: List[Tuple[str, str]] = []  # (cell label, message)
    for point in points:
        settings = {(seed_key if key == "seed" else key): value for key, value in point.items()}
        label = ", ".join(f"{k}={_show(v)}" for k, v in point.items()) or "the base config"
        try:
            config = adapter.build(deep_merge(common, _nest(settings)))
            adapter.check(config)
            parts = split_probe(config, spec.split) if spec.split else [None]
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            problems += [(label, item) for item in _items(str(error))]
            continue
        for selection in parts:
            if selection is None:
                cells.append(Cell(len(cells), dict(point), settings, config))
                continue
            part = {**settings, "probe.select": {**config.probe.select, **selection}}
            varied = {**point, **{k: values[0] for k, values in selection.items()}}
            cells.append(Cell(len(cells), varied, part, adapter.build(deep_merge(common, _nest(part)))))
    if problems:
        raise SweepConfigError(_problem_message(problems, len(points)))
    return cells


def common_overrides(overrides: Any) -> Dict[str, Any]:
    """The spec's ``overrides`` (``key=value`` strings or a mapping of dotted keys) as a nested mapping."""
    if isinstance(overrides, dict):
        return _nest(overrides)
    return parse_overrides(overrides)


def split_probe(config: Any, split: Sequence[str]) -> List[Dict[str, List[Any]]]:
    """The ``probe.select`` of each part when ``config``'s units are split along ``split``.

    Parts follow the units' run order; each selects one value of every split axis.
    """
    from lowbit.probe.plan import plan_units, probed_layers

    head = "dim" if config.network is None else "layer"
    valid = {name: c for name, c in PROBE_AXES.items() if c in (head, "init", "batch")}
    valid.update({key: key for key in config.probe.sweep})
    unknown = [name for name in split if name not in valid]
    if unknown:
        hint = nearest(unknown[0], list(valid))
        raise ValueError(
            f"split {unknown[0]!r} is not an axis of this {'toy' if config.network is None else 'network'} probe"
            + (f"; did you mean {hint!r}?" if hint else "")
            + f" (axes: {', '.join(sorted(set(valid)))})"
        )
    coordinates = list(dict.fromkeys(valid[name] for name in split))
    parts: Dict[str, Dict[str, List[Any]]] = {}
    for unit in plan_units(config, probed_layers(config)):
        point = {head: unit.position, **unit.condition, "init": unit.init, "batch": unit.batch}
        key = repr([point[c] for c in coordinates])
        parts.setdefault(key, {c: [point[c]] for c in coordinates})
    return list(parts.values())


def reproduce_command(words: str, base_file: Optional[str], cell: Cell, common: Any) -> str:
    """The ``lowbit ...`` line that makes this cell's run by hand."""
    args = ["lowbit", *words.split(), *import_flags(getattr(cell.config, "plugins", None) or [])]
    if base_file:
        args.append(base_file)
    if isinstance(common, dict):
        args += [format_override(k, v) for k, v in common.items()]
    else:
        args += list(common)
    args += cell.override_args()
    return " ".join(shlex.quote(a) for a in args)


def config_data(cell: Cell) -> Dict[str, Any]:
    """The cell's resolved config as plain data (what its run directory's config.yaml holds)."""
    return to_dict(cell.config)


def _nest(dotted: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key, value in dotted.items():
        set_dotted(tree, key, value)
    return tree


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _items(message: str) -> List[str]:
    """The problems of one error: ``invalid config:\n  - a\n  - b`` -> [a, b]."""
    lines = message.strip().splitlines()
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and all(l.lstrip().startswith("- ") for l in lines[1:]):
        return [l.lstrip()[2:] for l in lines[1:]]
    return [message.strip()]


def _problem_message(problems: List[Tuple[str, str]], total: int) -> str:
    """Identical problems of several cells once, naming the cells."""
    by_message: Dict[str, List[str]] = {}
    for label, message in problems:
        by_message.setdefault(message, []).append(label)
    lines = []
    for message, labels in by_message.items():
        where = "every cell" if len(labels) == total and total > 1 else "cell " + "; cell ".join(labels[:4])
        if len(labels) > 4 and len(labels) < total:
            where += f" and {len(labels) - 4} more"
        lines.append(f"{where}: {message}")
    bad = len({label for label, _ in problems})
    return f"invalid sweep ({bad} of {total} cells):\n  - " + "\n  - ".join(lines)

