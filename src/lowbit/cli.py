"""The ``lowbit`` command.

Each subcommand lives in the subpackage that does the work, as a module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up
and turns library errors into one-line messages (exit code 2). Before a
command runs, the plugins of installed packages (entry points) and the modules
of ``--import`` are imported (:mod:`lowbit.plugins`). ``--import`` goes before
the command (``lowbit --import M train ...``) or after it, with the same effect.
lowbit's own warnings (classes defined in lowbit, e.g. records recovered after a
crash, a surrogate that replaces nothing) print as ``lowbit CMD: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
from typing import Optional, Sequence

import lowbit
from lowbit.allocator import apply_policy
from lowbit.cli_args import IntermixedParser
from lowbit.files import storage_error
from lowbit.plugins import import_plugins, load_entry_point_plugins, merge_plugins
from lowbit.user_warnings import is_lowbit_warning, one_line_warnings  # noqa: F401 (is_lowbit_warning: public here too)

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "probe": ("lowbit.probe.cli", "gradient-quality laboratory: STE vs NES vs CDG vs DG on the teacher-student toy"),
    "train": ("lowbit.train.cli", "train a zoo model on CIFAR-10/100, Fashion-MNIST, MNIST or digits from a config"),
    "analyze": ("lowbit.analysis.cli", "BatchNorm smoothness, 2-D loss landscapes, attributions, weight pictures"),
    "sweep": ("lowbit.sweep.cli", "run a grid of train, probe or analyze runs on local workers or a Ray cluster, with cross-run tables"),
    "report": ("lowbit.report_command", "rebuild report.md and plots of a run directory from its records"),
    "table": ("lowbit.train.table_cli", "the summary table over training runs, sorted by the keys that differ; CSV and Markdown"),
    "configs": ("lowbit.config_catalog", "list the built-in configs (run any of them by name), or print one"),
    "models": ("lowbit.models.cli", "table of every model: parameters, size, precision, MACs"),
    "export": ("lowbit.deploy.cli", "export a trained run to ONNX or to the bit-packed binary format, checked"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Toolkit for binary and low-bit neural network research.",
    )
    parser.add_argument("--version", action="version", version=f"lowbit {lowbit.__version__}")
    _add_import_flag(parser, dest="leading_imports")  # `lowbit --import M COMMAND`: merged into the command's in main()
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
        _add_common_flags(sub)
    return parser


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Every subcommand (and sub-subcommand) takes --debug (full tracebacks) and --import MODULE (user code)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_common_flags(child)
            return
    if not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    _add_import_flag(parser, dest="imports")


def _add_import_flag(parser: argparse.ArgumentParser, dest: str) -> None:
    # Two dests: a subcommand's default [] would overwrite the top level's value under one name.
    parser.add_argument(
        "--import", dest=dest, action="append", default=[], metavar="MODULE",
        help="import this Python module first (repeatable; before or after the command): models, quantizers and "
        "estimators it registers can be named in the config; a run records it in its config's plugins (docs/api.md)",
    )  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        parser.error(f"subcommand {args.command!r} is not available in this installation")
    module = importlib.import_module(args._module)
    args.imports = merge_plugins(args.leading_imports, args.imports)  # the commands read args.imports alone
    debug = getattr(args, "debug", False)
    words = " ".join(filter(None, [args.command, getattr(args, "analysis", None)]))
    try:
        apply_policy()  # keep freed memory in the process (lowbit.allocator; LOWBIT_MALLOC=default to not)
        load_entry_point_plugins()  # installed plugin packages; a broken one is one line, before any work
        import_plugins(args.imports, "--import")
        with one_line_warnings(words):
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every error becomes one message (tracebacks with --debug)
        if debug:
            raise
        print(f"lowbit {words}: error: {error_message(error, words)}", file=sys.stderr)
        return 2


# errors whose message already names the problem and the fix
EXPECTED_ERRORS = (ValueError, LookupError, FileNotFoundError, pickle.UnpicklingError)
RESUMABLE = {"train", "probe", "analyze", "sweep"}


def error_message(error: BaseException, command: str) -> str:
    """What the user reads: the library's message; storage errors with how to resume; others as internal."""
    if isinstance(error, OSError) and error.errno is not None:  # from the operating system, not a message of ours
        error = storage_error(error)
        text = str(error)
        if error.run_dir is not None and command.split()[0] in RESUMABLE:
            text += f"; the run is kept: continue it with `lowbit {command} --resume {error.run_dir}`"
        return text
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    if isinstance(error, EXPECTED_ERRORS):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory; use a smaller model, batch or data subset (data.train_subset=N)"
    if isinstance(error, RecursionError):
        return "input nested too deeply (a recursive or very deep structure); simplify it"
    text = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return f"internal error ({detail}); rerun with --debug for the traceback and report it"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
