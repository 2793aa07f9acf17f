"""The ``lowbit`` command.

Each subcommand lives in the subpackage that does the work, as a module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up
and turns library errors into one-line messages (exit code 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

import lowbit
from lowbit.cli_args import IntermixedParser

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "probe": ("lowbit.probe.cli", "gradient-quality laboratory: STE vs NES vs CDG vs DG on the teacher-student toy"),
    "train": ("lowbit.train.cli", "train a zoo model on CIFAR-10/100, MNIST or digits from a config"),
    "analyze": ("lowbit.analysis.cli", "BatchNorm smoothness, 2-D loss landscapes, attributions, weight pictures"),
    "sweep": ("lowbit.sweep.cli", "run a grid of train, probe or analyze runs on local workers or a Ray cluster, with cross-run tables"),
    "report": ("lowbit.report.cli", "rebuild report.md and plots of a run directory from its records"),
    "models": ("lowbit.models.cli", "table of every model: parameters, size, precision, MACs"),
    "export": ("lowbit.deploy.cli", "export a trained run to ONNX or to the bit-packed binary format, checked"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Toolkit for binary and low-bit neural network research.",
    )
    parser.add_argument("--version", action="version", version=f"lowbit {lowbit.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            sub.set_defaults(_missing=True)
            continue
        module.add_arguments(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        parser.error(f"subcommand {args.command!r} is not available in this installation")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as error:
        if getattr(args, "debug", False):
            raise
        print(f"lowbit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
