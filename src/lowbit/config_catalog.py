"""``lowbit configs [COMMAND | NAME]``: the built-in configs, one line each, or one of them in full.

The configs ship inside the package (``lowbit/configs/*.yaml``), so every
command can run one by name from any directory: ``lowbit train digits-xnor``,
``lowbit probe quick-check``. A config's one-line description is the first
sentence of the comment block that opens the file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, List

from lowbit.config import ConfigError, builtin_configs, find_config, package_config_dir

# the command each config is for, from its name's prefix
COMMAND_PREFIXES: Dict[str, str] = {"train": "train-", "probe": "probe-", "analyze": "analyze-", "sweep": "sweep-"}
DESCRIPTION_WIDTH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which",
        nargs="?",
        default=None,
        help="train, probe, analyze or sweep: only that command's configs; a config name: print that file "
        "(e.g. `lowbit configs digits-xnor > my.yaml`)",
    )
    parser.add_argument("--path", action="store_true", help="with a config name: print only the file's path")


def run(args: argparse.Namespace) -> int:
    if args.which is None or args.which in COMMAND_PREFIXES:
        if args.path:
            raise ValueError("--path takes a config name, e.g. `lowbit configs digits-xnor --path`")
        print(format_catalog(args.which))
        return 0
    path = find_config(args.which, tuple(COMMAND_PREFIXES.values()))
    print(path.resolve() if args.path else path.read_text(encoding="utf-8"), end="\n" if args.path else "")
    return 0


def format_catalog(command: str | None = None) -> str:
    """One line per built-in config: its name (what the command takes), then its description."""
    commands = [command] if command else list(COMMAND_PREFIXES)
    lines: List[str] = []
    for name in commands:
        paths = builtin_configs(COMMAND_PREFIXES[name])
        if not paths:
            continue
        lines.append(f"{name} ({len(paths)}): lowbit {name}{' SUBCOMMAND' if name == 'analyze' else ''} NAME [key=value ...]")
        width = max(len(p.stem) for p in paths)
        lines += [f"  {p.stem:<{width}}  {describe(p)}" for p in paths]
    if not lines:
        raise ConfigError(f"no built-in configs found in {package_config_dir()}: the installation is incomplete")
    return "\n".join(lines)


def describe(path: Path) -> str:
    """The first sentence of the comment block at the top of ``path`` (empty if it has none)."""
    comment: List[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(part for part in comment if part)
    sentence = _first_sentence(text)
    if len(sentence) > DESCRIPTION_WIDTH:
        sentence = sentence[: DESCRIPTION_WIDTH - 3].rsplit(" ", 1)[0] + "..."
    return sentence


def _first_sentence(text: str) -> str:
    """``text`` up to the first full stop outside parentheses that is followed by a capital letter."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and re.match(r"\s+[A-Z]", text[index + 1 :]):
            return text[:index]
    return text.rstrip(".")
