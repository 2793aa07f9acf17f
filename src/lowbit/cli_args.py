"""Argument-parsing helpers shared by the ``lowbit`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List, Optional, Tuple


class IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides follow the options (``CONFIG --runs-dir X seed=3``).

    Plain argparse binds positionals in one contiguous run, so an override after
    ``--runs-dir X`` would be "unrecognized"; ``parse_known_intermixed_args``
    collects them wherever they are. (It calls ``parse_known_args`` itself, hence the guard.)
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        has_subcommands = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._intermixing or has_subcommands:  # intermixing cannot handle a level that has subcommands
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def split_config_and_overrides(config: Optional[str], overrides: List[str]) -> Tuple[Optional[str], List[str]]:
    """argparse puts a first ``key=value`` into the config slot; move it back to the overrides."""
    overrides = list(overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def record_imports(config: Any, imports: Optional[List[str]]) -> Any:
    """``config`` with the ``--import`` modules added to its ``plugins`` (so ``config.yaml`` records them); in place.

    The modules are already imported (``lowbit.cli.main``); recording them makes
    ``--resume``, sweep workers and the report's reproduce line import them too.
    """
    from lowbit.plugins import merge_plugins

    if imports:
        config.plugins = merge_plugins(config.plugins, imports)
    return config
