"""``lowbit probe [CONFIG] [key=value ...] [--resume RUN_DIR]``.

With no config it runs the built-in default (every estimator family on the
teacher-student toy, a few minutes on 2 cores). Ctrl-C or a kill keeps every
record computed so far; ``--resume RUN_DIR`` finishes the grid.
"""

from __future__ import annotations

import argparse
import sys
import time

from lowbit.cli_args import split_config_and_overrides
from lowbit.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config: a file, or a built-in name such as quick-check (`lowbit configs probe`); default: the built-in probe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. probe.dims=[8,16] seed=3")
    parser.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run without recomputing its records")
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume: finish the run even though config.yaml was edited since it started "
        "(its records then mix two configs)",
    )
    parser.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N: overrides the config's device (also on --resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def load_probe_config(config_path, overrides):
    """The config ``lowbit probe CONFIG key=value ...`` runs (no file: the built-in ``probe-default``)."""
    from lowbit.probe.config import ProbeConfig

    base = None if config_path else {"name": "probe-default"}
    return load_config(ProbeConfig, config_path, overrides, base=base)


def run(args: argparse.Namespace) -> int:
    from lowbit.probe.command import ProbeInterrupted, run_probe

    config_path, overrides = split_config_and_overrides(args.config, args.overrides, ("probe-",))
    if args.resume and (config_path or overrides):
        raise ValueError("--resume takes the run's own config.yaml: give no config file or overrides with it")
    if args.force and not args.resume:
        raise ValueError("--force only applies to --resume RUN_DIR (it accepts an edited config.yaml)")
    device = [f"device={args.device}"] if args.device else []
    config = None if args.resume else load_probe_config(config_path, overrides + device)
    start = time.perf_counter()
    log = lambda line: print(f"lowbit probe: {line}", file=sys.stderr)  # noqa: E731
    try:
        run_dir = run_probe(
            config, resume=args.resume, runs_dir=args.runs_dir, progress=not args.quiet, log=log, force=args.force,
            device=args.device if args.resume else None,
        )
    except ProbeInterrupted as stop:
        print(
            f"lowbit probe: interrupted; every finished grid point is saved in {stop.run_dir / 'records.csv'}.\n"
            f"Finish the run with: lowbit probe --resume {stop.run_dir}",
            file=sys.stderr,
        )
        return 130
    print(f"lowbit probe: done in {time.perf_counter() - start:.0f} s; report: {run_dir / 'report.md'}", file=sys.stderr)
    return 0
