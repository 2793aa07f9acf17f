"""``lowbit probe [CONFIG] [key=value ...] [--resume RUN_DIR]``.

With no config it runs the built-in default (every estimator family on the
teacher-student toy, a few minutes on 2 cores). Ctrl-C or a kill keeps every
record computed so far; ``--resume RUN_DIR`` finishes the grid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from lowbit.cli_args import split_config_and_overrides
from lowbit.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (configs/probe-*.yaml); default: the built-in probe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. probe.dims=[8,16] seed=3")
    parser.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run without recomputing its records")
    parser.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from lowbit.probe.config import ProbeConfig
    from lowbit.probe.runner import prepare, run_grid
    from lowbit.report import write_probe_report
    from lowbit.runs import create_run_dir, write_run_files

    config_path, overrides = split_config_and_overrides(args.config, args.overrides)
    if args.resume:
        if config_path or overrides:
            raise ValueError("--resume takes the run's own config.yaml: give no config file or overrides with it")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{str(run_dir)!r} has no config.yaml: is it a run directory of `lowbit probe`?")
        config = load_config(ProbeConfig, run_dir / "config.yaml")
        prepare(config)
    else:
        base = None if config_path else {"name": "probe-default"}
        config = load_config(ProbeConfig, config_path, overrides, base=base)
        prepare(config)  # every check before the run directory exists or any compute starts
        run_dir = create_run_dir(config.name, args.runs_dir)
        write_run_files(run_dir, config)
    print(f"lowbit probe: writing to {run_dir}", file=sys.stderr)

    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    start = time.perf_counter()
    try:
        run_grid(config, run_dir, progress=not args.quiet)
    except KeyboardInterrupt:
        _write_report_if_any(run_dir)
        print(
            f"lowbit probe: interrupted; every finished grid point is saved in {run_dir / 'records.csv'}.\n"
            f"Finish the run with: lowbit probe --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = write_probe_report(run_dir)
    print(f"lowbit probe: done in {time.perf_counter() - start:.0f} s; report: {report}", file=sys.stderr)
    return 0


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM ends the run like Ctrl-C: records kept
    raise KeyboardInterrupt


def _write_report_if_any(run_dir: Path) -> None:
    from lowbit.report import write_probe_report

    if (run_dir / "records.csv").exists():
        write_probe_report(run_dir)
