"""Argument-parsing helpers shared by the ``lowbit`` subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


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


def split_config_and_overrides(
    config: Optional[str], overrides: List[str], prefixes: Sequence[str] = ()
) -> Tuple[Optional[str], List[str]]:
    """The config file and the overrides of ``lowbit COMMAND [CONFIG] [key=value ...]``.

    argparse puts a first ``key=value`` into the config slot; it is moved back
    to the overrides. A config given as a bare name (no folder, e.g.
    ``digits-xnor`` or ``train-digits-xnor``) is looked up among the built-in
    configs with the command's ``prefixes`` (:func:`lowbit.config.find_config`);
    a path is returned as given, so that a missing file is reported as such.
    """
    overrides = list(overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    if config is not None and not Path(config).exists() and _is_bare_name(config):
        from lowbit.config import find_config

        config = str(find_config(config, prefixes))
    return config, overrides


def _is_bare_name(text: str) -> bool:
    return "/" not in text and os.sep not in text
