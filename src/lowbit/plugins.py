"""User code in every command: ``--import MODULE``, ``plugins:`` in a config, and entry points.

A *plugin* is a Python module of the user's that registers components when it
is imported (``@register_model``, ``@register_quantizer``,
``@register_estimator``, or a loss, optimizer, schedule or data set); from then
on a config selects them by name, as it selects lowbit's own. Three ways to
have it imported (docs/api.md, "Your own code from the command line"):

- ``--import MODULE`` (repeatable) on every ``lowbit`` command. Commands that
  make a run directory add the module to the run's ``plugins``, so the run's
  ``config.yaml`` records it.
- ``plugins: [MODULE, ...]``, a top-level key of every config and sweep spec.
  :func:`lowbit.config.from_dict` imports these modules before it checks the
  rest of the config, so wherever a config is read back (``--resume``, a sweep
  cell in a worker process or a Ray task, ``lowbit export``, a probe of a
  trained checkpoint) the same modules are imported before anything is built.
- an entry point in the group :data:`ENTRY_POINT_GROUP` (``lowbit.plugins``) of
  an installed distribution, e.g. in the plugin's ``pyproject.toml``::

      [project.entry-points."lowbit.plugins"]
      my_models = "my_package.lowbit_models"       # a module, or "module:function" (called once)

  Entry points are loaded once per process: at the start of every ``lowbit``
  command (so a broken one is an error before any work) and, from Python, the
  first time a registry lookup misses a name or lists its names, or a run
  writes its ``meta.yaml`` (so worker processes and Ray tasks find them too).
  ``LOWBIT_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry points off (``--import``
  and ``plugins:`` still work). A run records the entry points loaded
  (:func:`entry_point_plugins`) in its ``meta.yaml`` and its report's code
  line names them (:mod:`lowbit.provenance`): they are not ``--import`` flags
  of the reproduce line, since where the distribution is installed they load
  by themselves.

A module that cannot be imported is one :class:`PluginImportError` line naming
the module and the exception, raised before any run directory is made.
Importing runs the module's code: ``plugins:`` names only modules that are
already installed or on ``PYTHONPATH`` (never a file path), but read the
``plugins:`` line of a config you did not write as you would read its code.
"""

from __future__ import annotations

import importlib
import os
import re
import types
from typing import Dict, Iterable, List, Optional, Sequence

ENTRY_POINT_GROUP = "lowbit.plugins"
DISABLE_ENV = "LOWBIT_DISABLE_PLUGIN_AUTOLOAD"

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_entry_points_loaded = False
_loaded_points: List[Dict[str, Optional[str]]] = []  # what load_entry_point_plugins loaded, in order


class PluginImportError(ValueError):
    """A plugin module or entry point that cannot be imported; the message is one line."""


def import_plugins(modules: Iterable[str], source: str = "--import") -> List[types.ModuleType]:
    """Import every module of ``modules`` (dotted names), in order; ``source`` says where they were named.

    Already-imported modules are not imported again (Python's module cache), so
    calling this for every config read back costs nothing after the first.
    """
    imported = []
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise PluginImportError(
                f"plugin {name!r} ({source}) is not a Python module name like my_package.models; "
                "name an installed module or one on PYTHONPATH, not a file"
            )
        try:
            imported.append(importlib.import_module(name))
        except Exception as error:  # noqa: BLE001 - any failure of user code becomes one line naming the module
            raise PluginImportError(
                f"cannot import plugin module {name!r} ({source}): {_first_line(error)}; "
                "install it or put its folder on PYTHONPATH"
            ) from error
    return imported


def merge_plugins(*lists: Sequence[str]) -> List[str]:
    """The modules of all ``lists`` in order, each once."""
    return list(dict.fromkeys(name for names in lists for name in (names or ())))


def import_flags(modules: Sequence[str]) -> List[str]:
    """``["--import", "a", "--import", "b"]``: the command-line words that import ``modules``."""
    return [word for name in modules for word in ("--import", name)]


def load_entry_point_plugins() -> List[str]:
    """Load every entry point of the ``lowbit.plugins`` group once per process; the ``name = value`` of each.

    A value ``module`` is imported; ``module:function`` is imported and the
    function called with no arguments. Nothing happens after the first call, or
    when ``LOWBIT_DISABLE_PLUGIN_AUTOLOAD`` is set to anything but ``0`` or empty.
    """
    global _entry_points_loaded
    if _entry_points_loaded or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return []
    _entry_points_loaded = True  # first: a plugin that looks a name up while it loads does not recurse
    _loaded_points.clear()
    from importlib.metadata import entry_points

    loaded: List[str] = []
    seen = set()
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if (point.name, point.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((point.name, point.value))
        record = _describe_point(point)
        where = (f"entry point {point.name} = {point.value} of "
                 + (f"{record['distribution']} {record['version']}" if record["distribution"] else "an installed package")
                 + f" (group {ENTRY_POINT_GROUP})")  # fmt: skip
        try:
            target = point.load()
            if callable(target) and not isinstance(target, types.ModuleType):
                target()
        except Exception as error:  # noqa: BLE001 - a broken plugin package is one line naming it
            raise PluginImportError(
                f"cannot load {where}: {_first_line(error)}; fix or uninstall that package, "
                f"or set {DISABLE_ENV}=1 to skip entry points"
            ) from error
        loaded.append(f"{point.name} = {point.value}")
        _loaded_points.append(record)
    return loaded


def entry_point_plugins() -> List[Dict[str, Optional[str]]]:
    """The entry points this process loaded, loading them first if no command or lookup has yet.

    One ``{name, module, distribution, version}`` per entry point (``module``
    as the entry point names it, ``module`` or ``module:function``), in load
    order: what a run's ``meta.yaml`` records. Loading here makes every run
    record the same list whichever process writes it (the ``lowbit`` command,
    a sweep worker, a Ray task); empty when none is installed or
    ``LOWBIT_DISABLE_PLUGIN_AUTOLOAD`` turned them off.
    """
    load_entry_point_plugins()
    return [dict(point) for point in _loaded_points]


def _describe_point(point) -> Dict[str, Optional[str]]:  # noqa: ANN001 - importlib.metadata.EntryPoint
    dist = getattr(point, "dist", None)
    return {
        "name": point.name,
        "module": point.value,  # module, or module:function
        "distribution": dist.metadata["Name"] if dist is not None else None,
        "version": dist.version if dist is not None else None,
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "PluginImportError",
    "entry_point_plugins",
    "import_flags",
    "import_plugins",
    "load_entry_point_plugins",
    "merge_plugins",
]
